"""Sweeps: a grid of scenario overrides run as independent, resumable points.

`--set key=a,b,c` makes an axis; several axes form their product. Each point is keyed by a hash of
its resolved scenario (every preset field filled in), its calibration file's bytes and the epsim
version, so a rerun of the same sweep skips the points whose results are on disk and a sweep
killed half-way loses nothing.
Points run in worker processes (`local`) or on a Ray cluster (`ray`, an optional extra; connection
and shipping in ray_cluster.py); results come back to the caller's `on_done` one by one, as they
finish, and the caller writes them.

A point whose scenario is rejected (ScenarioError: e.g. EP 8 of a model that does not fit memory)
is `invalid`: the rejection is a property of the scenario, so resuming does not retry it. A point
whose simulation raised anything else is `failed` and is retried on resume.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import yaml

from simulator import __version__
from simulator.api import run_scenario
from simulator.errors import ScenarioError
from simulator.scenario import apply_overrides, build_scenario, parse_override, read_scenario_file
from simulator.studies import ray_cluster
from simulator.studies.ray_cluster import RAY_HINT, require_ray  # noqa: F401 - RAY_HINT: the hint's one home
from simulator.studies.sweep_store import (
    POINT_FILE,
    flatten,
    point_json_record,
    read_point_summary,
    sweep_table,
    write_point,
    write_sweep_table,
)

OK, INVALID, FAILED = "ok", "invalid", "failed"
POINTS_DIR = "points"


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple


@dataclass(frozen=True)
class Point:
    index: int  # position in the grid (row-major over the axes, first axis slowest)
    coords: tuple  # ((axis key, value), ...)
    data: dict  # the YAML-level scenario with every override applied
    key: str  # sha256 of the resolved scenario and the epsim version
    resolved: dict | None  # None when the scenario is invalid
    error: str | None  # the ScenarioError text of an invalid scenario

    @property
    def label(self) -> str:
        return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.coords) or "base"

    @property
    def folder(self) -> str:
        slug = "_".join(f"{k.rsplit('.', 1)[-1]}-{v}" for k, v in self.coords) or "base"
        return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '-', slug)}-{self.key[:12]}"


# -- grid -----------------------------------------------------------------------------------------
def split_values(raw: str) -> list[str]:
    """'8,16,32' -> ['8', '16', '32']; a bracketed or braced YAML value stays one value."""
    raw = raw.strip()
    if raw[:1] in "[{" or "," not in raw:
        return [raw]
    return [part.strip() for part in raw.split(",")]


def parse_sweep_sets(texts: list[str]) -> tuple[list[tuple[str, object]], list[Axis]]:
    """--set arguments -> (fixed overrides, axes). A comma list is an axis."""
    fixed, axes, seen = [], [], set()
    for text in texts:
        if "=" not in text:
            raise ScenarioError("--set", text, "must be KEY=VALUE with a dotted scenario key")
        key, raw = (part.strip() for part in text.split("=", 1))
        if key in seen:
            raise ScenarioError("--set", text, f"{key} is set twice; give one comma list per key")
        seen.add(key)
        parts = split_values(raw)
        values = [parse_override(f"{key}={part}")[1] for part in parts]
        if any(p == "" for p in parts):
            raise ScenarioError(key, raw, "an empty value in a comma list")
        if len(values) == 1:
            fixed.append((key, values[0]))
        else:
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise ScenarioError(key, raw, "a value repeats in the comma list")
            axes.append(Axis(key, tuple(values)))
    return fixed, axes


def scenario_key(resolved: dict, calibration: Path | None = None) -> str:
    """sha256 of the resolved scenario (preset values included), the epsim version and the bytes of
    the calibration file and of a routing trace: a file recalibrated or re-recorded under the same
    name must not reuse old points."""
    doc = {"scenario": resolved, "epsim_version": __version__}
    if calibration is not None:
        doc["calibration_sha256"] = hashlib.sha256(Path(calibration).read_bytes()).hexdigest()
    trace = (resolved.get("routing") or {}).get("trace")
    if trace and (resolved.get("routing") or {}).get("distribution") == "trace":
        doc["trace_sha256"] = hashlib.sha256(Path(trace).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def expand_grid(path: str | Path, fixed: list[tuple[str, object]], axes: list[Axis], zipped: bool = False) -> list[Point]:
    """Every point of the grid (the product of the axes, or with `zipped` their i-th values
    together, e.g. ep_size and nodes scaled as one), resolved. Raises ScenarioError only for a
    bad base file or unequal zipped axes."""
    base = read_scenario_file(path)
    if zipped and len({len(a.values) for a in axes}) > 1:
        lengths = ", ".join(f"{a.key}: {len(a.values)}" for a in axes)
        raise ScenarioError("--zip", lengths, "zipped axes need the same number of values")
    combos = zip(*(a.values for a in axes)) if zipped else itertools.product(*(a.values for a in axes))
    return make_points(base, fixed, [tuple((a.key, v) for a, v in zip(axes, combo)) for combo in combos])


def make_points(base: dict, fixed: list[tuple[str, object]], coords_list: list[tuple]) -> list[Point]:
    """A point per coords (((key, value), ...)) over the YAML-level `base`, resolved or with its
    ScenarioError (a point the rules reject)."""
    points = []
    for index, coords in enumerate(coords_list):
        data = apply_overrides(base, [*fixed, *coords])
        try:
            scenario = build_scenario(data)
            resolved, error = scenario.resolved, None
            key = scenario_key(resolved, scenario.calibration_path)
        except ScenarioError as exc:
            resolved, error = None, str(exc)
            key = scenario_key({"unresolved": data})
        points.append(Point(index, coords, data, key, resolved, error))
    return points


# -- one point ------------------------------------------------------------------------------------
def run_point(data: dict) -> dict:
    """Simulate one point in whatever process runs it: {'status', 'summary', 'rows', 'error', 'wall_s'}."""
    t0 = time.perf_counter()
    try:
        summary, rows = run_scenario(build_scenario(data))
        outcome = {"status": OK, "summary": summary, "rows": rows, "error": None}
    except ScenarioError as exc:
        outcome = {"status": INVALID, "summary": None, "rows": None, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken point must not stop the others
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        outcome = {"status": FAILED, "summary": None, "rows": None, "error": tb}
    outcome["wall_s"] = time.perf_counter() - t0
    return outcome


# -- resume ---------------------------------------------------------------------------------------
def point_dir(out_dir: Path, point: Point) -> Path:
    return Path(out_dir) / POINTS_DIR / point.folder


def finished_record(out_dir: Path, point: Point) -> dict | None:
    """The point.json of a point already done (ok or invalid) with this key, else None."""
    path = point_dir(out_dir, point) / POINT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != point.key or record.get("status") not in (OK, INVALID):
        return None
    if record["status"] == OK and not (path.parent / "summary.json").is_file():
        return None
    return record


# -- executors ------------------------------------------------------------------------------------
OnDone = Callable[[Point, dict], None]


def exit_quietly_on_interrupt() -> None:
    """In a worker: Ctrl-C reaches the whole process group; the worker just ends (no traceback of
    its own), the main process reports the interrupt once and keeps the points already written."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))


