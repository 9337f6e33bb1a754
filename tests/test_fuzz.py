"""Property-based tests (issue 16): generated scenarios across every section either run and satisfy
the invariants, or are refused with a ScenarioError naming a key (or the budget flag).

Invariants of every run: bytes sent = bytes received per collective and link class, routed copies =
tokens x top_k (less the places a threshold gate left empty), the breakdown sums to the step time,
no utilisation above 1, no negative or NaN time, 0 < mfu <= 1 (with FP8 GEMMs: up to peak FP8 / peak BF16, as MFU is against the BF16 peak).
benchmarks/fuzz.py runs the same generator over >= 10,000 inputs.
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import run_sim
from simulator.engine.run import Run
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario import build_scenario
from simulator.scenario.budget import Budget, check_budget
from simulator.scenario.schema import TOP_LEVEL_KEYS
from tests.conftest import tiny_dict

FUZZ_BUDGET = Budget(max_minutes=2 / 60, max_memory_gb=1.0)  # small inputs only: seconds each


def _some(**keys) -> st.SearchStrategy:
    """A section: any subset of these keys, each from its strategy."""
    return st.fixed_dictionaries({}, optional=keys)


SECTIONS = {
    "hardware": _some(
        preset=st.sampled_from(["h100-seed", "h100-sxm", "h800"]), nodes=st.integers(1, 4),
        gpus_per_node=st.sampled_from([1, 2, 4, 8]), nvlink_gb_per_s=st.floats(1, 2000),
        ib_gbit_per_s=st.floats(10, 1600), kernel_launch_us=st.floats(0, 50), ib_latency_us=st.floats(0, 20),
        spine_oversubscription=st.floats(1, 4), hbm_gb=st.floats(1, 200), nccl_sms=st.integers(0, 32),
        peak_bf16_tflops=st.floats(100, 2000), calibration=st.none(),
        # the host model (tests/conftest.py's tiny fixture turns it off): from free to host-bound
        host_launch_us=st.floats(0, 200), graph_launch_us=st.floats(0, 200),
        deepep_gb_per_s_per_sm=st.none() | st.floats(0.5, 100)),
    "model": _some(
        hidden_size=st.sampled_from([64, 128, 256, 512]), moe_intermediate_size=st.sampled_from([64, 128, 256, 512]),
        num_experts=st.sampled_from([1, 2, 4, 8, 16, 32, 64]), top_k=st.integers(1, 8),
        num_shared_experts=st.integers(0, 2), num_layers=st.integers(1, 6), num_dense_layers=st.integers(0, 2),
        vocab_size=st.sampled_from([1000, 32000])),
    "parallel": _some(
        ep_size=st.sampled_from([1, 2, 4, 8, 16]), tp_size=st.sampled_from([1, 2]),
        pp_size=st.sampled_from([1, 2, 4]), vpp_size=st.sampled_from([1, 2]),
        pp_schedule=st.sampled_from(["1f1b", "interleaved", "gpipe", "dualpipe"]),
        expert_tp_size=st.sampled_from([1, 2, "auto"])),
    "training": _some(
        recompute=st.sampled_from(["none", "selective", "full"]),
        recompute_modules=st.lists(st.sampled_from(["core_attn", "layernorm", "mla_up_proj", "moe_act"]),
                                   min_size=1, max_size=3, unique=True),
        distributed_optimizer=st.booleans(), grad_overlap=st.booleans(),
        grad_reduce_dtype=st.sampled_from(["fp32", "bf16"]), adam_moments_dtype=st.sampled_from(["fp32", "bf16"]),
        global_batch_size=st.sampled_from([8, 16, 32, 64]), micro_batch_size=st.integers(1, 4),
        grad_bucket_params=st.integers(1_000, 10_000_000), cuda_graphs=st.booleans()),
    "workload": _some(
        mode=st.sampled_from(["train", "prefill"]), scope=st.sampled_from(["model", "moe_layer"]),
        tokens_per_gpu=st.integers(1, 1024), micro_batches=st.integers(1, 4),
        seq_len=st.sampled_from([64, 256, 1024, 4096]), gemm_dtype=st.sampled_from(["bf16", "fp8"]),
        embedding_and_head=st.booleans(), extend_micro_batches=st.sampled_from(["auto", "always", "never"]),
        extend_layers=st.sampled_from(["never", "always"])),
    "routing": _some(
        distribution=st.sampled_from(["uniform", "balanced", "zipf", "dirichlet"]), zipf_alpha=st.floats(0.05, 4),
        dirichlet_concentration=st.floats(1e-9, 1e3),
        seed=st.integers(0, 2**32), max_nodes_per_token=st.none() | st.integers(1, 4),
        threshold=st.none() | st.floats(0.01, 1.0)),
    "network": _some(
        all_to_all=st.sampled_from(["direct", "hierarchical", "low_latency"]),
        dispatch_dtype=st.sampled_from(["fp8", "bf16"]), combine_dtype=st.sampled_from(["fp8", "bf16"]),
        comm_sms=st.integers(0, 40), allreduce_algorithm=st.sampled_from(["ring", "tree", "auto"])),
    "pipeline": _some(
        overlap=st.sampled_from(["none", "three_stream"]), chunks=st.integers(1, 4),
        schedule=st.sampled_from(["auto", "lockstep", "dualpipe", "sequential"])),
    "placement": _some(
        strategy=st.sampled_from(["round_robin", "eplb", "topology_aware"]),
        redundant_experts=st.sampled_from([0, 0, 4, 8, 16])),
}
# one hostile value for a random key of any section, in about a quarter of the inputs
HOSTILE = st.sampled_from([-1, 0, 1e300, float("nan"), float("inf"), "x", None, True, 10**30, [1], {"a": 1}])
HOSTILE_KEYS = {
    "hardware": ["nodes", "gpus_per_node", "kernel_launch_us", "nvlink_gb_per_s", "hbm_gb", "ib_latency_us", "preset",
                 "host_launch_us", "deepep_gb_per_s_per_sm"],
    "model": ["num_experts", "top_k", "hidden_size", "num_layers", "preset"],
    "parallel": ["ep_size", "pp_size", "tp_size", "expert_tp_size"],
    "training": ["global_batch_size", "recompute", "micro_batch_size"],
    "workload": ["tokens_per_gpu", "seq_len", "micro_batches", "mode"],
    "routing": ["zipf_alpha", "seed", "max_nodes_per_token", "distribution", "dirichlet_concentration"],
    "network": ["comm_sms", "all_to_all", "allreduce_algorithm"],
    "pipeline": ["chunks", "overlap", "schedule"],
    "placement": ["strategy", "redundant_experts"],
}
HOSTILE_KEY = st.sampled_from([f"{section}.{key}" for section, keys in HOSTILE_KEYS.items() for key in keys])


@st.composite
def scenarios(draw) -> dict:
    """The tiny scenario with any keys of every section replaced, sometimes one value made hostile."""
    data = tiny_dict(name="fuzz", **{section: draw(strategy) for section, strategy in SECTIONS.items()})
    if "global_batch_size" in data["training"]:  # the batch is given one way or the other
        for key in ("micro_batches", "tokens_per_gpu"):
            data["workload"].pop(key, None)
    if draw(st.booleans()) and draw(st.booleans()):
        section, key = draw(HOSTILE_KEY).split(".")
        data.setdefault(section, {})[key] = draw(HOSTILE)
    return data


# -- the invariants -------------------------------------------------------------------------------
def instrument(run: Run) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record every collective's flow batch as it enters the network: (ports, bytes) of its entries."""
    batches, add = [], run.network.add

    def recording_add(batch):
        batches.append((batch.entry_port.copy(), batch.entry_bytes.copy()))
        add(batch)
    run.network.add = recording_add
    return batches


