"""Sweeps: grid expansion, resolved-scenario keys, resume, failures recorded, the files left behind."""
import json
import shutil
import sys

import pandas as pd
import pytest

from simulator.errors import ScenarioError
from simulator.studies import ray_cluster, sweep
from tests.test_cli import TINY, run_sim, write_scenario


# -- grid -----------------------------------------------------------------------------------------
def test_a_comma_list_is_an_axis_and_a_single_value_stays_fixed():
    fixed, axes = sweep.parse_sweep_sets(["parallel.ep_size=4,8", "routing.zipf_alpha=1.2"])
    assert fixed == [("routing.zipf_alpha", 1.2)]
    assert axes == [sweep.Axis("parallel.ep_size", (4, 8))]


def test_a_bracketed_yaml_value_is_one_value_not_an_axis():
    fixed, axes = sweep.parse_sweep_sets(["model.attention={kind: gqa, num_heads: 8}"])
    assert axes == [] and fixed == [("model.attention", {"kind": "gqa", "num_heads": 8})]


@pytest.mark.parametrize("sets, names", [
    (["parallel.ep_size=4,8", "parallel.ep_size=2,4"], ["parallel.ep_size", "set twice"]),
    (["parallel.ep_size=4,4"], ["parallel.ep_size", "repeats"]),
    (["parallel.ep_size=4,,8"], ["parallel.ep_size", "empty value"]),
    (["parallel.ep_size"], ["--set", "KEY=VALUE"]),
])
def test_malformed_sweep_sets_raise_one_error_naming_the_key(sets, names):
    with pytest.raises(ScenarioError) as exc:
        sweep.parse_sweep_sets(sets)
    assert all(name in str(exc.value) for name in names)


