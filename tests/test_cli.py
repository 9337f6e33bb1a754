"""run_sim.py as a user runs it: a subprocess, exit status, stderr and the files in --out."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import simulator
from tests.conftest import tiny_dict

ROOT = Path(__file__).resolve().parent.parent

# Two nodes of four GPUs running the tiny model: the whole CLI path in about a second.
TINY = tiny_dict(name="cli-tiny", hardware={"preset": "h100-seed"}, workload={"tokens_per_gpu": 128})

CONTRACT_FIELDS = (
    "scenario", "num_gpus", "step_time_s", "mfu", "model_tflops_per_gpu", "tokens_per_s",
    "bandwidth_utilization", "bandwidth_utilization_step", "collectives", "breakdown_s",
    "load_imbalance", "provenance", "epsim_version",
)


def run_sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_sim.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def write_scenario(folder: Path, data: dict = TINY, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def assert_clean_rejection(proc: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 2, one error message on stderr naming the key and value, no traceback, no partial output."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert proc.stderr.count("error:") == 1
    assert proc.stdout == ""
    for name in names:
        assert name in proc.stderr, f"{name!r} missing from {proc.stderr!r}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One good run of the tiny scenario, shared by the read-only checks of its output."""
    folder = tmp_path_factory.mktemp("tiny_run")
    out = folder / "out"
    proc = run_sim(write_scenario(folder), "--out", out)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_good_scenario_exits_0_and_writes_summary_and_metrics(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "summary.json").is_file()
    assert list(out.glob("*.csv"))


def test_summary_holds_every_contract_field(tiny_run):
    _, out = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    missing = [key for key in CONTRACT_FIELDS if key not in summary]
    assert not missing
    assert summary["scenario"] == "cli-tiny"
    assert summary["num_gpus"] == 8
    assert summary["epsim_version"] == simulator.__version__
    for key in ("bandwidth_utilization", "bandwidth_utilization_step"):
        assert set(summary[key]) >= {"nvlink", "ib"}
        assert all(0.0 <= summary[key][link] <= 1.0 for link in ("nvlink", "ib"))
    for kind in ("dispatch", "combine"):
        assert set(summary["collectives"][kind]) >= {"count", "mean_time_s", "max_time_s", "mean_bytes_per_gpu"}
    assert set(summary["breakdown_s"]) >= {"compute", "exposed_comm", "idle"}
    assert set(summary["provenance"]) >= {"compute_model", "network_model", "seed"}


def test_summary_numbers_agree_with_the_contract_definitions(tiny_run):
    _, out = tiny_run
    s = json.loads((out / "summary.json").read_text())
    step = s["step_time_s"]
    assert step > 0
    assert sum(s["breakdown_s"].values()) == pytest.approx(step)
    # model_tflops_per_gpu and mfu share the model FLOPs; h100-seed peak dense BF16 is 400 TFLOPS.
    assert s["mfu"] == pytest.approx(s["model_tflops_per_gpu"] * 1e12 / 400e12)
    assert 0 < s["mfu"] <= 1
    assert s["tokens_per_s"] == pytest.approx(128 * 2 * 8 / step)
    assert s["load_imbalance"] >= 1.0
    for kind in ("dispatch", "combine"):
        stats = s["collectives"][kind]
        assert stats["count"] > 0
        assert 0 < stats["mean_time_s"] <= stats["max_time_s"]


def test_metrics_csv_has_a_header_and_rows(tiny_run):
    _, out = tiny_run
    assert sorted(p.name for p in out.glob("*.csv")) == ["expert_load.csv", "metrics_per_layer_gpu.csv"]
    for path in out.glob("*.csv"):
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        header, data = rows[0], rows[1:]
        assert header and all(field and not field.replace(".", "").isdigit() for field in header)
        assert data and all(len(row) == len(header) for row in data)


