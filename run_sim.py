#!/usr/bin/env python3
"""epsim command line: a thin layer over importable functions. One handler per command."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_SCENARIO = ROOT / "scenarios" / "default.yaml"
RUNS_DIR = Path("runs")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def default_out(name: str) -> Path:
    """runs/<name>, the name made one plain folder name: no separators, no leading dot, at most 100
    characters, so `name: ../../x` or an absolute name cannot write outside runs/."""
    from simulator.results import run_folder_name

    return RUNS_DIR / run_folder_name(name, [])


def add_scenario_args(p: argparse.ArgumentParser, scenario_required: bool) -> None:
    p.add_argument("scenario", nargs=None if scenario_required else "?", default=None,
                   help="scenario YAML" + ("" if scenario_required else " (default: scenarios/default.yaml)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted scenario key with a YAML value, e.g. --set parallel.ep_size=32")
    p.add_argument("--out", default=None, help="output folder (default: runs/<scenario name>/)")
    p.add_argument("--model-config", default=None, metavar="PATH",
                   help="a Hugging Face config.json (or a shipped one's name) as the model, in place of model.preset")
    add_budget_args(p)


def model_config_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """--model-config PATH is --set model.preset=null --set model.hf_config=PATH (without YAML quoting)."""
    return [("model.preset", None), ("model.hf_config", args.model_config)] if args.model_config else []


def add_budget_args(p: argparse.ArgumentParser) -> None:
    from simulator.scenario.budget import DEFAULT_MAX_MEMORY_GB, DEFAULT_MAX_MINUTES

    p.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES, metavar="M",
                   help=f"refuse a run estimated past M minutes on this machine (default {DEFAULT_MAX_MINUTES:g}; inf: off)")
    p.add_argument("--max-memory-gb", type=float, default=DEFAULT_MAX_MEMORY_GB, metavar="G",
                   help=f"refuse a run estimated past G GiB of memory (default {DEFAULT_MAX_MEMORY_GB:g}; inf: off)")


def budget_of(args: argparse.Namespace):
    """The run budget from --max-minutes / --max-memory-gb (ScenarioError unless both are > 0)."""
    from simulator.errors import ScenarioError
    from simulator.scenario.budget import Budget

    for flag, value in (("--max-minutes", args.max_minutes), ("--max-memory-gb", args.max_memory_gb)):
        if not value > 0:  # NaN too
            raise ScenarioError(flag, value, "must be > 0 (inf turns the limit off)")
    return Budget(max_memory_gb=args.max_memory_gb, max_minutes=args.max_minutes)


# -- run ------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from reports.table import print_summary
    from reports.trace import DEFAULT_EVENT_LIMIT, estimate_slices, trace_text
    from simulator.api import simulate_scenario
    from simulator.errors import ScenarioError
    from simulator.results import other_run_in, run_folder_name, scenario_texts, write_run_files
    from simulator.scenario import apply_overrides, build_scenario, parse_override, read_scenario_file
    from simulator.scenario.budget import check_budget

    try:
        overrides = model_config_overrides(args) + [parse_override(o) for o in args.overrides]
        data = apply_overrides(read_scenario_file(args.scenario or DEFAULT_SCENARIO), overrides)
        scenario = build_scenario(data)
        check_budget(scenario, budget_of(args))  # before any work: a run that cannot finish is refused
    except ScenarioError as exc:
        return fail(str(exc))
    if args.trace_gpus < 1:
        return fail(f"--trace-gpus = {args.trace_gpus}: must be >= 1")
    out = Path(args.out) if args.out else RUNS_DIR / run_folder_name(scenario.name, overrides)
    if out.exists() and not out.is_dir():
        return fail(f"--out = {str(out)!r}: must be a folder, not an existing file")
    texts = scenario_texts(data, scenario.resolved)
    taken = None if args.force else other_run_in(out, texts["scenario.resolved.yaml"])
    if taken:
        return fail(f"--out = {str(out)!r}: {taken}; rule: a run never silently replaces another; "
                    f"choose another --out or pass --force to replace it")
    routing = None
    if args.save_routing is not None:  # no path: OUT/routing.npz
        routing = Path(args.save_routing) if args.save_routing else out / "routing.npz"
        if routing.suffix != ".npz":
            return fail(f"--save-routing = {str(routing)!r}: writes an NPZ trace, so the name must end in .npz")
        try:
            routing.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return fail(f"--save-routing = {str(routing)!r}: cannot create its folder ({exc.strerror})")
    try:
        with run_progress(scenario) as progress:
            summary, rows, result = simulate_scenario(scenario, save_routing=routing, progress=progress)
    except ScenarioError as exc:
        return fail(str(exc))
    num_slices = estimate_slices(result, args.trace_gpus)
    # --trace forces it, --no-trace skips it; by default only traces under the size limit
    trace = (trace_text(result, args.trace_gpus)
             if args.trace or (args.trace is None and num_slices <= DEFAULT_EVENT_LIMIT) else None)
    try:
        files = write_run_files(out, summary, rows, trace, result.expert_load_rows, texts)  # one set: an old trace.json goes with the old summary
        if trace is None and args.trace is None:
            files["trace"] = (f"skipped: {num_slices:,} slices > {DEFAULT_EVENT_LIMIT:,} "
                              f"(--trace forces it, --trace-gpus N samples fewer GPUs)")
    except OSError as exc:
        return fail(f"--out = {str(out)!r}: cannot write the run files there ({exc.strerror})")
    if routing is not None:
        files["routing"] = str(routing)
    print_summary(summary, files)
    return 0


PROGRESS_MIN_EVENTS = 500_000  # runs estimated shorter than this (a few seconds) show no progress


@contextlib.contextmanager
def run_progress(scenario, force: bool | None = None):
    """A progress bar on stderr over the simulated events (the budget's estimate as the total) for a
    long run on a terminal; None (no bar) when stderr is piped or the run is short. force: show or
    hide it regardless of the terminal (tests)."""
    from simulator.scenario.budget import estimate

    total = estimate(scenario).num_events
    show = sys.stderr.isatty() if force is None else force
    if not show or (force is None and total < PROGRESS_MIN_EVENTS):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, markup=False, force_terminal=force)
    columns = (TextColumn("simulating {task.fields[name]}", markup=False), BarColumn(),
               TextColumn("{task.completed:,.0f} of ~{task.total:,.0f} events"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("simulate", total=total, name=scenario.name)
        yield lambda n: bar.advance(task, n)


# -- sweep ----------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the grid, writing each point the moment it finishes; then plots and the report."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reports.plots import scaling_plots
    from reports.report import write_report
    from simulator.errors import ScenarioError
    from simulator.scenario import build_scenario, read_scenario_file
    from simulator.scenario.budget import check_budget
    from simulator.studies import ray_cluster, sweep

    t0 = time.perf_counter()
    try:
        budget = budget_of(args)
        fixed, axes = sweep.parse_sweep_sets(args.overrides)
        fixed = model_config_overrides(args) + fixed
        if not axes:
            raise ScenarioError("--set", " ".join(args.overrides) or None,
                                "a sweep needs at least one axis: --set KEY=V1,V2,...")
        sweep.check_executor(args.executor, args.jobs)
        points = sweep.expand_grid(args.scenario, fixed, axes, args.zip)
        if all(p.error for p in points):  # nothing to simulate: a plain input error (a typo'd key)
            build_scenario(points[0].data)
        base_yaml = sweep.dump_yaml(read_scenario_file(args.scenario))
    except ScenarioError as exc:
        return fail(str(exc))
    for point in points:  # every point within the budget (each one's own; jobs run side by side)
        if not point.error:
            try:
                check_budget(build_scenario(point.data), budget)
            except ScenarioError as exc:
                return fail(f"sweep point {point.label}: {exc}")
    name = next((p.data["name"] for p in points if isinstance(p.data.get("name"), str)), Path(args.scenario).stem)
    out = Path(args.out) if args.out else default_out(name)
    if out.exists() and not out.is_dir():
        return fail(f"--out = {str(out)!r}: must be a folder, not an existing file")
    if args.executor == "ray" and any(sweep.finished_record(out, p) is None for p in points):
        try:  # before the progress bar: a cluster that is not there is one line, within 30 s
            ray_cluster.connect(args.address)
        except ScenarioError as exc:
            return fail(str(exc))

    where = f"ray {args.address or ''}".strip() if args.executor == "ray" else f"local, jobs {args.jobs}"
    axis_keys = [a.key for a in axes]
    console = Console(stderr=True, markup=False)  # names and values are the user's text, not markup
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("simulating", total=None)

        def on_start(num_done: int, num_todo: int) -> None:
            console.print(f"sweep {name}: {len(points)} points, {num_done} already done, "
                          f"{num_todo} to run ({where}) -> {out}")
            progress.update(task, total=num_todo)

        def on_point(point, outcome: dict) -> None:
            if outcome["error"]:
                console.print(f"  {point.label}: {outcome['status']}: {outcome['error']}", soft_wrap=True,
                              highlight=False)
            progress.advance(task)

        try:
            result = sweep.run_sweep(points, out, args.executor, args.jobs, args.address, on_start, on_point)
        except ScenarioError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"--out = {str(out)!r}: cannot write the sweep there ({exc.strerror}: {exc.filename})")
    table, files = result.table, dict(result.table_files)
    try:
        # zipped axes move together: one x axis naming them all, not a line per value
        plots = scaling_plots(table, axis_keys, out / "plots", name, zipped=args.zip)
        files.update(write_report(out, name, str(args.scenario), base_yaml,
                                  sweep.describe_axes(fixed, axes, args.zip), table, axis_keys, plots))
    except OSError as exc:
        return fail(f"--out = {str(out)!r}: cannot write the report there ({exc.strerror}: {exc.filename})")
    _print_sweep(table, axis_keys, files, plots, result.counts, result.num_skipped, time.perf_counter() - t0)
    return 1 if result.counts["failed"] else 0


TERMINAL_HIDDEN = ("dispatch (MB/GPU)", "combine (MB/GPU)", "dispatch (ms)", "combine (ms)")  # in report.md


def _print_sweep(table, axis_keys, files, plots, counts, num_skipped, wall_s) -> None:
    from rich.table import Table

    from reports.report import display_table
    from reports.table import wide_console

    console = wide_console(160)
    shown = display_table(table, axis_keys)
    shown = shown[[c for c in shown.columns if c not in TERMINAL_HIDDEN]]
    view = Table(title="sweep", title_justify="left")
    for column in shown.columns:
        view.add_column(str(column), justify="right")
    for row in shown.itertuples(index=False):
        view.add_row(*("" if v is None else str(v) for v in row))
    console.print(view)
    console.print(f"{len(table)} points: {counts['ok']} simulated, {counts['invalid']} invalid, "
                  f"{counts['failed']} failed, {num_skipped} already done (skipped); {wall_s:.1f} s")
    for label, path in {**files, **{f"plot {k}": v for k, v in plots.items()}}.items():
        console.print(f"{label}: {path}")


# -- golden ---------------------------------------------------------------------------------------
def cmd_golden(args: argparse.Namespace) -> int:
    """Re-simulate the reference scenarios against tests/golden/; --update rewrites them."""
    from hardware.atomic import write_atomic
    from simulator.errors import ScenarioError
    from simulator.studies import golden

    golden_dir, scenarios_dir = Path(args.dir), Path(args.scenarios_dir)
    names = args.names or list(golden.GOLDEN_SCENARIOS)
    num_changed = 0
    for stem in names:
        try:
            new = golden.simulate_record(scenarios_dir, stem)
        except ScenarioError as exc:
            return fail(str(exc))
        old = golden.read_golden(golden_dir, stem)
        tolerances = golden.read_tolerances(golden_dir, stem)
        changes = golden.compare(stem, old or {}, new, tolerances=tolerances)
        if old is None:
            print(f"{stem}: no golden yet ({golden.golden_path(golden_dir, stem)})")
        for change in changes if old is not None else []:
            print(change)
        num_changed += bool(changes)
        if args.update and changes:
            write_atomic(golden.golden_path(golden_dir, stem), golden.golden_text(stem, new, tolerances))
            print(f"{stem}: golden written")
        elif not changes:
            print(f"{stem}: unchanged (rtol {golden.RTOL:g})")
    if args.update or not num_changed:
        return 0
    print(f"{num_changed} scenario(s) changed; review, then: python run_sim.py golden --update", file=sys.stderr)
    return 1


# -- calibrate ------------------------------------------------------------------------------------
def default_calibration_out(device: str) -> Path:
    """A new file under runs/: calibrate never replaces a file (a tracked one least) unless asked."""
    import datetime

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / "calibrations" / f"{device}-{stamp}.json"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hardware.calibration import (
        DeviceUnavailable,
        TooContended,
        describe_contention,
        run_calibration,
        write_calibration,
    )

    if args.device not in ("cpu", "cuda"):
        return fail(f"--device = {args.device!r}: unknown device; valid: cpu, cuda")
    out = Path(args.out) if args.out else default_calibration_out(args.device)
    if out.is_dir():
        return fail(f"--out = {str(out)!r}: must be a file path, not a folder")
    if out.exists() and not args.force:
        return fail(f"--out = {str(out)!r}: the file exists; rule: calibrate replaces a file only with --force")
    try:
        import torch  # noqa: F401
    except ImportError:
        return fail("calibrate needs torch: pip install torch==2.13.0 (CPU) or a CUDA build, then retry")
    from rich.progress import Progress

    try:
        with Progress(transient=False) as bar:
            task = bar.add_task(f"calibrating {args.device}", total=None)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=f"calibrating {args.device}: {label}")

            calibration = run_calibration(args.device, progress)
    except (DeviceUnavailable, TooContended) as exc:
        return fail(str(exc))
    try:
        write_calibration(out, calibration)
    except OSError as exc:
        return fail(f"--out = {str(out)!r}: cannot write the calibration there ({exc.strerror})")
    best = ", ".join(f"{dtype} {fit['best_gemm_flop_per_s'] / 1e9:,.1f}" for dtype, fit in calibration["fits"].items())
    print(f"{calibration['device']}, torch {calibration['torch_version']}, {calibration['num_threads']} threads: "
          f"{sum(map(len, calibration['measurements'].values()))} measurements in "
          f"{calibration['benchmark_wall_s']:.0f} s; best GEMM GFLOP/s: {best}")
    print(describe_contention(calibration["contention"]))
    for dtype, why in calibration.get("skipped", {}).items():
        print(f"{dtype} not measured: {why}")
    print(f"wrote {out} (use it with --set hardware.calibration={out})")
    return 0


# -- validate -------------------------------------------------------------------------------------
def check_cases_budget(cases: list[dict], budget) -> None:
    """Every validation case within the budget; a case whose layout is rejected is left to the harness,
    which lists it as rejected."""
    import copy

    from simulator.errors import ScenarioError
    from simulator.scenario import build_scenario
    from simulator.scenario.budget import check_budget

    for case in cases:
        if "pending" in case:
            continue
        try:
            scenario = build_scenario({"name": case["id"], **copy.deepcopy(case["scenario"])})
        except ScenarioError:
            continue
        check_budget(scenario, budget)


def cmd_validate(args: argparse.Namespace) -> int:
    from reports.validation import print_validation, write_validation
    from simulator.errors import ScenarioError
    from simulator.studies.validation.harness import (
        BASELINE_FILE,
        baseline_of,
        load_cases,
        rows_as_dicts,
        run_case,
        select,
        summary_stats,
    )

    cases = select(load_cases(), args.case)
    if not cases:
        return fail(f"--case = {args.case!r}: matches no validation case")
    try:
        check_cases_budget(cases, budget_of(args))
    except ScenarioError as exc:
        return fail(str(exc))
    rows = [row for case in cases for row in run_case(case)]
    stats = summary_stats(rows)
    try:
        files = write_validation(Path(args.out), rows_as_dicts(rows))
        if args.record:
            import json

            from hardware.atomic import write_atomic
            write_atomic(BASELINE_FILE, json.dumps(baseline_of(rows), indent=2, sort_keys=True) + "\n")
            files["recorded baseline"] = BASELINE_FILE
    except OSError as exc:
        return fail(f"--out = {args.out!r}: cannot write the validation files ({exc.strerror}: {exc.filename})")
    print_validation(rows_as_dicts(rows), stats, files)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Enumerate the layouts of --gpus GPUs, prune by the rules and memory, simulate the rest, rank."""
    from rich.table import Table

    from reports.plots import pareto_plot
    from reports.table import wide_console
    from simulator.errors import ScenarioError
    from simulator.scenario import parse_override
    from simulator.scenario.budget import check_budget
    from simulator.studies import search

    try:
        budget = budget_of(args)
        fixed = model_config_overrides(args) + [parse_override(text) for text in args.overrides]
        out = Path(args.out) if args.out else RUNS_DIR / f"search-{Path(args.scenario).stem}-{args.gpus}gpus"
        result = search.run_search(args.scenario, args.gpus, args.objective, fixed, out, args.jobs,
                                   args.max_gpu_memory_gb, args.max_points, lambda s: check_budget(s, budget))
    except ScenarioError as exc:
        return fail(str(exc))
    column, larger = search.OBJECTIVES[args.objective]
    ranked = result.table
    ranked.to_csv(out / "search.csv", index=False)
    front = search.pareto_front(ranked[column].to_numpy(), ranked.memory_peak_bytes.to_numpy(), larger)
    plot = pareto_plot(ranked, column, larger, front, out / "pareto.png",
                       f"{Path(args.scenario).stem} on {args.gpus} GPUs: {len(ranked)} layouts by {column}")
    console = wide_console(140)
    table = Table(title=f"layouts of {args.scenario} on {args.gpus} GPUs, best {args.objective} first "
                        f"({len(ranked)} simulated, {len(result.pruned)} pruned by the rules or memory)",
                  title_justify="left")
    for col in ("#", "layout", column, "step", "MFU", "memory/GPU", "bandwidth util"):
        table.add_column(col, justify="left" if col == "layout" else "right")
    for i, row in ranked.head(args.top).iterrows():
        table.add_row(str(i + 1), row.layout, f"{row[column]:.4g}", f"{row.step_time_s * 1e3:,.2f} ms",
                      f"{row.mfu * 100:.1f} %", f"{row.memory_peak_bytes / 2**30:.1f} GiB",
                      f"{row.bandwidth_util * 100:.1f} %")
    console.print(table)
    console.print(result.seed_target)
    console.print(f"table: {out / 'search.csv'}\npareto plot: {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from simulator import __version__

    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "epsim",
                                     description="epsim: MoE expert-parallel performance simulator")
    parser.add_argument("--version", action="version", version=f"epsim {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="simulate one scenario (the default command)")
    add_scenario_args(run, scenario_required=False)
    run.add_argument("--trace", dest="trace", action="store_true", default=None,
                     help="write trace.json even above the size limit")
    run.add_argument("--no-trace", dest="trace", action="store_false", help="do not write trace.json")
    run.add_argument("--trace-gpus", type=int, default=64, metavar="N",
                     help="GPUs in the trace; more are sampled evenly (default 64)")
    run.add_argument("--force", action="store_true", help="replace a different run already in the out folder")
    run.add_argument("--save-routing", nargs="?", const="", default=None, metavar="FILE.npz",
                     help="write every step's expert ids per token as an NPZ trace (default OUT/routing.npz) "
                          "that routing.distribution=trace replays")
    run.set_defaults(handler=cmd_run)
    sweep = sub.add_parser("sweep", help="run a grid of scenario overrides")
    add_scenario_args(sweep, scenario_required=True)
    sweep.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="worker processes of the local executor (default: one per CPU core)")
    sweep.add_argument("--zip", action="store_true",
                       help="pair the axes' values in order instead of their product "
                            "(e.g. ep_size=8,16,32 with hardware.nodes=1,2,4)")
    sweep.add_argument("--executor", default="local", help="local (default) or ray (optional extra)")
    sweep.add_argument("--address", default=None,
                       help="executor ray: auto, HOST:PORT (the head's GCS) or ray://HOST:PORT (Ray Client); "
                            "default RAY_ADDRESS, else a Ray started on this machine")
    sweep.set_defaults(handler=cmd_sweep)
    find = sub.add_parser("search", help="which layout should I use? enumerate, prune, simulate and rank the layouts")
    add_scenario_args(find, scenario_required=True)
    find.add_argument("--gpus", type=int, required=True, help="GPUs to lay the scenario out on")
    find.add_argument("--objective", default="mfu", choices=["mfu", "tokens_per_s", "itl"],
                      help="rank by MFU, tokens/s (larger first) or inter-token latency (decode; smaller first)")
    find.add_argument("--max-gpu-memory-gb", type=float, default=None, metavar="G",
                      help="prune layouts needing more than G GiB per GPU (before all-to-all buffers)")
    find.add_argument("--max-points", type=int, default=200, help="refuse to simulate more layouts (default 200)")
    find.add_argument("--top", type=int, default=10, help="rows of the ranked table to print (default 10)")
    find.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    find.set_defaults(handler=cmd_search)
    gold = sub.add_parser("golden", help="check (or --update) the golden predictions of the reference scenarios")
    gold.add_argument("names", nargs="*", help="scenario stems (default: the reference set)")
    gold.add_argument("--update", action="store_true", help="rewrite the golden files, printing the diff")
    gold.add_argument("--dir", default=str(ROOT / "tests" / "golden"), help="golden folder (default tests/golden)")
    gold.add_argument("--scenarios-dir", default=str(ROOT / "scenarios"), help="scenario folder")
    gold.set_defaults(handler=cmd_golden)
    calibrate = sub.add_parser("calibrate", help="benchmark expert kernels and fit the compute model")
    calibrate.add_argument("--device", default="cpu",
                           help="cpu or cuda (default: cpu); cuda fails with exit 2 where CUDA is missing")
    calibrate.add_argument("--out", default=None,
                           help="calibration file to write (default: a new runs/calibrations/<device>-<UTC time>.json)")
    calibrate.add_argument("--force", action="store_true", help="replace --out if it exists")
    calibrate.set_defaults(handler=cmd_calibrate)
    validate = sub.add_parser("validate", help="predicted vs published measurements")
    validate.add_argument("--case", action="append", default=None, metavar="NAME",
                          help="run only cases whose id contains NAME (repeatable)")
    validate.add_argument("--out", default="runs/validation", help="folder for validation.csv and parity.png")
    validate.add_argument("--record", action="store_true",
                          help="record these errors as the CI baseline (simulator/studies/validation/baseline.json)")
    add_budget_args(validate)
    validate.set_defaults(handler=cmd_validate)
    parser.set_defaults(command_names=tuple(sub.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = parser.get_default("command_names")
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        return fail(f"unrecognised arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # files already written stay whole: every writer is atomic
        print("interrupted", file=sys.stderr)
        return 130


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so temporary files are removed


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
