"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from pathlib import Path

from simulator.engine import RunResult, simulate
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario, load_scenario


def simulate_scenario(scenario: Scenario) -> tuple[dict, list[dict], RunResult]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunResult for traces)."""
    result = simulate(scenario)
    return summarize(result), per_layer_gpu_rows(result), result


def run_scenario(scenario: Scenario) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario)
    return summary, rows


def run_file(path: str | Path, overrides=()) -> tuple[Scenario, dict, list[dict]]:
    scenario = load_scenario(path, overrides)
    summary, rows = run_scenario(scenario)
    return scenario, summary, rows
