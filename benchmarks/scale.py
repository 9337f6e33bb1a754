#!/usr/bin/env python3
"""Scale benchmark: wall time by phase, events, simulated ops and peak memory of the DeepSeek-V3
training step at growing EP sizes, next to raw SimPy's own time per event measured in the same run.

Two workloads (issue 14):
  stage  scenarios/default.yaml: one 4-layer pipeline stage (4 MoE layers), 2 micro-batches
  model  the whole 61-layer model (3 dense + 58 MoE layers), 2 micro-batches, without the token
         embedding and LM head (workload.embedding_and_head stays false, as in default.yaml)
Both with the memory rule relaxed (hardware.hbm_gb=1000) where the step does not fit the seed's
64 GB: the whole model needs PP to fit, and this benchmark times one process.

Each point runs in its own process so its peak memory (VmHWM) is its own. Prints a table; asserts
nothing. `--layers N` times the model with N layers (3 dense + N-3 MoE) to extrapolate a point too
slow to run whole; cost is linear in the MoE layers. `--extend-layers` also times the model through
workload.extend_layers=always (rows `model~`: the model with 2 and 4 of its MoE layers simulated and
extended, an estimate, not exact), so the two step times can be compared row by row.
    python benchmarks/scale.py [--workload stage model] [--ep 64 256 1024] [--layers N] [--extend-layers]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_LAYERS, MODEL_DENSE_LAYERS = 61, 3  # DeepSeek-V3 (simulator/models/deepseek-v3.yaml)


def raw_simpy_event_s(num_events: int = 300_000) -> float:
    """Seconds per event of bare SimPy on this machine: processes that only wait on timeouts."""
    import simpy

    env = simpy.Environment()

    def ticker(n):
        for _ in range(n):
            yield env.timeout(1.0)

    for _ in range(100):
        env.process(ticker(num_events // 100))
    t0 = time.perf_counter()
    env.run()
    return (time.perf_counter() - t0) / num_events


def peak_memory_mb() -> float:
    # VmHWM, not ru_maxrss: a forked child inherits its parent's maxrss across exec (Linux), VmHWM is its own
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024


def overrides_for(workload: str, ep: int, layers: int | None) -> list[tuple[str, object]]:
    out = [("hardware.nodes", max(1, ep // 8)), ("parallel.ep_size", ep)]
    if workload == "model":
        out += [("model.num_layers", layers or MODEL_LAYERS), ("model.num_dense_layers", MODEL_DENSE_LAYERS)]
    return out


def one_point(workload: str, ep: int, layers: int | None, phases: bool, extend: bool = False) -> dict:
    sys.path.insert(0, str(ROOT))
    from benchmarks.phases import PHASES, measured_phases
    from simulator.engine import Run
    from simulator.errors import ScenarioError
    from simulator.metrics import summarize
    from simulator.scenario import load_scenario
    from simulator.scenario.budget import estimate

    raw_event_s = raw_simpy_event_s()  # in this process, just before the point: the same load on the CPUs
    t0 = time.perf_counter()
    overrides = overrides_for(workload, ep, layers)
    relaxed = False
    try:
        scenario = load_scenario(ROOT / "scenarios" / "default.yaml", overrides)
    except ScenarioError as exc:
        if "does not fit memory" not in exc.rule:
            raise
        relaxed = True
        scenario = load_scenario(ROOT / "scenarios" / "default.yaml", overrides + [("hardware.hbm_gb", 1000)])
    if extend:  # workload.extend_layers: two shorter models through the API (the record is the longer one's)
        from simulator.api import simulate_scenario

        scenario = dataclasses.replace(
            scenario, workload=scenario.workload.model_copy(update={"extend_layers": "always"}))
        with measured_phases() if phases else _no_phases(PHASES) as split:
            t1 = time.perf_counter()
            summary, _, result = simulate_scenario(scenario)
            t2 = t3 = time.perf_counter()
    else:
        with measured_phases() if phases else _no_phases(PHASES) as split:
            run = Run(scenario)
            t1 = time.perf_counter()
            result = run.simulate()
            t2 = time.perf_counter()
        summary = summarize(result)
        t3 = time.perf_counter()
    ops = sum(len(g) for g in result.intervals)
    split = dict(split)
    if phases and extend:  # two runs' builds and simulations interleave: no split of the rest
        split["engine"] = split["elaborate_other"] = float("nan")
        split.pop("build_wall", None)
    elif phases:  # what the accumulators did not claim: elaboration (programs, compute model) and SimPy + engine
        split["engine"] = (t2 - t1) - split["solves"] - split["bookkeeping"]
        split["elaborate_other"] = (t1 - t0) - split.pop("build_wall")  # the builds route and count on threads
    return {"workload": workload + ("~" if extend else ""), "ep": ep, "layers": scenario.model.num_layers, "wall_s": t3 - t0,
            "elaborate_s": t1 - t0, "simulate_s": t2 - t1, "metrics_s": t3 - t2, "phases": split,
            "events": result.num_events, "ops": ops, "solves": result.network_solves,
            "raw_event_s": raw_event_s, "peak_mb": peak_memory_mb(), "estimate_s": estimate(scenario).wall_s,
            "estimate_mb": estimate(scenario).peak_memory_bytes / 2**20,
            "step_time_ms": summary["step_time_s"] * 1e3, "mfu": summary["mfu"], "relaxed": relaxed}


class _no_phases:
    def __init__(self, names):
        self.split = dict.fromkeys(names, float("nan"))

    def __enter__(self):
        return self.split

    def __exit__(self, *exc):
        return False


def row(r: dict) -> str:
    ph = r["phases"]
    us = 1e6
    return (f"{r['workload']:>6} {r['layers']:>3} {r['ep']:>5} {r['wall_s']:>7.1f} "
            f"{ph['routing']:>6.1f} {ph['traffic']:>6.1f} {ph['solves']:>6.1f} {ph['bookkeeping']:>6.1f} "
            f"{ph.get('engine', float('nan')):>6.1f} {ph.get('elaborate_other', float('nan')):>6.1f} "
            f"{r['metrics_s']:>6.1f} {r['events']:>10,} {r['ops']:>9,} {r['events'] / r['ops']:>5.1f} "
            f"{r['simulate_s'] / r['ops'] * us:>7.1f} {r['raw_event_s'] * us:>6.2f} {r['solves']:>7,} "
            f"{r['peak_mb']:>7.0f} {r['step_time_ms']:>9.3f} {r['estimate_s'] / r['wall_s']:>5.2f} "
            f"{r['estimate_mb'] / r['peak_mb']:>5.2f}{'  (*)' if r['relaxed'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", nargs="+", choices=["stage", "model"], default=["stage", "model"])
    parser.add_argument("--ep", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--layers", type=int, help="model workload: this many layers (3 dense) instead of 61")
    parser.add_argument("--no-phases", action="store_true", help="time without the phase accumulators")
    parser.add_argument("--extend-layers", action="store_true",
                        help="model workload: also time workload.extend_layers=always (rows 'model~': two shorter "
                             "models simulated, an estimate; events, ops and solves are the longer run's)")
    parser.add_argument("--json", help="also write the points as JSON lines to this file")
    parser.add_argument("--point", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        workload, ep = args.point[0], int(args.point[1])
        print(json.dumps(one_point(workload.rstrip("~"), ep, args.layers, not args.no_phases, workload.endswith("~"))))
        return
    head = (f"{'work':>6} {'lay':>3} {'EP':>5} {'wall s':>7} {'route':>6} {'traff':>6} {'solve':>6} {'books':>6} "
            f"{'engine':>6} {'elab':>6} {'metr':>6} {'events':>10} {'ops':>9} {'ev/op':>5} {'us/op':>7} "
            f"{'us/ev':>6} {'solves':>7} {'peak MB':>7} {'step ms':>9} {'est/t':>5} {'est/m':>5}")
    print(head)
    print("-" * len(head))
    workloads = [w for name in args.workload for w in ([name, name + "~"] if args.extend_layers and name == "model"
                                                        else [name])]
    for workload in workloads:
        for ep in args.ep:
            cmd = [sys.executable, __file__, "--point", workload, str(ep)]
            cmd += ["--layers", str(args.layers)] if args.layers else []
            cmd += ["--no-phases"] if args.no_phases else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{workload:>6} {ep:>5} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = json.loads(out.stdout)
            print(row(r), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    from simulator.workload.build import routing_threads

    print(f"\nphases (s): route = routing (gating samples, replica slots), traff = traffic counting (both CPU "
          f"seconds summed over the {routing_threads()} routing threads, EPSIM_THREADS), solve = "
          "fair-share solves, books = network and collective bookkeeping (paths, flow state), engine = SimPy and "
          "the engine's processes, elab = the rest of elaboration (outside the workload build), metr = metrics.")
    print("us/op: simulate seconds per simulated op (a kernel or a GPU's part of a collective); us/ev: raw "
          "SimPy's seconds per event (timeouts only), measured in the same process just before the point.")
    print("est/t, est/m: simulator/scenario/budget.py's estimate of the wall time and peak memory over the measured.")
    print("(*) does not fit the seed's 64 GB at this EP size; timed with hardware.hbm_gb=1000.")
    print("EP > 256 puts DeepSeek-V3's 256 experts on GPUs 0..255 and none on the rest (seed 1.1, E <= G).")


if __name__ == "__main__":
    main()
