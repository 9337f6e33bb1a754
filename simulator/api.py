"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from simulator.engine import RunRecord, simulate
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario


def simulate_scenario(scenario: Scenario) -> tuple[dict, list[dict], RunRecord]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunRecord for traces)."""
    record = simulate(scenario)
    return summarize(record), per_layer_gpu_rows(record), record


def run_scenario(scenario: Scenario) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario)
    return summary, rows