def test_two_axes_form_their_product_first_axis_slowest(tmp_path):
    path = write_scenario(tmp_path)
    _, axes = sweep.parse_sweep_sets(["parallel.ep_size=4,8", "routing.seed=0,1,2"])
    points = sweep.expand_grid(path, [], axes)
    assert [tuple(v for _, v in p.coords) for p in points] == [(4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (8, 2)]
    assert len({p.key for p in points}) == 6


def test_zipped_axes_pair_their_values_in_order(tmp_path):
    path = write_scenario(tmp_path)
    _, axes = sweep.parse_sweep_sets(["parallel.ep_size=4,8", "hardware.nodes=1,2"])
    points = sweep.expand_grid(path, [], axes, zipped=True)
    assert [p.label for p in points] == ["ep_size=4 nodes=1", "ep_size=8 nodes=2"]
    _, uneven = sweep.parse_sweep_sets(["parallel.ep_size=4,8", "hardware.nodes=1,2,4"])
    with pytest.raises(ScenarioError, match="--zip"):
        sweep.expand_grid(path, [], uneven, zipped=True)


def test_the_key_is_the_resolved_scenario_not_how_it_was_written(tmp_path):
    """Spelling out a default (routing.seed: 0) resolves to the same scenario, so the same key."""
    plain = write_scenario(tmp_path)
    explicit = write_scenario(tmp_path, {**TINY, "routing": {"seed": 0}}, "explicit.yaml")
    _, axes = sweep.parse_sweep_sets(["parallel.ep_size=4,8"])
    keys = [[p.key for p in sweep.expand_grid(path, [], axes)] for path in (plain, explicit)]
    assert keys[0] == keys[1]
    other = sweep.expand_grid(plain, [("routing.seed", 1)], axes)
    assert not set(keys[0]) & {p.key for p in other}


def test_a_re_recorded_trace_under_the_same_name_gets_a_new_key(tmp_path):
    trace = tmp_path / "trace.csv"
    rows = "step,layer,expert,tokens\n" + "".join(f"0,{layer},{e},{1 + e % 2}\n" for layer in range(2) for e in range(16))
    trace.write_text(rows)
    fixed = [("routing.distribution", "trace"), ("routing.trace", str(trace))]
    _, axes = sweep.parse_sweep_sets(["parallel.ep_size=8"])
    first = sweep.expand_grid(write_scenario(tmp_path), fixed, axes)[0]
    assert first.error is None
    trace.write_text(rows.replace(",1\n", ",3\n"))
    assert sweep.expand_grid(write_scenario(tmp_path), fixed, axes)[0].key != first.key


def test_an_invalid_point_carries_its_scenario_error_and_a_key(tmp_path):
    _, axes = sweep.parse_sweep_sets(["parallel.ep_size=3,8"])
    bad, good = sweep.expand_grid(write_scenario(tmp_path), [], axes)
    assert bad.error and "must divide the 8 GPUs" in bad.error and bad.resolved is None and bad.key
    assert good.error is None and good.resolved["parallel"]["ep_size"] == 8


def test_run_point_records_an_unexpected_exception_as_failed(monkeypatch):
    def broken(_scenario):
        raise RuntimeError("solver diverged")
    monkeypatch.setattr(sweep, "run_scenario", broken)
    outcome = sweep.run_point(TINY)
    assert outcome["status"] == sweep.FAILED and "RuntimeError: solver diverged" in outcome["error"]


def test_ray_executor_without_ray_is_an_input_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, installed or not
    with pytest.raises(ScenarioError, match=r"pip install 'epsim\[ray\]'"):
        sweep.check_executor("ray", 1)


@pytest.mark.parametrize("address, rule", [
    ("bogus", "HOST:PORT"),
    ("head:port", "HOST:PORT"),
    ("head:70000", "HOST:PORT"),
    ("http://head:8265", "dashboard"),
    ("s3://bucket", "not a Ray address"),
])
def test_a_malformed_ray_address_is_an_input_error_listing_the_forms(address, rule):
    with pytest.raises(ScenarioError) as exc:
        ray_cluster.parse_address("--address", address)
    assert str(exc.value).startswith(f"--address = {address!r}") and rule in str(exc.value)


def test_ray_addresses_are_host_and_port_to_check_and_auto_is_left_to_ray():
    assert ray_cluster.parse_address("--address", "10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert ray_cluster.parse_address("--address", "ray://head:10001") == ("head", 10001)
    assert ray_cluster.parse_address("--address", "[::1]:6379") == ("::1", 6379)
    assert ray_cluster.parse_address("--address", "auto") is None


class FakeRayError(Exception):
    pass


class FakeRay:
    """ray.get and ray.exceptions.RayError, enough for sweep.ray_outcome."""
    class exceptions:
        RayError = FakeRayError

    def __init__(self, result):
        self.result = result

    def get(self, ref):
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_a_point_valid_here_but_rejected_on_a_ray_node_is_failed_and_retried_not_invalid(tmp_path):
    _, axes = sweep.parse_sweep_sets(list(SETS[1:]))
    valid, invalid = [p for p in sweep.expand_grid(write_scenario(tmp_path), [], axes) if p.index in (0, 1)]
    rejected = {"status": sweep.INVALID, "summary": None, "rows": None, "error": "routing.trace = 'x': no such file",
                "wall_s": 0.1, "ray_node_id": "n1"}
    outcome = sweep.ray_outcome(FakeRay(rejected), None, valid)
    assert outcome["status"] == sweep.FAILED and "no such file" in outcome["error"] and "n1" in outcome["error"]
    assert sweep.ray_outcome(FakeRay(rejected), None, invalid)["status"] == sweep.INVALID  # rejected here too


def test_a_ray_failure_is_a_failed_point_with_one_line():
    outcome = sweep.ray_outcome(FakeRay(FakeRayError("Traceback ...\n  File x\nModuleNotFoundError: simpy")), None,
                                None)
    assert outcome["status"] == sweep.FAILED
    assert outcome["error"] == "on the Ray cluster: FakeRayError: ModuleNotFoundError: simpy"


# -- the command ----------------------------------------------------------------------------------
SETS = ("--set", "parallel.ep_size=2,3,4,8")  # 3 does not divide 8 GPUs: recorded as invalid


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_scenario(folder)
    proc = run_sim("sweep", path, *SETS, "--jobs", "2", "--out", folder / "out")
    assert proc.returncode == 0, proc.stderr
    return path, folder / "out", proc


def test_sweep_writes_a_folder_per_point_a_table_plots_and_a_report(swept):
    _, out, proc = swept
    points = sorted((out / "points").iterdir())
    assert len(points) == 4
    assert sum((p / "summary.json").is_file() for p in points) == 3
    assert all((p / "point.json").is_file() for p in points)
    for name in ("sweep.csv", "sweep.parquet", "report.md", "report.html"):
        assert (out / name).is_file()
    assert {p.name for p in (out / "plots").iterdir()} == {
        "mfu.png", "step_breakdown.png", "bandwidth.png", "collectives.png", "tokens_per_s.png", "load_imbalance.png",
        "max_link_load.png", "step_time.png"}
    report = (out / "report.md").read_text()
    assert "cli-tiny" in report and "plots/mfu.png" in report and "must divide the 8 GPUs" in report
    assert "4 points: 3 simulated, 1 invalid" in proc.stdout


def test_sweep_records_the_invalid_point_with_its_error_and_runs_the_others(swept):
    _, out, proc = swept
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["parallel.ep_size"]) == [2, 3, 4, 8]
    assert list(table["status"]) == ["ok", "invalid", "ok", "ok"]
    assert "parallel.ep_size = 3: must divide the 8 GPUs" in table.loc[1, "error"]
    assert "ep_size=3: invalid" in proc.stderr


def test_csv_and_parquet_tables_hold_the_same_rows(swept):
    _, out, _ = swept
    csv, parquet = pd.read_csv(out / "sweep.csv"), pd.read_parquet(out / "sweep.parquet")
    assert list(csv.columns) == list(parquet.columns)
    assert csv["mfu"].tolist() == pytest.approx(parquet["mfu"].tolist(), nan_ok=True)


def test_a_point_summary_is_byte_identical_to_a_plain_run_of_that_scenario(swept, tmp_path):
    path, out, _ = swept
    proc = run_sim(path, "--set", "parallel.ep_size=4", "--no-trace", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    (point,) = (out / "points").glob("ep_size-4-*")
    assert (point / "summary.json").read_bytes() == (tmp_path / "run" / "summary.json").read_bytes()


def test_rerunning_a_sweep_skips_every_point_already_done(swept, tmp_path):
    path, out, _ = swept
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.glob("points/*/*.json")}
    proc = run_sim("sweep", path, *SETS, "--jobs", "1", "--out", copy)
    assert proc.returncode == 0, proc.stderr
    assert "4 already done, 0 to run" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in copy.glob("points/*/*.json")} == before