def check_invariants(s, record, summary: dict, batches) -> None:
    cls = record.ports.port_class
    egress = _egress(s)
    for ports, num_bytes in batches:  # bytes sent = bytes received, per collective and link class
        for c in (0, 1):  # nvlink, ib: leave a GPU's out-port, arrive at a GPU's in-port
            sent = num_bytes[(cls[ports] == c) & egress[ports]].sum()
            received = num_bytes[(cls[ports] == c) & ~egress[ports]].sum()
            assert math.isclose(sent, received, rel_tol=1e-9, abs_tol=1e-6), (c, sent, received)
    per_call: dict = {}
    for (group, layer, mb, _chunk), counts in record.counts.items():  # routed copies = tokens x top_k
        per_call[group, layer, mb] = per_call.get((group, layer, mb), 0) + int(counts.recv_copies.sum())
    expected = s.parallel.ep_size * s.workload.tokens_per_gpu * s.model.top_k
    # a threshold gate leaves places empty: kept + left out = tokens x top_k over the step
    assert all(v <= expected for v in per_call.values()), (set(per_call.values()), expected)
    assert sum(per_call.values()) + record.ungated_copies == expected * len(per_call), (record.ungated_copies, expected)
    step = summary["step_time_s"]
    assert math.isfinite(step) and step > 0
    assert sum(summary["breakdown_s"].values()) == _approx(step)
    assert all(v >= -1e-12 * step for v in summary["breakdown_s"].values())
    for key in ("bandwidth_utilization", "bandwidth_utilization_step"):
        assert all(0 <= u <= 1 + 1e-9 for u in summary[key].values()), summary[key]
    for kind, c in summary["collectives"].items():
        assert 0 <= c["mean_time_s"] <= c["max_time_s"] * (1 + 1e-12) and math.isfinite(c["max_time_s"]), (kind, c)
    for intervals in record.intervals:
        assert all(0 <= iv.start_s <= iv.end_s and math.isfinite(iv.end_s) for iv in intervals)
    # MFU is against the dense BF16 peak (the contract): FP8 GEMMs may pass it, up to the FP8 peak
    gpu = s.cluster.gpu
    top = gpu.peak_fp8_flop_per_s / gpu.peak_bf16_flop_per_s if s.workload.gemm_dtype == "fp8" else 1.0
    assert 0 < summary["mfu"] <= top, (summary["mfu"], s.workload.gemm_dtype)