def run_local(points: list[Point], on_done: OnDone, jobs: int) -> None:
    """jobs == 1 runs in this process; otherwise a pool of `jobs` worker processes."""
    if jobs == 1:
        for p in points:
            on_done(p, run_point(p.data))
        return
    # forkserver: workers start clean, never forked from a process running a progress thread
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=exit_quietly_on_interrupt) as pool:
        pending = {pool.submit(run_point, p.data): p for p in points}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_done(pending.pop(fut), fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def run_point_on_ray(data: dict) -> dict:
    """run_point on a Ray worker, which also says on which node it ran."""
    import ray

    outcome = run_point(data)
    outcome["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return outcome


def ray_outcome(ray, ref, point: Point) -> dict:
    """A finished task's outcome. Ray's own failures (a worker that died, a package a node lacks)
    and a point valid here but rejected there (a file the scenario names is missing on that node)
    are `failed`, retried on resume: they say nothing about the scenario."""
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return {"status": FAILED, "summary": None, "rows": None, "wall_s": None,
                "error": f"on the Ray cluster: {type(exc).__name__}: {lines[-1] if lines else ''}"}
    if outcome["status"] == INVALID and point.error is None:
        outcome = {**outcome, "status": FAILED, "error": f"rejected on Ray node {outcome.get('ray_node_id')}, "
                                                         f"valid here: {outcome['error']}"}
    return outcome


def run_ray(points: list[Point], on_done: OnDone, address: str | None) -> None:
    """One Ray task per point, spread over the nodes (independent, CPU-bound, small in and out).
    Connects (ray_cluster.connect) unless this process already is; a connection made here is
    closed at the end."""
    ray = require_ray()
    connected_here = not ray.is_initialized()
    ray_cluster.connect(address)
    try:
        remote = ray.remote(run_point_on_ray).options(scheduling_strategy="SPREAD")
        pending = {remote.remote(p.data): p for p in points}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    point = pending.pop(ref)
                    on_done(point, ray_outcome(ray, ref, point))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if connected_here:
            ray.shutdown()


EXECUTORS = {"local": "worker processes on this machine (--jobs N)", "ray": "a Ray cluster (--address)"}


def check_executor(name: str, jobs: int) -> None:
    if name not in EXECUTORS:
        raise ScenarioError("--executor", name, f"valid executors: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise ScenarioError("--jobs", jobs, "must be >= 1")
    if name == "ray":
        require_ray()


def run_points(points: list[Point], on_done: OnDone, executor: str = "local", jobs: int = 1,
               address: str | None = None) -> None:
    """Run `points`; `on_done(point, outcome)` is called in this process as each one finishes."""
    check_executor(executor, jobs)
    if executor == "ray":
        run_ray(points, on_done, address)
    else:
        run_local(points, on_done, min(jobs, max(len(points), 1)))


# -- a whole sweep, written as it goes ------------------------------------------------------------
@dataclass
class SweepResult:
    table: pd.DataFrame  # one row per point, grid order
    counts: dict[str, int]  # status -> points simulated in this call
    num_skipped: int  # points already done on disk (not simulated again)
    table_files: dict[str, Path]


def run_sweep(points: list[Point], out_dir: Path, executor: str = "local", jobs: int = 1,
              address: str | None = None, on_start: Callable[[int, int], None] | None = None,
              on_point: OnDone | None = None) -> SweepResult:
    """Run the points of a grid that `out_dir` does not already hold, writing each point's folder
    and the combined table the moment it finishes, so a sweep killed half-way loses nothing and
    a rerun resumes. on_start(num_done_before, num_to_run) is called once before any point runs;
    on_point(point, outcome) after each point is written."""
    check_executor(executor, jobs)
    out_dir = Path(out_dir)
    rows: dict[int, dict] = {}
    todo = []
    for p in points:
        record = finished_record(out_dir, p)
        if record is None:
            todo.append(p)
        else:  # done before: keep its row, do not simulate it again
            summary = read_point_summary(point_dir(out_dir, p))
            rows[p.index] = flatten(point_json_record(p, record["status"], record["error"], record.get("wall_s")),
                                    summary)
    if on_start:
        on_start(len(points) - len(todo), len(todo))
    counts = {OK: 0, INVALID: 0, FAILED: 0}

    def on_done(point: Point, outcome: dict) -> None:
        record = point_json_record(point, outcome["status"], outcome["error"], outcome["wall_s"],
                                   outcome.get("ray_node_id"))
        resolved = dump_yaml(point.resolved) if point.resolved else None
        write_point(point_dir(out_dir, point), record, outcome["summary"], outcome["rows"], resolved)
        rows[point.index] = flatten(record, outcome["summary"])
        write_sweep_table(out_dir, sweep_table(list(rows.values())))
        counts[outcome["status"]] += 1
        if on_point:
            on_point(point, outcome)

    if todo:
        run_points(todo, on_done, executor, jobs, address)
    table = sweep_table(list(rows.values()))
    return SweepResult(table, counts, len(points) - len(todo), write_sweep_table(out_dir, table))


def describe_axes(fixed: list[tuple[str, object]], axes: list[Axis], zipped: bool = False) -> dict:
    return {"fixed": {k: v for k, v in fixed}, "axes": {a.key: list(a.values) for a in axes},
            "combine": "zipped (i-th values together)" if zipped else "product (every combination)"}


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
