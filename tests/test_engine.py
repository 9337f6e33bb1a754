"""The engine against closed forms, bounds and conservation laws."""
import json

import numpy as np
import pytest

from simulator.engine import Run, simulate
from simulator.engine.collective import COLLECTIVES, CollectiveId
from simulator.engine.gpu import COMPUTE, GPU
from simulator.engine.program import BACKWARD, FORWARD, OpId
from simulator.metrics import summarize
from simulator.scenario.memory import memory_per_gpu, moe_layers_in_scope
from tests.conftest import make_scenario

SINGLE_NODE_BALANCED = dict(
    hardware={"nodes": 1, "gpus_per_node": 8},
    workload={"mode": "prefill", "scope": "moe_layer", "tokens_per_gpu": 512, "micro_batches": 1},
    routing={"distribution": "balanced"},
    network={"all_to_all": "direct"},
    pipeline={"overlap": "none", "chunks": 1},
)


def test_compute_overlapping_comm_runs_at_the_remaining_sm_fraction(env):
    gpu = GPU(env, 0, num_sms=100, overlap=True)
    done = {}

    def hold():
        gpu._set_sms(20)
        yield env.timeout(1.0)
        gpu._set_sms(-20)

    def work():
        yield from gpu.compute(2.0, OpId(0, "experts", FORWARD, 0, 0))
        done["t"] = env.now

    env.process(hold())
    env.process(work())
    env.run()
    # 1 s at 80 % does 0.8 s of work; the other 1.2 s runs at full rate
    assert done["t"] == pytest.approx(2.2)


def kernel_seconds(run: Run, gpu: int) -> list[float]:
    """Every kernel the GPU's program runs, at full SM rate, over all its chains."""
    program = run.programs[gpu]
    group, local = run.group_of[gpu], run.ep_rank[gpu]
    kernels = [op.side_kernel() if op.collective else op for op in program.ops if not op.collective or op.overlapped]
    seconds = [run.work_s(op, group, local, mb, c) for mb, c in program.chains for op in kernels]
    return seconds + ([run.dp.optimizer_s(run.compute_model, program)] if run.train else [])


def test_balanced_single_node_all_to_all_takes_busiest_port_bytes_over_rate():
    s = make_scenario(**SINGLE_NODE_BALANCED)
    run = Run(s, keep_paths=True)
    run.simulate()
    nvl = s.cluster.nvlink
    for kind in ("dispatch", "combine"):
        coll = run.collectives[CollectiveId(kind, 0, 0, 0, 0)]
        paths = coll._paths
        load = np.bincount(paths.entry_port, paths.entry_bytes)
        rate = nvl.achievable_bytes_per_s * s.cluster.direct_alltoall_efficiency  # direct = NCCL's protocol
        expect = coll.setup_s + load.max() / rate + nvl.latency_s
        took = np.max(coll.recv_done_s) - coll.start_s
        assert took == pytest.approx(expect, rel=0.01)


def test_overlap_none_step_time_is_the_sum_of_its_phases():
    s = make_scenario(**{**SINGLE_NODE_BALANCED, "workload": {"mode": "train", "scope": "model", "tokens_per_gpu": 256,
                                                              "micro_batches": 2}})
    run = Run(s)
    r = run.simulate()
    ends = []
    for gpu, intervals in enumerate(r.intervals):
        # serialised: the GPU's ops tile [0, its last end] with no gap and no overlap
        durations = [iv.end_s - iv.start_s for iv in intervals]
        ends.append(max(iv.end_s for iv in intervals))
        assert sum(durations) == pytest.approx(ends[-1], rel=1e-9)
        compute = [iv.end_s - iv.start_s for iv in intervals if iv.stream == COMPUTE]
        expected = kernel_seconds(run, gpu)
        assert sum(compute) == pytest.approx(sum(w for w in expected if w > 0), rel=1e-9)
    assert r.step_time_s == pytest.approx(max(ends))


@pytest.mark.parametrize("routing", ["uniform", "zipf"])
@pytest.mark.parametrize("algorithm", ["direct", "hierarchical", "low_latency"])
def test_three_stream_is_bounded_by_serial_time_and_by_the_busiest_resource(routing, algorithm):
    sections = dict(routing={"distribution": routing}, network={"all_to_all": algorithm},
                    workload={"tokens_per_gpu": 512, "micro_batches": 2})
    overlapped = Run(make_scenario(**sections, pipeline={"overlap": "three_stream", "chunks": 2}))
    r3 = overlapped.simulate()
    r0 = simulate(make_scenario(**sections, pipeline={"overlap": "none", "chunks": 2}))
    assert r3.step_time_s <= r0.step_time_s * (1 + 1e-9)
    compute = max(sum(kernel_seconds(overlapped, g)) for g in range(overlapped.s.num_gpus))
    busiest_port = np.max(r3.ports.num_bytes / r3.ports.capacity_bytes_per_s)
    assert r3.step_time_s >= max(compute, busiest_port) * (1 - 1e-9)


