"""Accuracy never silently regresses: a fast subset of the validation set against recorded errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.studies.validation.harness import load_baseline, load_cases, run_case, select, summary_stats

FAST = ["deepep-normal-intranode-ep8", "deepep-normal-internode-ep16", "deepep-low-latency-ep8",
        "deepep-low-latency-ep64", "nccl-alltoall-h100-8gpu-nvlink"]
TOLERANCE_PP = 1.0  # percentage points an error may grow before CI fails


@pytest.mark.parametrize("case", select(load_cases(), FAST), ids=lambda c: c["id"])
def test_error_does_not_grow_beyond_its_recorded_value(case):
    baseline = load_baseline()
    for row in run_case(case):
        assert row.key in baseline, f"{row.key} has no recorded error: run `python run_sim.py validate --record`"
        assert abs(row.error_pct) <= baseline[row.key] + TOLERANCE_PP, (
            f"{row.key}: |error| grew from {baseline[row.key]:.2f} % to {abs(row.error_pct):.2f} %")


def test_every_predicted_metric_has_a_recorded_error():
    baseline = load_baseline()
    for case in load_cases():
        if "pending" in case:
            continue
        for metric in case["metrics"]:
            assert f"{case['id']} / {metric['name']}" in baseline


def test_metrics_a_parameter_was_fitted_on_count_in_no_statistic():
    rows = [r for case in select(load_cases(), ["deepep-low-latency-ep8"]) for r in run_case(case)]
    fitted = [r for r in rows if r.status.startswith("fit")]
    assert len(fitted) == 1 and fitted[0].metric == "dispatch latency"
    assert summary_stats(rows)["num_predicted"] == len(rows) - 1


def test_pending_cases_say_why_and_count_in_no_statistic():
    pending = {"id": "a-case-epsim-cannot-run-yet", "pending": "needs decode (the serving issue)",
               "metrics": [{"name": "decode step", "quantity": "collective_time_us", "published": 91.9, "unit": "ms"}]}
    rows = run_case(pending)
    assert all(r.predicted is None and r.status for r in rows)
    assert summary_stats(rows)["num_predicted"] == 0


def test_alltoall_busbw_is_algbw_times_n_minus_1_over_n():
    [row] = run_case(select(load_cases(), ["nccl-alltoall-h100-8gpu"])[0])
    # a uniform NVLink all-to-all: each rank moves 7/8 of its buffer over its port at the achievable
    # rate times NCCL's all-to-all efficiency, so busbw = that rate (less a small launch/latency term)
    from simulator.scenario import build_scenario
    case = select(load_cases(), ["nccl-alltoall-h100-8gpu"])[0]
    s = build_scenario({"name": "x", **case["scenario"]})
    rate = s.cluster.nvlink.achievable_bytes_per_s * s.cluster.direct_alltoall_efficiency / 1e9
    assert row.predicted == pytest.approx(rate, rel=0.02)
    assert row.predicted < rate


def test_validate_command_prints_the_table_and_writes_csv_and_parity_plot(tmp_path):
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "run_sim.py", "validate", "--case", "deepep-low-latency-ep8",
                          "--out", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "deepep-low-latency-ep8" in out.stdout and "median |error|" in out.stdout
    assert (tmp_path / "validation.csv").read_text().startswith("case,metric")
    assert (tmp_path / "parity.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "run_sim.py", "validate", "--case", "no-such-case"], cwd=root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-case" in bad.stderr and "Traceback" not in bad.stderr


def test_a_case_whose_layout_is_rejected_reports_the_rule_instead_of_stopping_the_table():
    case = {"id": "too-big", "scenario": {"hardware": {"nodes": 1}, "model": {"preset": "deepseek-v3"},
                                          "parallel": {"ep_size": 8}, "workload": {"mode": "train"}},
            "metrics": [{"name": "m", "quantity": "model_tflops_per_gpu", "published": 1.0, "unit": ""}]}
    [row] = run_case(case)
    assert row.predicted is None and row.status.startswith("rejected:") and "does not fit memory" in row.status
    assert summary_stats([row])["num_predicted"] == 0
