#!/usr/bin/env python3
"""epsim command line: a thin layer over simulator.api and reports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_SCENARIO = ROOT / "scenarios" / "default.yaml"
COMMANDS = ("run", "sweep", "calibrate", "validate")
LATER = {
    "sweep": "EP-size sweeps with scaling plots",
    "calibrate": "the calibrated compute model",
    "validate": "the validation harness",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_sim.py", description="epsim: MoE expert-parallel performance simulator")
    p.add_argument("command", nargs="?", default="run", help="run (default) | sweep | calibrate | validate")
    p.add_argument("scenario", nargs="?", default=None, help="scenario YAML (default: scenarios/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted scenario key with a YAML value, e.g. --set parallel.ep_size=32")
    p.add_argument("--out", default=None, help="output folder (default: runs/<scenario name>/)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    args = _parser().parse_args(argv)
    if args.command not in COMMANDS:
        print(f"error: unknown command {args.command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if args.command in LATER:
        print(f"error: '{args.command}' arrives with {LATER[args.command]}; this version supports: run",
              file=sys.stderr)
        return 2

    from reports.files import write_run_files
    from reports.table import print_summary
    from simulator.api import run_scenario
    from simulator.errors import ScenarioError
    from simulator.scenario import load_scenario, parse_override

    try:
        overrides = [parse_override(o) for o in args.overrides]
        scenario = load_scenario(args.scenario or DEFAULT_SCENARIO, overrides)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / scenario.name
    if out.exists() and not out.is_dir():
        print(f"error: --out = {str(out)!r}: must be a folder, not an existing file", file=sys.stderr)
        return 2
    summary, rows = run_scenario(scenario)
    try:
        files = write_run_files(out, summary, rows)
    except OSError as exc:
        print(f"error: --out = {str(out)!r}: cannot write the run files there ({exc.strerror})", file=sys.stderr)
        return 2
    print_summary(summary, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