def test_a_finished_run_holds_no_paths_and_keeping_them_changes_nothing():
    s = make_scenario(routing={"distribution": "zipf"})
    run = Run(s)
    record = run.simulate()
    assert run.collectives and all(c._paths is None for c in run.collectives.values())
    assert run.network._batches and all(b is None for b in run.network._batches)
    kept = Run(s, keep_paths=True)
    again = kept.simulate()
    assert all(c._paths is not None for c in kept.collectives.values())
    assert json.dumps(summarize(again), sort_keys=True) == json.dumps(summarize(record), sort_keys=True)


def test_bytes_sent_equal_bytes_received_in_every_collective():
    run = Run(make_scenario(routing={"distribution": "zipf"}), keep_paths=True)
    r = run.simulate()
    topo = run.topology
    g = topo.num_gpus
    for coll in run.collectives.values():
        ports, nbytes = coll._paths.entry_port, coll._paths.entry_bytes
        out_bytes = nbytes[topo.is_gpu_egress(ports)].sum()
        in_bytes = nbytes[((ports >= g) & (ports < 2 * g)) | ((ports >= 3 * g) & (ports < 4 * g))].sum()
        assert out_bytes == pytest.approx(in_bytes, rel=1e-12)
    for rec in r.collectives.values():  # the record's per-GPU egress bytes add up to its totals
        assert rec.nvlink_bytes_per_gpu.sum() == pytest.approx(rec.bytes_nvlink, rel=1e-12)
        assert rec.ib_bytes_per_gpu.sum() == pytest.approx(rec.bytes_ib, rel=1e-12)
    pb = r.ports.num_bytes
    assert pb[:g].sum() == pytest.approx(pb[g:2 * g].sum())
    assert pb[2 * g:3 * g].sum() == pytest.approx(pb[3 * g:4 * g].sum())


def test_tokens_routed_equal_tokens_times_top_k():
    s = make_scenario(routing={"distribution": "zipf"})
    r = simulate(s)
    for layer in range(moe_layers_in_scope(s)):
        for mb in range(s.workload.micro_batches):
            routed = sum(r.counts[0, layer, mb, c].expert_tokens.sum() for c in range(r.num_chunks))
            copies = sum(r.counts[0, layer, mb, c].recv_copies.sum() for c in range(r.num_chunks))
            assert routed == copies == s.workload.tokens_per_gpu * s.parallel.ep_size * s.model.top_k


def test_same_scenario_and_seed_give_identical_summaries():
    from simulator.results import summary_json
    a = summary_json(summarize(simulate(make_scenario(routing={"distribution": "zipf", "seed": 7}))))
    b = summary_json(summarize(simulate(make_scenario(routing={"distribution": "zipf", "seed": 7}))))
    c = summary_json(summarize(simulate(make_scenario(routing={"distribution": "zipf", "seed": 8}))))
    assert a == b
    assert a != c


def test_breakdown_adds_up_to_the_step_and_mfu_matches_its_definition():
    s = make_scenario()
    summary = summarize(simulate(s))
    b = summary["breakdown_s"]
    assert b["compute"] + b["exposed_comm"] + b["idle"] == pytest.approx(summary["step_time_s"])
    assert summary["mfu"] == pytest.approx(summary["model_flop_per_step"] / (
        summary["step_time_s"] * s.num_gpus * s.cluster.gpu.peak_bf16_flop_per_s))
    assert 0 < summary["mfu"] < 1
    for util in (*summary["bandwidth_utilization"].values(), *summary["bandwidth_utilization_step"].values()):
        assert 0 <= util <= 1


def test_data_parallel_groups_run_their_own_collectives_on_a_shared_network():
    s = make_scenario(parallel={"ep_size": 4})
    r = simulate(s)
    assert s.dp_size == 2
    groups = {cid.group for cid in r.collectives if COLLECTIVES[cid.kind].group == "ep"}
    assert groups == {0, 1}
    for coll in r.collectives.values():
        assert not np.isnan(coll.recv_done_s).any()


def test_comm_sms_slow_overlapped_compute():
    # NCCL's all-to-all (direct): its rate is the fitted efficiency's, whatever SMs it holds
    fast = simulate(make_scenario(network={"all_to_all": "direct", "comm_sms": 0}, workload={"tokens_per_gpu": 1024}))
    slow = simulate(make_scenario(network={"all_to_all": "direct", "comm_sms": 66}, workload={"tokens_per_gpu": 1024}))
    assert slow.step_time_s > fast.step_time_s