def _egress(s) -> np.ndarray:
    from hardware.topology import Topology
    topo = Topology(s.cluster)
    return topo.is_gpu_egress(np.arange(topo.num_ports))


class _approx(float):
    def __eq__(self, other):
        return math.isclose(float(self), other, rel_tol=1e-6, abs_tol=1e-12)


def outcome(data: dict, budget: Budget = FUZZ_BUDGET) -> str:
    """'ran' (invariants hold) or 'rejected' (a ScenarioError naming a key); anything else raises."""
    try:
        s = build_scenario(data)
        check_budget(s, budget)
        run = Run(s)  # building the workload can still refuse a law its router cannot sample
    except ScenarioError as exc:
        assert_names_a_key(exc)
        return "rejected"
    batches = instrument(run)
    record = run.simulate()
    check_invariants(s, record, summarize(record), batches)
    return "ran"


def assert_names_a_key(exc: ScenarioError) -> None:
    key = str(exc.key)
    assert key and str(exc).startswith(key), str(exc)
    assert key.split(".")[0] in TOP_LEVEL_KEYS or key.startswith("--"), key
    assert len(str(exc)) < 2000


# -- the tests ------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_a_generated_scenario_runs_within_the_invariants_or_is_refused_naming_a_key(data):
    outcome(data)


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_a_generated_scenario_through_the_cli_exits_0_or_2_with_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    args = [str(path), "--out", str(folder / "out"), "--no-trace", "--max-minutes", "0.03", "--max-memory-gb", "1"]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = run_sim.main(args)
    assert code in (0, 2), err.getvalue()
    if code == 2:
        assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1

