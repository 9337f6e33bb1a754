"""Hostile input and interrupted runs (issue 16): bounded YAML, validated calibration files, safe
output paths and messages, file sets that a kill leaves whole, deterministic sweep tables, a
calibrate that never replaces a file unasked, and Ctrl-C without a traceback."""
import json
from pathlib import Path

import pytest
import yaml

import run_sim
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