def test_set_ep_size_changes_the_layout_in_the_summary(tmp_path, tiny_run):
    _, base_out = tiny_run
    proc = run_sim(write_scenario(tmp_path), "--set", "parallel.ep_size=4", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    base = json.loads((base_out / "summary.json").read_text())
    assert (base["layout"]["ep_size"], base["layout"]["dp_size"]) == (8, 1)
    assert (summary["layout"]["ep_size"], summary["layout"]["dp_size"]) == (4, 2)
    assert summary["num_gpus"] == 8


@pytest.mark.parametrize("data_changes, sets, names", [
    ({"routin": {"seed": 1}}, [], ["routin", "unknown key"]),
    ({}, ["routing.zipf_alfa=1.2"], ["routing.zipf_alfa", "1.2", "zipf_alpha"]),
    ({}, ['parallel.ep_size="8"'], ["parallel.ep_size", "'8'", "integer"]),
    ({}, ["parallel.ep_size=3"], ["parallel.ep_size", "3", "must divide the 8 GPUs"]),
    ({}, ["workload.tokens_per_gpu=0"], ["workload.tokens_per_gpu", "0"]),
    ({}, ["workload.mode=decode"], ["workload.tokens_per_gpu", "128", "derived in decode", "batch_per_gpu"]),
    ({}, ["hardware.preset=a100"], ["hardware.preset", "a100", "h100-seed"]),
    ({}, ["parallel.ep_size"], ["--set", "parallel.ep_size", "KEY=VALUE"]),
], ids=["unknown-top-level-key", "unknown-nested-key", "string-for-int", "ep-not-dividing-gpus",
        "zero-tokens", "decode-with-tokens-per-gpu", "unknown-preset", "set-without-equals"])
def test_bad_scenario_exits_2_with_one_message_naming_key_and_value(tmp_path, data_changes, sets, names):
    path = write_scenario(tmp_path, {**TINY, **data_changes})
    args = [a for s in sets for a in ("--set", s)]
    proc = run_sim(path, *args, "--out", tmp_path / "out")
    assert_clean_rejection(proc, *names)
    assert not (tmp_path / "out").exists()


def test_model_that_does_not_fit_memory_exits_2(tmp_path):
    data = {"name": "dsv3-ep8", "hardware": {"nodes": 1}, "model": {"preset": "deepseek-v3"},
            "parallel": {"ep_size": 8}, "workload": {"mode": "train"}}
    proc = run_sim(write_scenario(tmp_path, data), "--out", tmp_path / "out")
    assert_clean_rejection(proc, "parallel.ep_size", "8", "does not fit memory", "the biggest is optimizer")


def test_missing_scenario_file_exits_2(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = run_sim(missing, "--out", tmp_path / "out")
    assert_clean_rejection(proc, str(missing), "does not exist")


def test_yaml_syntax_error_exits_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\nhardware: {nodes: 1}\n")
    proc = run_sim(path, "--out", tmp_path / "out")
    assert_clean_rejection(proc, str(path), "YAML syntax error")


def test_bad_input_leaves_an_existing_out_folder_byte_identical(tmp_path):
    out = tmp_path / "out"
    good = run_sim(write_scenario(tmp_path), "--out", out)
    assert good.returncode == 0, good.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "summary.json" in before

    bad = run_sim(write_scenario(tmp_path, {**TINY, "parallel": {"ep_size": 3}}, "bad.yaml"), "--out", out)
    assert_clean_rejection(bad, "parallel.ep_size", "3")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_path_that_is_an_existing_file_exits_2_without_traceback(tmp_path):
    not_a_folder = tmp_path / "taken"
    not_a_folder.write_text("keep me\n")
    proc = run_sim(write_scenario(tmp_path), "--out", not_a_folder)
    assert_clean_rejection(proc, str(not_a_folder))
    assert not_a_folder.read_text() == "keep me\n"


def test_sweep_runs_each_point_of_the_axis_and_writes_the_combined_table(tmp_path):
    proc = run_sim("sweep", write_scenario(tmp_path), "--set", "parallel.ep_size=4,8", "--jobs", "1",
                   "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "2 points: 2 simulated" in proc.stdout
    assert (tmp_path / "out" / "sweep.csv").is_file()
    assert len(list((tmp_path / "out" / "points").glob("*/summary.json"))) == 2


def test_unknown_option_exits_2_without_traceback(tmp_path):
    proc = run_sim(write_scenario(tmp_path), "--bogus")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--bogus" in proc.stderr


def test_progress_is_told_every_simulated_event_and_changes_nothing(monkeypatch):
    import simulator.engine.run as engine
    from simulator.api import simulate_scenario
    from simulator.scenario import build_scenario

    monkeypatch.setattr(engine, "PROGRESS_EVENTS", 1000)
    told = []
    with_bar = simulate_scenario(build_scenario(TINY), progress=told.append)
    without = simulate_scenario(build_scenario(TINY))
    assert sum(told) == with_bar[2].num_events and len(told) > 2 and set(told[:-1]) == {1000}
    assert json.dumps(with_bar[0], sort_keys=True) == json.dumps(without[0], sort_keys=True)


def test_the_progress_bar_shows_only_on_a_terminal_or_when_forced(capsys):
    import run_sim
    from simulator.scenario import build_scenario

    s = build_scenario(TINY)
    with run_sim.run_progress(s) as progress:  # stderr is not a terminal under pytest
        assert progress is None
    with run_sim.run_progress(s, force=True) as progress:
        progress(10)
    err = capsys.readouterr().err
    assert f"simulating {s.name}" in err and "10 of ~" in err
