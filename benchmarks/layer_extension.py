#!/usr/bin/env python3
"""workload.extend_layers against the whole simulation (issue 14: an approximation is opt-in and
measured against the exact path): the whole-model scenarios of the validation set that run on one
stage in one step (training, prefill, decode) and DeepSeek-V3's 61-layer training step of
scenarios/default.yaml at EP 64 (uniform and balanced routing; skewed laws are refused), each simulated whole and extended
from 2 and 4 of its MoE layers. Prints a markdown table of step times, the extension's error and
both wall times; asserts nothing.

    python benchmarks/layer_extension.py [--case ID ...]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.api import simulate_scenario  # noqa: E402
from simulator.errors import ScenarioError  # noqa: E402
from simulator.extension import sample_layers  # noqa: E402
from simulator.scenario import build_scenario, load_scenario  # noqa: E402
from simulator.studies.validation.harness import load_cases  # noqa: E402

DEFAULT_61 = [("model.num_layers", 61), ("model.num_dense_layers", 3), ("hardware.hbm_gb", 1000)]


def scenarios(only: list[str] | None):
    for case in load_cases():
        if "pending" in case or (only and case["id"] not in only):
            continue
        data = {"name": case["id"], **copy.deepcopy(case["scenario"])}
        try:
            s = build_scenario(data)
            data["workload"] = {**data.get("workload", {}), "extend_layers": "always"}
            extended = build_scenario(data)
        except ScenarioError:  # rejected, or the extension does not apply (PP > 1, several steps, ...)
            continue
        if sample_layers(extended) is not None:
            yield case["id"], s, extended
    for name, routing in (("default, 61 layers, EP 64", []),
                          ("default, 61 layers, EP 64, balanced", [("routing.distribution", "balanced"),
                                                                   ("routing.max_nodes_per_token", None)])):
        if only and name not in only:
            continue
        s = load_scenario(ROOT / "scenarios" / "default.yaml", DEFAULT_61 + routing)
        yield name, s, load_scenario(ROOT / "scenarios" / "default.yaml",
                                     DEFAULT_61 + routing + [("workload.extend_layers", "always")])


def timed(s) -> tuple[dict, float]:
    start = time.perf_counter()
    summary = simulate_scenario(s)[0]
    return summary, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", help="validation case ids (or the default scenario's names) to run")
    args = parser.parse_args()
    print("| scenario | mode | MoE layers | whole step s | extended step s | error | whole wall s | extended wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, whole, extended in scenarios(args.case):
        a, wall_a = timed(whole)
        b, wall_b = timed(extended)
        print(f"| {name} | {whole.workload.mode} | {whole.model.num_moe_layers} | {a['step_time_s']:.6g} | "
              f"{b['step_time_s']:.6g} | {(b['step_time_s'] / a['step_time_s'] - 1) * 100:+.2f} % | {wall_a:.1f} | "
              f"{wall_b:.1f} |", flush=True)


if __name__ == "__main__":
    main()