def test_every_collective_completes_on_every_gpu_under_skewed_routing():
    s = make_scenario(routing={"distribution": "zipf", "zipf_alpha": 1.5},
                      workload={"micro_batches": 3}, pipeline={"chunks": 3})
    r = simulate(s)
    events = [iv for intervals in r.intervals for iv in intervals]
    ep = [cid for cid in r.collectives if COLLECTIVES[cid.kind].group == "ep"]
    assert len(ep) == 4 * 2 * 3 * 3  # kinds x MoE layers x micro-batches x chunks
    # the tiny model's dense gradients fit one bucket; expert DP is 1 (EP 8 on 8 GPUs): no expert sync
    assert [cid.kind for cid in r.collectives if cid not in ep] == ["grad_allreduce"]
    assert all(not np.isnan(c.recv_done_s).any() for c in r.collectives.values())
    assert max(iv.end_s for iv in events) == pytest.approx(r.step_time_s)


def test_default_scenario_runs_and_reports_every_contract_field():
    from pathlib import Path

    from simulator.scenario import load_scenario
    s = load_scenario(Path(__file__).parents[1] / "scenarios" / "default.yaml")
    summary = summarize(simulate(s))
    for key in ("scenario", "num_gpus", "step_time_s", "mfu", "model_tflops_per_gpu", "tokens_per_s",
                "bandwidth_utilization", "bandwidth_utilization_step", "collectives", "breakdown_s",
                "load_imbalance", "provenance", "epsim_version"):
        assert key in summary
    assert summary["num_gpus"] == 64
    # EP 64 on 64 GPUs: expert DP is 1 (no expert gradient sync); dense DP 64 all-reduces
    assert set(summary["collectives"]) == {"dispatch", "combine", "dispatch_bwd", "combine_bwd", "grad_allreduce"}
    json.dumps(summary)


def test_more_gpus_than_experts_puts_expert_i_on_gpu_i_and_nothing_on_the_rest():
    # seed 1.1 case 1: E <= G
    s = make_scenario(hardware={"nodes": 4, "gpus_per_node": 4}, parallel={"ep_size": 16},
                      model={"num_experts": 8})
    r = simulate(s)
    recv = sum(r.counts[0, 0, mb, c].recv_copies for mb in range(2) for c in range(r.num_chunks))
    assert (recv[:8] > 0).all() and (recv[8:] == 0).all()
    assert (r.expert_gpu == np.arange(8)).all()


def test_dualpipe_overlaps_the_forward_of_one_micro_batch_with_the_backward_of_the_previous():
    s = make_scenario(pipeline={"schedule": "dualpipe", "chunks": 1}, workload={"micro_batches": 3})
    r = simulate(s)
    ivs = r.intervals[0]
    fwd = {mb: [iv for iv in ivs if iv.op.micro_batch == mb and iv.op.phase == FORWARD] for mb in range(3)}
    bwd = {mb: [iv for iv in ivs if iv.op.micro_batch == mb and iv.op.phase == BACKWARD] for mb in range(3)}
    # forward of mb m starts only after forward of m-1 ends, and runs while backward of m-1 is going on
    for mb in (1, 2):
        assert min(iv.start_s for iv in fwd[mb]) >= max(iv.end_s for iv in fwd[mb - 1]) - 1e-12
        assert min(iv.start_s for iv in fwd[mb]) < max(iv.end_s for iv in bwd[mb - 1])
    assert all(not np.isnan(c.recv_done_s).any() for c in r.collectives.values())


def test_gradient_accumulation_without_overlap_runs_micro_batch_after_micro_batch():
    # Megatron-Core's forward_backward_no_pipelining: forward m, backward m, then m+1; one
    # micro-batch's activations held, where lockstep held them all
    s = make_scenario(pipeline={"overlap": "none", "chunks": 1}, workload={"micro_batches": 3})
    assert s.pipeline.schedule == "sequential"
    r = simulate(s)
    for ivs in r.intervals:
        mine = {mb: [iv for iv in ivs if iv.op.micro_batch == mb] for mb in range(3)}
        for mb in (1, 2):
            assert min(iv.start_s for iv in mine[mb]) >= max(iv.end_s for iv in mine[mb - 1]) - 1e-12
    lockstep = make_scenario(pipeline={"overlap": "none", "chunks": 1, "schedule": "lockstep"},
                             workload={"micro_batches": 3})
    act, act_lockstep = memory_per_gpu(s).activations, memory_per_gpu(lockstep).activations
    assert act == pytest.approx(act_lockstep / 3, rel=1e-12)
    # the same serial work, reordered: the step barely moves (the gradient buckets go later)
    assert summarize(r)["step_time_s"] == pytest.approx(summarize(simulate(lockstep))["step_time_s"], rel=0.05)


def test_sequential_needs_training():
    from simulator.errors import ScenarioError
    with pytest.raises(ScenarioError, match="pipeline.schedule"):
        make_scenario(pipeline={"schedule": "sequential"}, workload={"mode": "prefill"})


def test_dualpipe_needs_training_with_three_streams():
    from simulator.errors import ScenarioError
    with pytest.raises(ScenarioError, match="pipeline.schedule"):
        make_scenario(pipeline={"schedule": "dualpipe"}, workload={"mode": "prefill"})
