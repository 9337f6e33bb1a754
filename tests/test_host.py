"""The host thread that issues each GPU's kernels (simulator/engine/host.py)."""
import json

import pytest

from simulator.engine import Run
from simulator.engine.host import LAUNCH_QUEUE, kernel_launches
from simulator.metrics import summarize
from simulator.scenario import build_scenario
from tests.conftest import make_scenario, tiny_dict


def run(**sections):
    r = Run(make_scenario(**sections))
    return r, summarize(r.simulate())


def program_kernels(r: Run, gpu: int = 0) -> float:
    """Kernels the host issues for GPU 0's chains (every op of every chain), from the launch table."""
    program = r.programs[gpu]
    return sum(r.host.kernels(op) for op in program.ops) * len(program.chains)


def test_the_preset_gives_the_host_cost_and_zero_turns_the_host_off():
    # the tiny fixture sets host_launch_us 0 (tests/conftest.py); the h100-sxm preset's own is 7 us
    data = tiny_dict()
    del data["hardware"]["host_launch_us"]
    with_preset = Run(build_scenario(data))
    assert with_preset.host is not None and with_preset.s.cluster.host_launch_s == pytest.approx(7e-6)
    r, free = run(training={"cuda_graphs": True}, hardware={"graph_launch_us": 0.0})
    assert r.host is None and free["host"]["busy_s"] == 0.0 and "not modelled" in free["provenance"]["host"]


def test_a_tiny_launch_cost_moves_the_step_by_no_more_than_it_costs():
    _, base = run()
    r, tiny = run(hardware={"host_launch_us": 1e-3})
    assert r.host is not None
    assert base["step_time_s"] <= tiny["step_time_s"] <= base["step_time_s"] + program_kernels(r) * 1e-9


def test_a_host_bound_step_takes_its_kernels_times_the_launch_cost():
    # 1 ms per launch against kernels of tens of microseconds: the GPU waits for every kernel, so
    # the step is the host's CPU time (all GPUs run the same program) plus the last kernel
    launch = 1e-3
    r, s = run(hardware={"host_launch_us": launch * 1e6}, pipeline={"overlap": "none", "chunks": 1},
               workload={"micro_batches": 1})
    kernels = program_kernels(r)
    assert s["host"]["launches_per_gpu"] == pytest.approx(kernels)
    assert s["host"]["busy_s"] == pytest.approx(kernels * launch)
    assert kernels * launch <= s["step_time_s"] <= kernels * launch + 5e-3
    assert s["host"]["busy_fraction"] > 0.95
    # the GPU idles between kernels: its compute time is its kernels', not the host's
    _, free = run(pipeline={"overlap": "none", "chunks": 1}, workload={"micro_batches": 1})
    assert s["breakdown_s"]["compute"] == pytest.approx(free["breakdown_s"]["compute"], rel=1e-9)


def test_cuda_graphs_replace_the_launches_of_an_op_by_one_graph_launch():
    eager_r, eager = run(hardware={"host_launch_us": 1000.0, "graph_launch_us": 1000.0},
                         network={"all_to_all": "low_latency"})
    graph_r, graphs = run(hardware={"host_launch_us": 1000.0, "graph_launch_us": 1000.0},
                          network={"all_to_all": "low_latency"}, training={"cuda_graphs": True})
    ops = len(graph_r.programs[0].ops) * len(graph_r.programs[0].chains)
    assert graphs["host"]["launches_per_gpu"] == pytest.approx(ops)
    assert graphs["host"]["busy_s"] == pytest.approx(ops * 1e-3)
    assert eager["host"]["launches_per_gpu"] > 2 * ops
    assert graphs["step_time_s"] < eager["step_time_s"]
    assert graphs["host"]["cuda_graphs"] and "graph launch" in graphs["provenance"]["host"]


def test_a_counts_on_host_dispatcher_makes_the_host_wait_and_low_latency_does_not():
    # a host faster than the GPU: without a sync it would run ahead
    _, synced = run(hardware={"host_launch_us": 0.5}, network={"all_to_all": "hierarchical"})
    _, free = run(hardware={"host_launch_us": 0.5}, network={"all_to_all": "low_latency"})
    assert synced["host"]["sync_wait_s"] > 0
    assert free["host"]["sync_wait_s"] == 0
    # with the sync the GPU idles while the host issues the dispatch and what follows it
    _, synced_free = run(network={"all_to_all": "hierarchical"})
    assert synced["step_time_s"] > synced_free["step_time_s"]


def test_the_host_never_runs_more_than_the_launch_queue_ahead_and_leaves_nothing_behind():
    r = Run(make_scenario(hardware={"host_launch_us": 1e-3}, network={"all_to_all": "low_latency"},
                          workload={"micro_batches": 8}))
    peak = []
    original = r.host.wait_issued

    def watched(gpu, key):
        peak.append(r.host.pending[gpu])
        return (yield from original(gpu, key))

    r.host.wait_issued = watched
    r.simulate()
    assert program_kernels(r) > LAUNCH_QUEUE  # the queue does bound this run
    assert max(peak) <= LAUNCH_QUEUE + max(kernel_launches(r.s, 64).values()) + 1
    assert all(not d for d in r.host.issued) and all(not d for d in r.host.waiting)


def test_pipeline_stages_wait_for_their_input_and_stay_deterministic():
    sections = dict(hardware={"host_launch_us": 50.0}, parallel={"ep_size": 4, "pp_size": 2},
                    model={"num_layers": 4, "num_dense_layers": 0}, workload={"micro_batches": 4})
    _, a = run(**sections)
    _, b = run(**sections)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["host"]["busy_s"] > 0 and a["step_time_s"] > 0


def test_launch_counts_follow_the_kernels_the_compute_model_times():
    s = make_scenario()
    n = kernel_launches(s, 128)
    assert n["experts"] == 5  # permute, gate+up grouped GEMM, SwiGLU, down grouped GEMM, un-permute
    assert n["experts_bwd"] == 10
    assert n["router_bwd"] == 2 * n["router"]
    gqa = make_scenario(workload={"gemm_dtype": "fp8"})
    assert kernel_launches(gqa, 128)["attention"] == n["attention"] + 1  # the FP8 quantisation of the inputs
