"""Work estimated before it is done (issue 16): the estimate against measured runs, and the budget
that refuses a run which cannot finish, naming the estimate and the flag."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

import run_sim
from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.scenario import build_scenario, load_scenario
from simulator.scenario.budget import Budget, check_budget, draws_per_copy, estimate
from simulator.studies.validation.harness import load_cases
from tests.conftest import tiny_dict

ROOT = Path(__file__).resolve().parent.parent

# One run in a fresh interpreter: its events and its peak resident memory (what the budget bounds).
MEASURE = """
import json, sys
from simulator.engine.run import Run
from simulator.extension import sample_micro_batches, with_micro_batches
from simulator.scenario import build_scenario
s = build_scenario(json.loads(sys.argv[1]))
sample = sample_micro_batches(s)
events = sum(Run(r).simulate().num_events
             for r in ([s] if sample is None else [with_micro_batches(s, m) for m in sample]))
# VmHWM, not ru_maxrss: a forked child inherits its parent's maxrss across exec (Linux), VmHWM is its own
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"events": events, "rss_bytes": peak * 1024}))
"""


def measure(data: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(data)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout)


SIZES = {  # each a second or less; between them the routing call, the events and PP dominate in turn
    "tiny": {},
    "tiny-wide-call": {"workload": {"mode": "prefill", "tokens_per_gpu": 65536, "micro_batches": 1},
                       "model": {"num_layers": 1}},
    "tiny-ep32": {"hardware": {"nodes": 8}, "parallel": {"ep_size": 32}, "workload": {"micro_batches": 1}},
    "tiny-pp2": {"model": {"num_layers": 4}, "parallel": {"ep_size": 4, "pp_size": 2}, "workload": {"micro_batches": 4}},
    "tiny-chunks4-full-recompute": {"pipeline": {"chunks": 4}, "training": {"recompute": "full"}},
}


@pytest.mark.parametrize("name", SIZES)
def test_estimated_events_and_memory_are_within_2x_of_a_measured_run(name):
    data = tiny_dict(name=name, **SIZES[name])
    est, got = estimate(build_scenario(data)), measure(data)
    assert 0.5 <= est.num_events / got["events"] <= 2, (est.num_events, got["events"])
    assert 0.5 <= est.peak_memory_bytes / got["rss_bytes"] <= 2, (est.peak_memory_bytes, got["rss_bytes"])


def test_estimated_events_match_a_reference_scenario_run():
    s = load_scenario(ROOT / "scenarios" / "single-node-ep8.yaml")
    _, _, record = simulate_scenario(s)
    assert 0.5 <= estimate(s).num_events / record.num_events <= 2


def test_routed_copies_are_tokens_times_top_k():
    s = build_scenario(tiny_dict())
    _, _, record = simulate_scenario(s)
    measured = sum(int(c.recv_copies.sum()) for c in record.counts.values())
    assert estimate(s).routed_copies == measured == 8 * 2 * 2 * 256 * 2  # GPUs x layers x mbs x tokens x top_k


def test_a_run_past_the_memory_budget_is_refused_with_the_estimate_and_the_flag():
    s = build_scenario(tiny_dict(workload={"tokens_per_gpu": 10_000_000}, model={"top_k": 8}, hardware={"hbm_gb": 90_000}))
    with pytest.raises(ScenarioError) as info:
        check_budget(s, Budget())
    message = str(info.value)
    assert info.value.key == "--max-memory-gb" and "GiB" in message and "routed token copies" in message
    assert "raise it with --max-memory-gb" in message


def test_a_run_past_the_time_budget_is_refused_and_a_raised_flag_lets_it_through():
    s = build_scenario(tiny_dict())
    with pytest.raises(ScenarioError, match=r"--max-minutes = 1e-05: .* estimated at .*raise it with --max-minutes"):
        check_budget(s, Budget(max_minutes=1e-5))
    assert check_budget(s, Budget(max_minutes=1.0)).num_events > 0


def test_the_cli_refuses_a_run_past_the_budget_with_exit_2(capsys):
    code = run_sim.main([str(ROOT / "scenarios" / "single-node-ep8.yaml"), "--set", "workload.tokens_per_gpu=8000000",
                         "--set", "hardware.hbm_gb=90000"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --max-memory-gb = 4.0: ") and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--max-minutes", "--max-memory-gb"])
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_budget_flag_must_be_positive(capsys, flag, value):
    assert run_sim.main([str(ROOT / "scenarios" / "single-node-ep8.yaml"), flag, value]) == 2
    assert f"{flag} = " in capsys.readouterr().err


def test_every_shipped_scenario_and_validation_case_fits_the_default_budget():
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        check_budget(load_scenario(path), Budget())
    for case in load_cases():
        if "pending" not in case:
            check_budget(build_scenario({"name": case["id"], **copy.deepcopy(case["scenario"])}), Budget())


def test_the_1024_gpu_benchmark_needs_the_flag_the_readme_gives():
    s = load_scenario(ROOT / "benchmarks" / "deepseek-v3-1024-h100.yaml")
    check_budget(s, Budget(max_minutes=60))  # README: --max-minutes 60
    assert "--max-minutes 60" in (ROOT / "README.md").read_text()


def test_a_router_too_steep_to_sample_is_refused_naming_zipf_alpha():
    s = build_scenario(tiny_dict(routing={"distribution": "zipf", "zipf_alpha": 4.0},
                                 model={"num_experts": 256, "top_k": 128}))
    assert draws_per_copy(s) > 1e4  # the 128th choice is left with so little mass that it takes > 1e4 draws
    with pytest.raises(ScenarioError) as info:
        estimate(s)
    assert info.value.key == "routing.zipf_alpha" and "top_k" in str(info.value)


def test_uniform_routing_needs_about_one_draw_per_copy():
    assert draws_per_copy(build_scenario(tiny_dict())) == pytest.approx(1.03, abs=0.01)  # 16 experts, top 2


def test_a_sweep_with_a_point_past_the_budget_is_refused_before_any_point_runs(tmp_path, capsys):
    import yaml
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_dict(hardware={"hbm_gb": 90_000}, model={"top_k": 8})))
    code = run_sim.main(["sweep", str(path), "--set", "workload.tokens_per_gpu=256,16000000", "--out",
                         str(tmp_path / "out"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: sweep point tokens_per_gpu=16000000: --max-memory-gb = 4.0"), err
    assert not (tmp_path / "out").exists()


def test_validate_takes_the_budget_flags(capsys):
    assert run_sim.main(["validate", "--case", "deepep-normal-intranode-ep8", "--max-minutes", "1e-6",
                         "--out", "/nonexistent/never-written"]) == 2
    assert "error: --max-minutes = 1e-06: 'deepep-normal-intranode-ep8' is estimated" in capsys.readouterr().err


def test_every_routing_law_has_an_estimate_and_threshold_gating_costs_a_gate_value_per_expert():
    from simulator.scenario.budget import GATE_VALUE_S, estimate
    from tests.conftest import make_scenario
    laws = [{"distribution": "dirichlet"}, {"distribution": "trace", "trace": str(Path(__file__).parent / "data" / "tiny-moe-zipf-ids.csv")}]
    for law in laws:  # a KeyError here once crashed `run` before any work
        assert estimate(make_scenario(routing=law, workload={"tokens_per_gpu": 32})).wall_s > 0
    plain = estimate(make_scenario())
    gated = estimate(make_scenario(routing={"threshold": 0.2}))
    gate_values = plain.routed_copies / 2 * 16  # top-2 of 16 experts: 8 gate values per copy
    assert gated.wall_s - plain.wall_s == pytest.approx(gate_values * GATE_VALUE_S)
