#!/usr/bin/env python3
"""epsim command line: a thin layer over importable functions. One handler per command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_SCENARIO = ROOT / "scenarios" / "default.yaml"


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def add_scenario_args(p: argparse.ArgumentParser, scenario_required: bool) -> None:
    p.add_argument("scenario", nargs=None if scenario_required else "?", default=None,
                   help="scenario YAML" + ("" if scenario_required else " (default: scenarios/default.yaml)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted scenario key with a YAML value, e.g. --set parallel.ep_size=32")
    p.add_argument("--out", default=None, help="output folder (default: runs/<scenario name>/)")


# -- run ------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from reports.files import write_run_files
    from reports.table import print_summary
    from simulator.api import run_scenario
    from simulator.errors import ScenarioError
    from simulator.scenario import load_scenario, parse_override

    try:
        overrides = [parse_override(o) for o in args.overrides]
        scenario = load_scenario(args.scenario or DEFAULT_SCENARIO, overrides)
    except ScenarioError as exc:
        return fail(str(exc))
    out = Path(args.out) if args.out else Path("runs") / scenario.name
    if out.exists() and not out.is_dir():
        return fail(f"--out = {str(out)!r}: must be a folder, not an existing file")
    summary, rows = run_scenario(scenario)
    try:
        files = write_run_files(out, summary, rows)
    except OSError as exc:
        return fail(f"--out = {str(out)!r}: cannot write the run files there ({exc.strerror})")
    print_summary(summary, files)
    return 0


# -- sweep ----------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    return fail("'sweep' arrives with EP-size sweeps and scaling plots; this version supports: run")


# -- calibrate ------------------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    return fail("'calibrate' arrives with the calibrated compute model; this version supports: run")


# -- validate -------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from reports.validation import print_validation, write_validation
    from simulator.validation.harness import (BASELINE_FILE, baseline_of, load_cases, rows_as_dicts, run_case,
                                              select, summary_stats)

    cases = select(load_cases(), args.case)
    if not cases:
        return fail(f"--case = {args.case!r}: matches no validation case")
    rows = [row for case in cases for row in run_case(case)]
    stats = summary_stats(rows)
    files = write_validation(Path(args.out), rows_as_dicts(rows))
    if args.record:
        from reports.files import write_atomic
        import json
        write_atomic(BASELINE_FILE, json.dumps(baseline_of(rows), indent=2, sort_keys=True) + "\n")
        files["recorded baseline"] = BASELINE_FILE
    print_validation(rows_as_dicts(rows), stats, files)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_sim.py", description="epsim: MoE expert-parallel performance simulator")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="simulate one scenario (the default command)")
    add_scenario_args(run, scenario_required=False)
    run.set_defaults(handler=cmd_run)
    sweep = sub.add_parser("sweep", help="run a grid of scenario overrides")
    add_scenario_args(sweep, scenario_required=True)
    sweep.set_defaults(handler=cmd_sweep)
    calibrate = sub.add_parser("calibrate", help="benchmark expert kernels and fit the compute model")
    calibrate.set_defaults(handler=cmd_calibrate)
    validate = sub.add_parser("validate", help="predicted vs published measurements")
    validate.add_argument("--case", action="append", default=None, metavar="NAME",
                          help="run only cases whose id contains NAME (repeatable)")
    validate.add_argument("--out", default="runs/validation", help="folder for validation.csv and parity.png")
    validate.add_argument("--record", action="store_true",
                          help="record these errors as the CI baseline (simulator/validation/baseline.json)")
    validate.set_defaults(handler=cmd_validate)
    parser.set_defaults(command_names=tuple(sub.choices))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = parser.get_default("command_names")
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        return fail(f"unrecognised arguments: {' '.join(unknown)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
