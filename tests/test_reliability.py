"""Hostile input and interrupted runs (issue 16): bounded YAML, validated calibration files, safe
output paths and messages, file sets that a kill leaves whole, deterministic sweep tables, a
calibrate that never replaces a file unasked, and Ctrl-C without a traceback."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import run_sim
from hardware.atomic import write_atomic
from hardware.calibrated import CALIBRATION_DIR, load_calibration
from hardware.presets import PRESET_DIR
from simulator.errors import ScenarioError
from simulator.scenario import build_scenario, load_scenario, parse_override
from tests.conftest import tiny_dict

TINY = tiny_dict(name="rel-tiny", hardware={"preset": "h100-seed"}, workload={"tokens_per_gpu": 128})


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    """run_sim.main in this process (a subprocess costs a second of imports per call)."""
    try:
        code = run_sim.main([str(a) for a in args])
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("KeyboardInterrupt escaped run_sim.main")
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_exit_2(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert len(err) < 2000  # a bounded quote of the value, never the whole of it
    for name in names:
        assert name in err, f"{name!r} missing from {err!r}"


def rejects(data: dict, *names: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        build_scenario(data)
    for name in names:
        assert name in str(info.value), f"{name!r} missing from {str(info.value)!r}"
    return info.value


# -- 1. YAML read safely and boundedly ------------------------------------------------------------
def test_a_scenario_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:
        fh.write(b"name: x\n")
        fh.truncate(64 << 20)  # sparse: 64 MiB that the loader must not read whole
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == "scenario" and "larger than 1,048,576 bytes" in str(info.value)


def test_a_preset_file_over_the_size_limit_is_refused_naming_the_preset(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("gpu_name: x\n" + "# padding\n" * 120_000)
    rejects({**TINY, "hardware": {"preset": str(path), "nodes": 2}}, "hardware.preset", "larger than")


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_past_the_limit_are_refused(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text("name: x\nrouting:\n  seed: 0\n" + laughs(6))  # 10^6 nodes once expanded
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "aliases expand it past 100,000 nodes" in str(info.value)


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\nloop: &a [1, *a]\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "recursive" in str(info.value)


def test_nesting_deeper_than_the_limit_is_refused_with_its_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nrouting: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "nested deeper than 32 levels at line 2" in str(info.value)


def test_a_duplicate_key_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(TINY) + "parallel:\n  ep_size: 4\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "duplicate key 'parallel'" in str(info.value)


def test_exponent_numbers_without_a_dot_are_floats():
    assert parse_override("routing.zipf_alpha=1e0") == ("routing.zipf_alpha", 1.0)
    assert parse_override("training.grad_bucket_params=4e7") == ("training.grad_bucket_params", 4e7)
    assert parse_override("x=2.5E-3")[1] == 0.0025
    assert parse_override("name=1e")[1] == "1e"


def test_a_4300_digit_integer_in_set_exits_2_with_a_bounded_message(tmp_path, capsys):
    code, _, err = cli(capsys, write_yaml(tmp_path / "t.yaml", TINY), "--set", "parallel.ep_size=" + "7" * 4300,
                       "--out", tmp_path / "out")
    assert_clean_exit_2(code, err, "parallel.ep_size", "4,300 digits", "at most 100 digits")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000])
def test_a_deeply_nested_set_value_exits_2(tmp_path, capsys, value):
    code, _, err = cli(capsys, write_yaml(tmp_path / "t.yaml", TINY), "--set", f"routing.seed={value}",
                       "--out", tmp_path / "out")
    assert_clean_exit_2(code, err, "routing.seed", "nested deeper than 32")


def test_a_set_key_of_thousands_of_parts_exits_2(tmp_path, capsys):
    code, _, err = cli(capsys, write_yaml(tmp_path / "t.yaml", TINY), "--set", "a." * 5000 + "b=1")
    assert_clean_exit_2(code, err, "--set", "at most 32")


@pytest.mark.parametrize("suffix", ["", ".yaml"], ids=["name", "path"])
def test_a_preset_name_longer_than_the_file_system_allows_is_a_scenario_error(suffix):
    err = rejects({**TINY, "hardware": {"preset": "p" * 5000 + suffix, "nodes": 2}}, "hardware.preset")
    assert "5,0" in str(err) and len(str(err)) < 1000


# -- 2. a preset file's contents are never quoted ---------------------------------------------------
def test_an_unknown_key_in_a_preset_file_names_the_key_but_not_its_value(tmp_path):
    secret = tmp_path / "root-only.txt"
    secret.write_text("root_password: hunter2-do-not-print\n" + (PRESET_DIR / "h100-seed.yaml").read_text())
    link = tmp_path / "preset.yaml"
    link.symlink_to(secret)
    err = rejects({**TINY, "hardware": {"preset": str(link), "nodes": 2}}, "hardware.preset", "root_password",
                  "unknown key")
    assert "hunter2" not in str(err)


def test_a_syntax_error_in_a_preset_file_does_not_quote_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("secret_line: [hunter2-do-not-print\nother: 1\n")
    err = rejects({**TINY, "hardware": {"preset": str(path), "nodes": 2}}, "hardware.preset", "line 2")
    assert "hunter2" not in str(err)


# -- 3. calibration files are validated -------------------------------------------------------------
def calibration_copy(tmp_path: Path, name: str, change) -> Path:
    data = json.loads((CALIBRATION_DIR / f"{name}.json").read_text())
    change(data)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    return path


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return change


@pytest.mark.parametrize("name, key, value, rule", [
    ("h100-sxm", "fits.bf16.bytes_per_s", 0, "finite rate"),
    ("h100-sxm", "fits.bf16.flop_per_s", "1e15", "finite rate"),
    ("h100-sxm", "fits.fp8.overhead_s", 1e300, "[0, 1] s"),
    ("h100-sxm", "fits.fp8.overhead_s", float("inf"), "finite"),
    ("h100-sxm", "fits.bf16.flop_per_s", True, "finite rate"),
    ("cpu-local", "fits.fp32.gemm.s_per_act_byte", None, "lacks"),
    ("cpu-local", "fits.fp32.gemm.overhead_s", -1e-6, "[0, 1] s"),
    ("cpu-local", "fits.fp32.expert_block.s_per_act_byte", "fast", "finite cost"),
    ("cpu-local", "fits.fp32.best_gemm_flop_per_s", 0.0, "finite rate"),
    ("cpu-local", "fits.fp32.valid_range.gemm_m", [64, 1], "0 < low <= high"),
    ("cpu-local", "fits.fp32.page_fault_threshold_bytes", 0, "finite size"),
], ids=["zero-bandwidth", "string-rate", "1e300-overhead", "inf", "bool", "missing-term", "negative",
        "string-term", "zero-best-rate", "inverted-range", "zero-threshold"])
def test_a_bad_calibration_number_is_rejected_naming_file_key_value_and_rule(tmp_path, name, key, value, rule):
    if value is None:  # a term of the wrong part: gemm has no s_per_act_byte, so delete a real one
        change = (lambda data: data["fits"]["fp32"]["gemm"].pop("s_per_flop"))
        key = "fits.fp32.gemm.s_per_flop"
    else:
        change = _set(key, value)
    path = calibration_copy(tmp_path, name, change)
    with pytest.raises(ValueError) as info:
        load_calibration(path)
    message = str(info.value)
    for word in (str(path), key, rule):
        assert word in message, f"{word!r} missing from {message!r}"


def test_nan_in_a_calibration_file_is_rejected_naming_the_key(tmp_path):
    path = tmp_path / "cal.json"
    text = (CALIBRATION_DIR / "h100-sxm.json").read_text()
    path.write_text(text.replace('"overhead_s": 4e-6', '"overhead_s": NaN', 1))
    with pytest.raises(ValueError, match=r"fits.bf16.overhead_s = nan: must be a finite time"):
        load_calibration(path)


def test_a_fit_where_flops_cost_nothing_is_rejected(tmp_path):
    def change(data):
        data["fits"]["fp32"]["gemm"].update(s_per_flop=0.0, s_per_flop_sqrt_m=0.0)
    with pytest.raises(ValueError, match="FLOPs take time"):
        load_calibration(calibration_copy(tmp_path, "cpu-local", change))


def test_a_calibration_with_zeros_exits_2_naming_the_file(tmp_path, capsys):
    cal = calibration_copy(tmp_path, "h100-sxm", _set("fits.bf16.bytes_per_s", 0))
    scenario = write_yaml(tmp_path / "t.yaml", {**TINY, "hardware": {"preset": "h100-sxm", "nodes": 2,
                                                                      "gpus_per_node": 4, "calibration": str(cal)}})
    code, _, err = cli(capsys, scenario, "--out", tmp_path / "out")
    assert_clean_exit_2(code, err, "hardware.calibration", str(cal), "fits.bf16.bytes_per_s = 0")


def test_the_shipped_calibrations_pass_their_checks():
    for path in CALIBRATION_DIR.glob("*.json"):
        assert load_calibration(path)["fits"]


# -- 4. output paths and terminal output --------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escaped", "/ABSOLUTE/victim", ".hidden/../x"])
def test_a_scenario_name_never_leads_the_default_out_folder_outside_runs(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    name = name.replace("/ABSOLUTE", str(tmp_path))
    code, out, err = cli(capsys, write_yaml(work / "t.yaml", {**TINY, "name": name}), "--no-trace")
    assert code == 0, err
    written = [p for p in tmp_path.rglob("summary.json")]
    assert len(written) == 1 and written[0].parent.parent == work / "runs"
    assert not written[0].parent.name.startswith(".")


def test_rich_markup_in_a_name_is_printed_as_text(tmp_path, capsys):
    code, out, err = cli(capsys, write_yaml(tmp_path / "t.yaml", {**TINY, "name": "odd[/x] [bold]"}),
                         "--out", tmp_path / "out", "--no-trace")
    assert code == 0, err
    assert "odd[/x] [bold]" in out


def test_rich_markup_in_a_swept_value_is_printed_as_text(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "sweep", write_yaml(tmp_path / "t.yaml", TINY), "--set", "name=a[/x],b",
                         "--jobs", 1)
    assert code == 0, err
    assert "a[/x]" in out and "2 points: 2 simulated" in out
    assert (tmp_path / "runs" / "a-x" / "sweep.csv").is_file()


# -- 5. a run's files are one set ------------------------------------------------------------------------
def old_set(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "metrics_per_layer_gpu.csv", "trace.json"):
        (folder / name).write_text(f"old {name}\n")
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_a_run_without_a_trace_removes_the_old_trace_with_the_old_summary(tmp_path, capsys):
    out = tmp_path / "out"
    old_set(out)
    (out / "notes.txt").write_text("the user's own file\n")
    # --force: the old set is not this scenario's run (tests/test_run_folder.py: refused without it)
    code, _, err = cli(capsys, write_yaml(tmp_path / "t.yaml", TINY), "--out", out, "--no-trace", "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["expert_load.csv", "metrics_per_layer_gpu.csv", "notes.txt",
                                                     "scenario.resolved.yaml", "scenario.yaml", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["scenario"] == "rel-tiny"


def test_a_write_killed_before_the_renames_leaves_the_old_set_and_no_temporary(tmp_path):
    from hardware.atomic import write_set_atomic
    before = old_set(tmp_path)

    def killed(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_set_atomic(tmp_path, {"metrics_per_layer_gpu.csv": "new", "trace.json": killed, "summary.json": "new"})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_a_write_killed_between_renames_never_leaves_a_new_summary_beside_an_old_trace(tmp_path, monkeypatch):
    from hardware.atomic import write_set_atomic
    old_set(tmp_path)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("hardware.atomic.os.replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_set_atomic(tmp_path, {"metrics_per_layer_gpu.csv": "new", "summary.json": "new"},
                         ("metrics_per_layer_gpu.csv", "trace.json", "summary.json"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["metrics_per_layer_gpu.csv"]  # marker and stale trace gone, no temporary left


def test_two_writers_of_one_file_use_distinct_temporary_names(tmp_path):
    seen = []

    def outer(tmp):
        seen.append(tmp)
        write_atomic(tmp_path / "sweep.csv", lambda inner: (seen.append(inner), inner.write_text("inner")))
        tmp.write_text("outer")

    write_atomic(tmp_path / "sweep.csv", outer)
    assert seen[0] != seen[1] and all(p.parent == tmp_path for p in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"] and (tmp_path / "sweep.csv").read_text() == "outer"


# -- 6. sweep table and resume key ----------------------------------------------------------------------
def test_sweep_table_columns_do_not_depend_on_which_point_finished_first():
    from simulator.studies.sweep_store import sweep_table
    invalid = {"index": 0, "label": "a", "status": "invalid", "x": 1, "error": "e", "key": "k0", "folder": "f0"}
    ok = {"index": 1, "label": "b", "status": "ok", "x": 2, "error": None, "step_time_s": 1.0, "mfu": 0.5,
          "key": "k1", "folder": "f1"}
    first, second = sweep_table([invalid, ok]), sweep_table([ok, invalid])
    assert list(first.columns) == list(second.columns)
    assert list(first.columns)[-2:] == ["key", "folder"] and list(first["index"]) == [0, 1]


def test_the_resume_key_changes_with_the_calibration_files_contents(tmp_path):
    from simulator.studies.sweep import expand_grid, parse_sweep_sets
    cal = tmp_path / "cal.json"
    cal.write_text((CALIBRATION_DIR / "h100-sxm.json").read_text())
    scenario = write_yaml(tmp_path / "t.yaml", {**TINY, "hardware": {"preset": "h100-sxm", "nodes": 2,
                                                                      "gpus_per_node": 4, "calibration": str(cal)}})
    fixed, axes = parse_sweep_sets(["parallel.ep_size=4,8"])
    before = [p.key for p in expand_grid(scenario, fixed, axes)]
    data = json.loads(cal.read_text())
    data["fits"]["bf16"]["flop_per_s"] /= 10
    cal.write_text(json.dumps(data))
    after = [p.key for p in expand_grid(scenario, fixed, axes)]
    assert len(set(before + after)) == 4


# -- 7. calibrate ---------------------------------------------------------------------------------------
def test_calibrate_writes_a_new_file_under_runs_by_default():
    out = run_sim.default_calibration_out("cpu")
    assert out.parts[0] == "runs" and out.suffix == ".json"
    assert (Path(run_sim.ROOT) / out).resolve() != (CALIBRATION_DIR / "cpu-local.json").resolve()


def fake_calibration(rounds_shares: list[list[float]]) -> dict:
    from hardware.calibration import contention
    rows = [{"kind": "gemm", "others_cpu_share": min(shares), "rounds": [{"others_cpu_share": s} for s in shares]}
            for shares in rounds_shares]
    data = json.loads((CALIBRATION_DIR / "h100-sxm.json").read_text())
    data.update(num_threads=2, benchmark_wall_s=1.0, measurements={"bf16": rows})
    data["fits"]["bf16"]["best_gemm_flop_per_s"] = 1e12
    data["fits"]["fp8"]["best_gemm_flop_per_s"] = 2e12
    data["contention"] = contention(data["measurements"])
    return data


def test_calibrate_refuses_to_replace_an_existing_file_without_force(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr("hardware.calibration.run_calibration", lambda *a, **k: fake_calibration([[0.0]]))
    existing = tmp_path / "cpu-local.json"
    existing.write_text("tracked\n")
    code, _, err = cli(capsys, "calibrate", "--out", existing)
    assert_clean_exit_2(code, err, str(existing), "--force")
    assert existing.read_text() == "tracked\n"
    code, out, err = cli(capsys, "calibrate", "--out", existing, "--force")
    assert code == 0, err
    assert json.loads(existing.read_text())["schema"] == "epsim-calibration/2"


def test_calibrate_says_how_many_rounds_it_dropped_on_a_busy_machine(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    shares = [[0.0, 0.9, 0.8], [0.5, 0.0, 0.0], [0.6, 0.7, 0.9]]  # 6 of 9 rounds contended, 1 point has none clean
    monkeypatch.setattr("hardware.calibration.run_calibration", lambda *a, **k: fake_calibration(shares))
    code, out, err = cli(capsys, "calibrate", "--out", tmp_path / "c.json")
    assert code == 0, err
    assert "dropped 6 of 9 timing rounds" in out and "1 of 3 points had no clean round" in out


def test_a_calibration_with_too_few_clean_rounds_is_refused(monkeypatch):
    pytest.importorskip("torch")
    from hardware import calibration
    plan = calibration.Plan(dtypes=("fp32",), block_shapes=((64, 96, "test"),), block_points=((4, 2, 16, "uniform"),),
                            permute_points=((96, 64, 2),), gemm_shapes=((64, 128),), gemm_tokens=(1, 16),
                            grouped_points=1, passes=2, warmup=0, reps=1, drift_window_s=1.0, max_block_flop=1e9)
    busy = {"median_s": 1e-4, "samples_s": [1e-4], "others_cpu_share": 0.9, "at": 0.0}
    monkeypatch.setattr(calibration, "time_round", lambda *a, **k: dict(busy))
    with pytest.raises(calibration.TooContended, match="dropped 10 of 10 timing rounds"):
        calibration.run_calibration("cpu", plan=plan)


# -- 8. Ctrl-C ------------------------------------------------------------------------------------------
def test_ctrl_c_during_a_run_ends_with_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(scenario, budget=None, save_routing=None, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr("simulator.api.simulate_scenario", interrupted)
    code, out, err = cli(capsys, write_yaml(tmp_path / "t.yaml", TINY), "--out", tmp_path / "out")
    assert (code, err) == (130, "interrupted\n")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_a_sweep_keeps_the_points_already_written(tmp_path, capsys, monkeypatch):
    from simulator.studies import sweep
    real, calls = sweep.run_point, []

    def second_is_interrupted(data):
        calls.append(data)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(data)

    monkeypatch.setattr(sweep, "run_point", second_is_interrupted)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "sweep", write_yaml(tmp_path / "t.yaml", TINY), "--set", "parallel.ep_size=4,8",
                       "--jobs", 1, "--out", out)
    assert code == 130 and err.endswith("interrupted\n") and "Traceback" not in err
    assert len(list((out / "points").glob("*/point.json"))) == 1
    assert not [p for p in out.rglob(".*.tmp")]


def test_sweep_workers_end_quietly_on_ctrl_c():
    import subprocess
    import sys
    code = ("import os, signal, time; from simulator.studies.sweep import exit_quietly_on_interrupt; "
            "exit_quietly_on_interrupt(); os.kill(os.getpid(), signal.SIGINT); time.sleep(5)")
    done = subprocess.run([sys.executable, "-c", code], cwd=run_sim.ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "")



# -- 9. numbers inside physical ranges ------------------------------------------------------------
@pytest.mark.parametrize("section, key, value, interval", [
    ("hardware", "kernel_launch_us", 1e300, "[0, 10000]"),
    ("hardware", "nodes", 100_000, "(0, 16384]"),
    ("hardware", "gpus_per_node", 4096, "(0, 576]"),
    ("hardware", "hbm_tb_per_s", 0.0, "[1e-06, 1000]"),
    ("workload", "seq_len", 10**40, "(0, 16777216]"),
    ("workload", "tokens_per_gpu", 10**9, "(0, 16777216]"),
    ("routing", "zipf_alpha", 30.0, "(0, 4]"),
    ("model", "hidden_size", 10**8, "(0, 4194304]"),
    ("model", "num_experts", 1 << 21, "(0, 1048576]"),
    ("model", "num_layers", 10**6, "(0, 1024]"),
])
def test_a_number_outside_its_physical_range_is_rejected_naming_key_value_and_range(section, key, value, interval):
    err = rejects(tiny_dict(**{section: {key: value}}), f"{section}.{key}", repr(value), f"range {interval}")
    assert (err.key, err.value) == (f"{section}.{key}", value)


def test_a_non_finite_number_is_rejected_naming_the_key():
    rejects(tiny_dict(hardware={"ib_latency_us": float("inf")}), "hardware.ib_latency_us", "finite")


def test_expert_ids_past_the_int16_range_do_not_overflow():
    import numpy as np

    from simulator.workload.routing import Router
    num_experts = 40_000
    for distribution, max_nodes in (("uniform", None), ("zipf", 2)):
        router = Router(num_experts, 4, distribution, 1.0, np.arange(num_experts) // 5000, max_nodes,
                        np.random.default_rng(0))
        ids = np.sort(router.route(20_000, np.random.default_rng(1)), axis=1)
        assert ids.min() >= 0 and ids.max() >= 32_768 and ids.max() < num_experts
        assert (ids[:, 1:] != ids[:, :-1]).all()  # k distinct experts per token


# -- 10. the solvers cannot spin ------------------------------------------------------------------
def test_fair_share_of_valid_inputs_takes_at_most_one_level_per_flow_half_its_bound():
    import numpy as np

    from simulator.engine.fairshare import level_bound, max_min_levels
    rng = np.random.default_rng(0)
    for _ in range(200):  # random (flow, port, weight) problems, every flow on 1-4 ports
        num_flows, num_ports = int(rng.integers(1, 40)), int(rng.integers(1, 20))
        per_flow = rng.integers(1, 5, num_flows)
        flow = np.repeat(np.arange(num_flows), per_flow)
        port = rng.integers(0, num_ports, len(flow))
        rates, levels = max_min_levels(flow, port, rng.random(len(flow)) + 0.01, rng.random(num_ports) * 10 + 0.1,
                                       num_flows)
        assert levels <= num_flows and 2 * levels <= level_bound(num_flows)
        assert (rates > 0).all() and np.isfinite(rates).all()


def test_a_nan_capacity_raises_instead_of_spinning():
    import numpy as np

    from simulator.engine.fairshare import SolverStalled, max_min_rates
    with pytest.raises(SolverStalled, match="levels for 2 flows"):
        max_min_rates(np.array([0, 1]), np.array([0, 0]), np.array([1.0, 1.0]), np.array([np.nan]), 2)


def test_the_network_of_valid_runs_stays_at_half_its_update_bound():
    from simulator.engine.run import Run
    for data in (tiny_dict(), tiny_dict(hardware={"nodes": 4}, parallel={"ep_size": 16}, routing={"distribution": "zipf"},
                                        network={"all_to_all": "direct"}),
                 tiny_dict(model={"num_layers": 4}, parallel={"ep_size": 4, "pp_size": 2}, workload={"micro_batches": 4},
                           network={"all_to_all": "low_latency", "comm_sms": 0})):
        run = Run(build_scenario(data))
        run.simulate()
        # every update admits a batch or finishes a flow: at most batches + flows, half the bound
        assert 0 < 2 * run.network.num_updates <= run.network.update_bound


def test_a_clock_too_large_to_advance_raises_naming_the_collective():
    import numpy as np
    import simpy

    from hardware.topology import Topology
    from simulator.engine.fairshare import SolverStalled
    from simulator.engine.network import FlowBatch, Network
    env = simpy.Environment(initial_time=1e300)  # now + a transfer's microseconds == now
    net = Network(env, Topology(build_scenario(TINY).cluster))
    net.add(FlowBatch(np.array([0]), np.array([0]), np.array([1e3]), 1, lambda owners, t: None))
    with pytest.raises(SolverStalled, match=r"rate updates at t = 1e\+300 s .* in flight: 1 collective"):
        env.run()


def test_a_stalled_solver_in_a_run_names_the_collective(monkeypatch):
    import numpy as np

    from simulator import api
    from simulator.engine import network
    from simulator.engine.fairshare import SolverStalled
    monkeypatch.setattr(network.Network, "__init__", _nan_capacity(network.Network.__init__, np))
    with pytest.raises(SolverStalled, match=r"internal error in 'rel-tiny': .*collectives: dispatch \(group 0, index 0"):
        api.simulate_scenario(build_scenario(TINY))


def _nan_capacity(init, np):
    def patched(self, env, topology):
        init(self, env, topology)
        self.capacity = np.full_like(self.capacity, np.nan)  # what a NaN slipping past validation would do
    return patched


# -- 11. a field a calibration sets is not overridden silently --------------------------------------
def test_a_peak_override_on_a_calibrated_preset_is_rejected_naming_the_rule():
    err = rejects(tiny_dict(hardware={"preset": "h100-sxm", "peak_bf16_tflops": 100.0}),
                  "hardware.peak_bf16_tflops", "h100-sxm.json", "change MFU but not the step", "hardware.calibration: null")
    assert err.value == 100.0
    rejects(tiny_dict(hardware={"preset": "h800", "peak_fp8_tflops": 3000.0}), "hardware.peak_fp8_tflops")


@pytest.mark.parametrize("key, value", [("matmul_efficiency", 0.5), ("memory_efficiency", 0.5),
                                        ("hbm_tb_per_s", 8.0)])
def test_a_rate_override_a_calibration_replaces_is_rejected_instead_of_ignored(key, value):
    """Under h100-sxm's published calibration these changed nothing at all: its file's rates time
    every kernel."""
    err = rejects(tiny_dict(hardware={"preset": "h100-sxm", key: value}), f"hardware.{key}", "h100-sxm.json",
                  "its rates replace this one", "hardware.calibration: null")
    assert err.value == value
    build_scenario(tiny_dict(hardware={"preset": "h100-sxm", "calibration": None, key: value}))


def test_without_the_calibration_a_peak_override_moves_the_step_and_mfu_together():
    from simulator.api import run_scenario
    slow, fast = (run_scenario(build_scenario(tiny_dict(hardware={"preset": "h100-sxm", "calibration": None,
                                                                  "peak_bf16_tflops": peak})))[0]
                  for peak in (100.0, 989.0))
    assert slow["step_time_s"] > 1.05 * fast["step_time_s"]  # the GEMMs run at the given peak
    assert 0 < slow["mfu"] <= 1 and 0 < fast["mfu"] <= 1
    # the same model FLOPs over step x peak: MFU moves with the step, not against it
    assert slow["mfu"] * slow["step_time_s"] * 100 == pytest.approx(fast["mfu"] * fast["step_time_s"] * 989)


def test_expert_tp_auto_with_an_ep_group_past_the_stage_is_a_scenario_error_not_a_crash():
    # found by benchmarks/fuzz.py: auto's memory rule built the rank layout before the layout was checked
    rejects(tiny_dict(hardware={"nodes": 4, "gpus_per_node": 4}, parallel={"ep_size": 16, "pp_size": 2,
                                                                         "expert_tp_size": "auto"},
                      model={"num_layers": 4}), "parallel.ep_size", "parallel.pp_size=2 must divide the 16 GPUs")
    rejects(tiny_dict(hardware={"nodes": 1, "gpus_per_node": 4}, parallel={"ep_size": 1, "pp_size": 4, "tp_size": 2,
                                                                         "expert_tp_size": "auto"},
                      model={"num_layers": 4}), "parallel.tp_size", "parallel.pp_size=4 must divide the 4 GPUs")


def test_tp_groups_that_do_not_fit_a_pipeline_stage_are_a_scenario_error_not_a_crash():
    # found by CI's fuzz test: 2 GPUs at tp 2 x pp 2 built the rank layout and raised a bare ValueError
    rejects(tiny_dict(hardware={"nodes": 1, "gpus_per_node": 2}, parallel={"ep_size": 1, "tp_size": 2, "pp_size": 2},
                      model={"num_layers": 4}), "parallel.tp_size", "a pipeline stage (1 GPUs) holds whole TP groups")


def test_a_step_whose_tokens_reach_no_expert_reports_a_finite_load_imbalance():
    # found by benchmarks/fuzz.py: threshold 1 keeps no expert, every GPU receives nothing, max/mean was 0/0
    import json

    from simulator.api import run_scenario
    summary = run_scenario(build_scenario(tiny_dict(routing={"distribution": "uniform", "seed": 0, "threshold": 1.0})))[0]
    assert summary["load_imbalance"] == 1.0
    json.dumps(summary, allow_nan=False)


def test_a_law_with_too_few_experts_to_draw_is_refused_instead_of_hanging():
    # Dirichlet(1e-6) puts all the mass on one expert: top 2 distinct experts can never be drawn, and
    # the sampler's loop (compiled, so Ctrl-C could not stop it) would spin forever
    from simulator.api import run_scenario
    s = build_scenario(tiny_dict(routing={"seed": 0, "distribution": "dirichlet", "dirichlet_concentration": 1e-6}))
    with pytest.raises(ScenarioError) as info:
        run_scenario(s)
    assert info.value.key == "routing.dirichlet_concentration" and "cannot be sampled" in str(info.value)


def test_a_token_whose_nodes_hold_too_few_experts_with_mass_stops_the_sampler_with_a_reason():
    # one node holds 3 experts with mass, the other 8; limited to 1 node, a token that starts on the
    # first can never find its 4: the per-token draw cap ends the loop and says why
    from simulator.workload.routing import Router, UnsampleableLaw
    scale = np.r_[np.ones(3), np.zeros(5), np.ones(8)]
    router = Router(16, 4, "uniform", 1.0, np.arange(16) // 8, 1, np.random.default_rng(0), gate_scale=scale)
    with pytest.raises(UnsampleableLaw, match="max_nodes_per_token=1"):
        router.route(1000, np.random.default_rng(1))
    scale[3] = 1.0  # 4 experts with mass on the first node: every token finds its 4
    ok = Router(16, 4, "uniform", 1.0, np.arange(16) // 8, 1, np.random.default_rng(0), gate_scale=scale)
    drawn = np.sort(ok.route(1000, np.random.default_rng(1)), axis=1)
    assert (drawn[:, 1:] > drawn[:, :-1]).all() and np.isin(drawn, np.nonzero(scale)[0]).all()
