"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from simulator.engine import RunRecord
from simulator.engine.fairshare import SolverStalled
from simulator.engine.run import Run
from simulator.extension import extend_summary, sample_micro_batches, with_micro_batches
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario
from simulator.scenario.budget import Budget, check_budget


def simulate_scenario(scenario: Scenario, budget: Budget | None = None) -> tuple[dict, list[dict], RunRecord]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunRecord for traces). A
    pipeline step too long to simulate whole is extended from two shorter ones (the record and
    rows are then those of the longer of the two). With a budget, a run estimated past it is
    refused (ScenarioError) before any work is done."""
    if budget is not None:
        check_budget(scenario, budget)
    sample = sample_micro_batches(scenario)
    if sample is None:
        record = _simulate(scenario)
        return summarize(record), per_layer_gpu_rows(record), record
    m1, m2 = sample
    one, record = _simulate(with_micro_batches(scenario, m1)), _simulate(with_micro_batches(scenario, m2))
    return extend_summary(scenario, summarize(one), summarize(record), m1, m2), per_layer_gpu_rows(record), record


def run_scenario(scenario: Scenario, budget: Budget | None = None) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario, budget)
    return summary, rows


def _simulate(scenario: Scenario) -> RunRecord:
    """engine.simulate, with a stalled solver's error naming the collectives in flight by their ids."""
    run = Run(scenario)
    try:
        return run.simulate()
    except SolverStalled as exc:
        stuck = {id(getattr(b.on_done, "__self__", None)) for b in exc.batches}
        names = [f"{cid.kind} (group {cid.group}, index {cid.index}, micro-batch {cid.micro_batch}, chunk {cid.chunk})"
                 for cid, coll in run.collectives.items() if id(coll) in stuck]
        raise SolverStalled(f"internal error in {scenario.name!r}: {exc}; collectives: "
                            f"{', '.join(names[:4]) or 'unknown'}{' ...' if len(names) > 4 else ''}",
                            exc.batches) from None
