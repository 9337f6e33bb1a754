"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from simulator.engine import RunRecord, simulate
from simulator.extension import extend_summary, sample_micro_batches, with_micro_batches
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario


def simulate_scenario(scenario: Scenario) -> tuple[dict, list[dict], RunRecord]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunRecord for traces). A
    pipeline step too long to simulate whole is extended from two shorter ones (the record and
    rows are then those of the longer of the two)."""
    sample = sample_micro_batches(scenario)
    if sample is None:
        record = simulate(scenario)
        return summarize(record), per_layer_gpu_rows(record), record
    m1, m2 = sample
    one, record = simulate(with_micro_batches(scenario, m1)), simulate(with_micro_batches(scenario, m2))
    return extend_summary(scenario, summarize(one), summarize(record), m1, m2), per_layer_gpu_rows(record), record


def run_scenario(scenario: Scenario) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario)
    return summary, rows
