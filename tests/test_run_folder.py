"""`run` never silently replaces another run: the default folder is named after the overrides, an
out folder holding a different run is refused without --force, and the scenario as run and as
resolved are written beside summary.json (the first re-runs to the same summary)."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

from simulator.results import RESOLVED_FILE, SCENARIO_FILE, run_folder_name
from simulator.scenario import build_scenario
from tests.conftest import tiny_dict

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny_dict(name="folder-tiny", hardware={"preset": "h100-seed"}, workload={"tokens_per_gpu": 128})


def run_sim(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_sim.py"), *map(str, args), "--no-trace"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def files_of(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_runs_with_different_overrides_land_in_different_default_folders(tmp_path):
    path = scenario_file(tmp_path)
    for alpha in ("1.1", "1.3"):
        proc = run_sim(tmp_path, path, "--set", "routing.distribution=zipf", "--set", f"routing.zipf_alpha={alpha}")
        assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["folder-tiny__distribution=zipf_zipf_alpha=1.1", "folder-tiny__distribution=zipf_zipf_alpha=1.3"]


def test_a_folder_holding_a_different_run_is_refused_without_force(tmp_path):
    path, out = scenario_file(tmp_path), tmp_path / "out"
    assert run_sim(tmp_path, path, "--out", out).returncode == 0
    before = files_of(out)
    again = run_sim(tmp_path, path, "--out", out)  # the same scenario: replacing it loses nothing
    assert again.returncode == 0, again.stderr
    other = run_sim(tmp_path, path, "--set", "routing.seed=7", "--out", out)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "--force" in other.stderr and str(out) in other.stderr
    assert files_of(out) == before
    forced = run_sim(tmp_path, path, "--set", "routing.seed=7", "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert yaml.safe_load((out / SCENARIO_FILE).read_text())["routing"]["seed"] == 7


def test_a_run_folder_without_a_resolved_scenario_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}\n")
    proc = run_sim(tmp_path, scenario_file(tmp_path), "--out", out)
    assert proc.returncode == 2 and RESOLVED_FILE in proc.stderr
    assert (out / "summary.json").read_text() == "{}\n"


def test_the_written_scenario_reruns_to_the_same_summary_and_the_resolved_one_is_complete(tmp_path):
    path = scenario_file(tmp_path)
    first = run_sim(tmp_path, path, "--set", "parallel.ep_size=4", "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    rerun = run_sim(tmp_path, tmp_path / "a" / SCENARIO_FILE, "--out", tmp_path / "b")
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    resolved = yaml.safe_load((tmp_path / "a" / RESOLVED_FILE).read_text())
    expected = build_scenario({**TINY, "parallel": {"ep_size": 4}}).resolved
    assert json.loads(json.dumps(resolved)) == json.loads(json.dumps(expected))
    assert resolved["hardware"]["peak_bf16_tflops"] == 400  # a preset's field, filled in


def test_folder_names_stay_plain_short_and_distinct():
    assert run_folder_name("../x", []) == "x"
    long_a = [("parallel.ep_size", 8), ("routing.trace", "a" * 200)]
    long_b = [("parallel.ep_size", 8), ("routing.trace", "a" * 199 + "b")]
    assert len(run_folder_name("n", long_a)) <= 100
    assert run_folder_name("n", long_a) != run_folder_name("n", long_b)
    assert "/" not in run_folder_name("n", [("model.hf_config", "/abs/config.json")])
