"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from pathlib import Path

from simulator.engine import simulate
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario, load_scenario


def run_scenario(scenario: Scenario) -> tuple[dict, list[dict]]:
    result = simulate(scenario)
    return summarize(result), per_layer_gpu_rows(result)


def run_file(path: str | Path, overrides=()) -> tuple[Scenario, dict, list[dict]]:
    scenario = load_scenario(path, overrides)
    summary, rows = run_scenario(scenario)
    return scenario, summary, rows
