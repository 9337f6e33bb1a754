"""routing.distribution: trace replays recorded routing (simulator/workload/routing_trace.py)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.workload.routing_trace import TraceRouter, deal, load_trace
from tests.conftest import make_scenario

DATA = Path(__file__).parent / "data"
IDS = str(DATA / "tiny-moe-zipf-ids.csv")  # the tiny scenario, Zipf 1.2, tokens_per_gpu 32, 2 steps (--save-routing)
COUNTS = str(DATA / "tiny-moe-zipf-counts.csv")  # the same run's expert_load.csv, summed over EP groups
ZIPF_32 = {"routing": {"distribution": "zipf", "zipf_alpha": 1.2}, "workload": {"tokens_per_gpu": 32, "steps": 2}}


def trace_scenario(path, **sections):
    workload = {"steps": 2, **sections.pop("workload", {})}
    return make_scenario(routing={"distribution": "trace", "trace": str(path), **sections.pop("routing", {})},
                         workload=workload, **sections)


def test_replaying_a_balanced_recording_is_the_balanced_run_bit_for_bit(tmp_path):
    balanced = make_scenario(routing={"distribution": "balanced"}, workload={"steps": 2})
    ref, _, ref_record = simulate_scenario(balanced, save_routing=tmp_path / "balanced.npz")
    replay, _, record = simulate_scenario(trace_scenario(tmp_path / "balanced.npz"))
    for key in ("step_time_s", "mfu", "load_imbalance", "expert_load_max_over_mean", "collectives"):
        assert replay[key] == ref[key]
    assert record.expert_load_rows == ref_record.expert_load_rows


def test_replaying_a_balanced_runs_expert_counts_gives_the_balanced_laws_exact_counts(tmp_path):
    ref, _, ref_record = simulate_scenario(make_scenario(routing={"distribution": "balanced"}, workload={"steps": 2}))
    pd.DataFrame(ref_record.expert_load_rows).to_csv(tmp_path / "expert_load.csv", index=False)  # a counts trace as is
    replay, _, record = simulate_scenario(trace_scenario(tmp_path / "expert_load.csv"))
    assert [r["tokens"] for r in record.expert_load_rows] == [r["tokens"] for r in ref_record.expert_load_rows]
    assert replay["load_imbalance"] == ref["load_imbalance"] == 1.0
    assert replay["step_time_s"] == pytest.approx(ref["step_time_s"], rel=0.01)  # only which GPU sends which copy differs


def test_the_shipped_ids_trace_replays_its_zipf_run_bit_for_bit():
    ref = simulate_scenario(make_scenario(**ZIPF_32))[0]
    replay = simulate_scenario(trace_scenario(IDS, workload={"tokens_per_gpu": 32}))[0]
    assert replay["per_step"] == ref["per_step"]


def test_the_shipped_counts_trace_keeps_its_runs_expert_loads():
    ref = simulate_scenario(make_scenario(**ZIPF_32))[0]
    replay, _, record = simulate_scenario(trace_scenario(COUNTS, workload={"tokens_per_gpu": 32}))
    counts = pd.read_csv(COUNTS)
    got = pd.DataFrame(record.expert_load_rows).groupby(["step", "moe_layer", "expert"])["tokens"].sum()
    want = counts.sort_values(["step", "layer", "expert"])["tokens"].to_numpy()
    # each of the 2 micro-batches rounds its share (largest remainder): within 1 copy each, totals exact
    assert np.abs(got.to_numpy() - want).max() <= 2 and got.sum() == want.sum()
    assert replay["expert_load_max_over_mean"] == pytest.approx(ref["expert_load_max_over_mean"], rel=0.01)


def test_a_short_trace_starts_over_and_a_run_past_its_steps_wraps_around():
    trace = load_trace(IDS)
    router = TraceRouter(trace, 3, 1, 2, 16)  # step 3 of a 2-step trace: its step 1
    first = router.route(400, np.random.default_rng(0))
    second = router.route(400, np.random.default_rng(0))
    ids = trace.experts[1, 1]  # 512 tokens
    assert (first == ids[:400]).all() and (second[:112] == ids[400:]).all() and (second[112:] == ids[:288]).all()


def test_dealing_counts_gives_distinct_experts_per_token_in_the_traces_proportions():
    counts = np.array([5, 3, 1, 1, 0, 2])  # shares up to 5/12 < 1/2
    ids = deal(counts, 600, 2, np.random.default_rng(0))
    assert (ids[:, 0] != ids[:, 1]).all()
    assert np.bincount(ids.ravel(), minlength=6).tolist() == [500, 300, 100, 100, 0, 200]


@pytest.mark.parametrize("model, rule", [({"num_layers": 3}, "MoE layers"), ({"num_experts": 8}, "expert ids"),
                                         ({"top_k": 1}, "experts per token")])
def test_a_trace_that_does_not_fit_the_model_names_routing_trace(model, rule):
    with pytest.raises(ScenarioError) as exc:
        trace_scenario(IDS, model=model)
    assert exc.value.key == "routing.trace" and rule in exc.value.rule


def test_a_counts_trace_over_other_experts_is_rejected():
    with pytest.raises(ScenarioError) as exc:
        trace_scenario(COUNTS, model={"num_experts": 32})
    assert exc.value.key == "routing.trace" and "counts 16 experts" in exc.value.rule


@pytest.mark.parametrize("table, rule", [
    ({"step": [0], "layer": [0], "expert_0": [1], "expert_1": [1]}, "same expert twice"),
    ({"step": [0], "layer": [0], "expert_1": [1]}, "expert_0"),
    ({"step": [0] * 16, "layer": [0] * 16, "expert": list(range(16)), "tokens": [20] + [1] * 15}, "at most 1/top_k"),
    ({"step": [1], "layer": [0], "expert_0": [1], "expert_1": [2]}, "every layer"),
])
def test_malformed_traces_are_rejected_naming_the_rule(tmp_path, table, rule):
    path = tmp_path / "t.csv"
    pd.DataFrame(table).to_csv(path, index=False)
    with pytest.raises(ScenarioError) as exc:
        trace_scenario(path, model={"num_layers": 1}, workload={"scope": "moe_layer"})
    assert exc.value.key == "routing.trace" and rule in exc.value.rule


def test_npz_and_parquet_traces_read_like_csv(tmp_path):
    csv = load_trace(IDS)
    np.savez(tmp_path / "t.npz", experts=np.array([[csv.experts[t, layer] for layer in range(2)] for t in range(2)]))
    pd.read_csv(IDS).to_parquet(tmp_path / "t.parquet")
    for other in (load_trace(str(tmp_path / "t.npz")), load_trace(str(tmp_path / "t.parquet"))):
        assert all((other.experts[key] == csv.experts[key]).all() for key in csv.experts)


def test_trace_keys_go_together():
    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={"distribution": "trace"})
    assert exc.value.key == "routing.distribution"
    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={"trace": IDS})
    assert exc.value.key == "routing.trace"
    with pytest.raises(ScenarioError) as exc:
        trace_scenario("no/such/file.csv")
    assert exc.value.key == "routing.trace"


def test_cli_records_a_trace_and_a_bad_trace_exits_2(tmp_path):
    root = Path(__file__).parent.parent
    cmd = [sys.executable, str(root / "run_sim.py"), "run", "scenarios/default.yaml", "--set", "workload.scope=moe_layer",
           "--set", "workload.tokens_per_gpu=64", "--no-trace", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd + ["--save-routing"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out" / "routing.npz")["experts"].shape == (1, 1, 2 * 64 * 64, 8)  # 2 micro-batches
    bad = subprocess.run(cmd + ["--set", "routing.distribution=trace", "--set", f"routing.trace={IDS}"], cwd=root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "routing.trace" in bad.stderr and "Traceback" not in bad.stderr
