"""Fuzz epsim with >= 10,000 generated inputs (tests/test_fuzz.py's generator: the tiny scenario and
the fast shipped ones (1 in 20) with keys of every section replaced, a quarter with one hostile value) through
the importable API, a sample also through the command line, and print the counts by outcome.

    python benchmarks/fuzz.py [--inputs 10000] [--cap-s 20] [--cli-every 50] [--process-every 500]

Outcomes: ran (and every invariant held), rejected (a ScenarioError naming a key), rejected by the
budget (--max-minutes / --max-memory-gb, set to the cap: a run the budget lets through and that then
passes the cap is `too slow`), unclear rejection (no key named), invariant broken, crashed (any other
exception, a traceback), too slow (past --cap-s).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import run_sim  # noqa: E402
from simulator.engine.run import Run  # noqa: E402
from simulator.errors import ScenarioError  # noqa: E402
from simulator.metrics import summarize  # noqa: E402
from simulator.scenario import build_scenario, read_scenario_file  # noqa: E402
from simulator.scenario.budget import Budget, check_budget, estimate  # noqa: E402
from tests.test_fuzz import SECTIONS, assert_names_a_key, check_invariants, instrument, scenarios  # noqa: E402

SHIPPED = ["single-node-ep8", "mixtral-8x7b-prefill", "default"]  # the fast ones: seconds each


class TooSlow(BaseException):
    """Past the per-input cap (a BaseException, so no `except Exception` in the code under test eats it)."""


def _alarm(signum, frame):
    raise TooSlow()


@st.composite
def inputs(draw) -> dict:
    """19 in 20: the generator of tests/test_fuzz.py; 1 in 20: a shipped scenario mutated the same way."""
    if draw(st.integers(0, 19)) > 0:
        return draw(scenarios())
    data = read_scenario_file(ROOT / "scenarios" / f"{draw(st.sampled_from(SHIPPED))}.yaml")
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=2, unique=True)):
        data.setdefault(section, {}).update(draw(SECTIONS[section]))
    return data


def api_outcome(data: dict, budget: Budget) -> tuple[str, str]:
    try:
        s = build_scenario(data)
        check_budget(s, budget)
        run = Run(s)  # building the workload can still refuse a law its router cannot sample
    except ScenarioError as exc:
        try:
            assert_names_a_key(exc)
        except AssertionError:
            return "unclear rejection", str(exc)[:120]
        return ("rejected by the budget" if str(exc.key).startswith("--") else "rejected"), str(exc.key)
    batches = instrument(run)
    record = run.simulate()
    try:
        check_invariants(s, record, summarize(record), batches)
    except AssertionError as exc:
        return "invariant broken", f"{s.name}: {str(exc)[:160]}"
    return "ran", f"{estimate(s).wall_s:.2f}"


def cli_outcome(data: dict, folder: Path, cap_s: float, process: bool) -> tuple[str, str]:
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    args = [str(path), "--out", str(folder / "out"), "--no-trace", "--max-minutes", f"{cap_s / 60}"]
    if process:  # a real process: a traceback, a hang or a signal shows as what a user would see
        try:
            done = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), *args], capture_output=True, text=True,
                                  timeout=cap_s + 30, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return "cli too slow", ""
        code, err = done.returncode, done.stderr
    else:
        out, err_io = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err_io):
            code = run_sim.main(args)
        err = err_io.getvalue()
    if code == 0:
        return "cli ran", ""
    if code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err:
        return "cli exit 2, one line", ""
    return "cli other", f"exit {code}: {err[-200:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--cap-s", type=float, default=20.0, help="per-input time cap (and the budget)")
    parser.add_argument("--cli-every", type=int, default=50, help="every Nth input also through run_sim.main")
    parser.add_argument("--process-every", type=int, default=500, help="every Nth input also as a process")
    args = parser.parse_args()
    budget = Budget(max_minutes=args.cap_s / 60)
    counts, cli, examples = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    slowest = [0.0, "", 0.0]  # wall s, name, estimated s
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="epsim-fuzz-"))

    @settings(max_examples=args.inputs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(inputs())
    def one(data):
        n = sum(counts.values()) + 1
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.cap_s)
        try:
            kind, detail = api_outcome(data, budget)
        except TooSlow:
            kind, detail = "too slow", str(data.get("name"))
        except Exception as exc:  # noqa: BLE001 - the point: every crash is counted, not raised
            kind, detail = "crashed", f"{type(exc).__name__}: {str(exc)[:160]}"
            with open(tmp / "crashed.yaml", "a") as fh:  # to replay: the input, whole
                fh.write(yaml.safe_dump([{"error": detail, "input": data}]))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        wall = time.perf_counter() - start
        counts[kind] += 1
        if kind != "ran" and len(examples[kind]) < 5 and kind not in ("rejected", "rejected by the budget"):
            examples[kind].append(detail)
        if kind == "ran" and wall > slowest[0]:
            slowest[:] = [wall, str(data.get("name")), float(detail)]
        if n % args.cli_every == 0:
            signal.setitimer(signal.ITIMER_REAL, args.cap_s + 10)
            try:
                ckind, cdetail = cli_outcome(data, tmp, args.cap_s, process=n % args.process_every == 0)
            except TooSlow:
                ckind, cdetail = "cli too slow", ""
            except BaseException as exc:  # noqa: BLE001
                ckind, cdetail = "cli crashed", f"{type(exc).__name__}: {str(exc)[:160]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            cli[ckind] += 1
            if ckind not in ("cli ran", "cli exit 2, one line") and len(examples[ckind]) < 5:
                examples[ckind].append(cdetail)
        if n % 500 == 0:
            print(f"{n:,} inputs, {time.perf_counter() - t0:.0f} s: {dict(counts)}", file=sys.stderr, flush=True)

    one()
    total = sum(counts.values())
    print(f"{total:,} inputs through the API in {time.perf_counter() - t0:.0f} s (cap {args.cap_s:g} s each)")
    for kind in ("ran", "rejected", "rejected by the budget", "unclear rejection", "invariant broken", "crashed",
                 "too slow"):
        print(f"  {kind:24s} {counts[kind]:>6,}")
    print(f"{sum(cli.values()):,} of them also through the command line:")
    for kind, n in sorted(cli.items()):
        print(f"  {kind:24s} {n:>6,}")
    print(f"slowest run: {slowest[1]} {slowest[0]:.1f} s (estimated {slowest[2]:.1f} s)")
    for kind, details in examples.items():
        for d in details:
            print(f"  e.g. {kind}: {d}")
    if counts["crashed"]:
        print(f"crashed inputs: {tmp / 'crashed.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