def test_a_killed_sweep_resumes_only_the_points_it_had_not_finished(swept, tmp_path):
    path, out, _ = swept
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (lost,) = (copy / "points").glob("ep_size-8-*")
    shutil.rmtree(lost)  # as if killed before the last point finished
    (failed,) = (copy / "points").glob("ep_size-2-*")
    record = json.loads((failed / "point.json").read_text())
    (failed / "point.json").write_text(json.dumps({**record, "status": "failed"}))  # failures are retried
    proc = run_sim("sweep", path, *SETS, "--jobs", "1", "--out", copy)
    assert proc.returncode == 0, proc.stderr
    assert "2 already done, 2 to run" in proc.stderr
    table = pd.read_csv(copy / "sweep.csv")
    assert list(table["status"]) == ["ok", "invalid", "ok", "ok"]


def test_a_sweep_whose_every_point_is_rejected_exits_2_and_writes_nothing(tmp_path):
    proc = run_sim("sweep", write_scenario(tmp_path), "--set", "parallel.ep_sise=4,8", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "parallel.ep_sise" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_with_ray_executor_and_no_ray_exits_2_saying_how_to_install_it(tmp_path):
    try:
        import ray  # noqa: F401
        pytest.skip("ray is installed")
    except ImportError:
        pass
    proc = run_sim("sweep", write_scenario(tmp_path), *SETS, "--executor", "ray", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pip install 'epsim[ray]'" in proc.stderr
    assert not (tmp_path / "out").exists()


# -- resume, in process -----------------------------------------------------------------------------
class Killed(Exception):
    pass


def test_run_sweep_writes_each_point_and_a_rerun_resumes_only_what_is_missing(tmp_path):
    _, axes = sweep.parse_sweep_sets(["routing.seed=0,1,2"])
    points = sweep.expand_grid(write_scenario(tmp_path), [], axes)
    out = tmp_path / "out"
    ran = []

    def kill_after_first(point, outcome):
        ran.append(point.index)
        raise Killed  # the process dies right after the first point was written

    with pytest.raises(Killed):
        sweep.run_sweep(points, out, on_point=kill_after_first)
    assert ran == [0]
    assert sweep.finished_record(out, points[0]) is not None
    assert sweep.finished_record(out, points[1]) is None

    starts = []
    result = sweep.run_sweep(points, out, on_start=lambda done, todo: starts.append((done, todo)),
                             on_point=lambda point, outcome: ran.append(point.index))
    assert starts == [(1, 2)] and ran == [0, 1, 2]
    assert result.counts == {"ok": 2, "invalid": 0, "failed": 0} and result.num_skipped == 1
    assert result.table["routing.seed"].tolist() == [0, 1, 2]
    assert (result.table["status"] == "ok").all()
    assert pd.read_csv(result.table_files["table_csv"])["step_time_s"].tolist() == pytest.approx(
        result.table["step_time_s"].tolist())

    again = sweep.run_sweep(points, out)  # everything on disk: nothing simulated
    assert again.counts == {"ok": 0, "invalid": 0, "failed": 0} and again.num_skipped == 3
    assert again.table.drop(columns=["wall_s"], errors="ignore").equals(
        result.table.drop(columns=["wall_s"], errors="ignore"))


def test_the_html_report_escapes_the_users_text(tmp_path):
    import pandas as pd

    from reports.report import write_report

    table = pd.DataFrame([{"index": 0, "label": "ep_size=8", "status": "ok", "parallel.ep_size": 8, "error": None,
                           "step_time_s": 0.1, "mfu": 0.5},
                          {"index": 1, "label": "<b>x</b>", "status": "invalid", "parallel.ep_size": 3,
                           "error": "<script>alert(1)</script>", "step_time_s": None, "mfu": None}])
    paths = write_report(tmp_path, "<i>name</i>", "a&b.yaml", "name: <i>name</i>\n",
                         {"axes": {"parallel.ep_size": [8, 3]}, "fixed": {}, "combine": "product"}, table,
                         ["parallel.ep_size"], {})
    page = paths["report_html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<i>name</i>" not in page and "&lt;i&gt;name&lt;/i&gt;" in page and "a&amp;b.yaml" in page
    assert page.count("<tr>") == 3  # the header and both points
