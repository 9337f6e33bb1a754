"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from dataclasses import replace

from simulator.engine import RunRecord
from simulator.engine.fairshare import SolverStalled
from simulator.engine.run import Run
from simulator.extension import extend_summary, sample_micro_batches, with_micro_batches
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.scenario import Scenario
from simulator.scenario.budget import Budget, check_budget
from simulator.seed_bandwidth import seed_bandwidth
from simulator.steps import MIN_FACTOR, adapt, expert_loads, expert_tokens, load_rows, max_over_mean


def simulate_scenario(scenario: Scenario, budget: Budget | None = None) -> tuple[dict, list[dict], RunRecord]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunRecord for traces). A
    pipeline step too long to simulate whole is extended from two shorter ones (the record and
    rows are then those of the longer of the two). With a budget, a run estimated past it is
    refused (ScenarioError) before any work is done."""
    if budget is not None:
        check_budget(scenario, budget)
    steps = scenario.workload.steps
    alpha = scenario.routing.adaptive_alpha
    scale, per_step, loads_out = None, [], []
    for step in range(steps):
        summary, rows, record = _simulate_step(scenario, scale, step)
        tokens = expert_tokens(record.counts, record.placements)
        loads = expert_loads(tokens)
        summary["expert_load_max_over_mean"] = max_over_mean(loads)
        loads_out += load_rows(step, tokens, loads)
        per_step.append({"step": step, "step_time_s": summary["step_time_s"], "mfu": summary["mfu"],
                         "load_imbalance": summary["load_imbalance"],
                         "expert_load_max_over_mean": summary["expert_load_max_over_mean"]})
        if alpha > 0:
            scale = adapt(scale, loads, alpha)
    if steps > 1:
        # the last step's summary (after adaptation), and every step's numbers
        summary["per_step"] = per_step
        summary["provenance"]["steps"] = (
            f"{steps} steps of fresh tokens; the summary is the last step's; per-expert loads each step in "
            f"expert_load.csv" + (f"; adaptive gating with alpha={alpha} from the previous step's loads, "
                                  f"cumulative, factors floored at {MIN_FACTOR}" if alpha > 0 else ""))
    summary["seed_bandwidth"] = seed_bandwidth(scenario, summary)
    return summary, rows, replace(record, expert_load_rows=loads_out)


def _simulate_step(scenario: Scenario, gate_scale: dict | None, step: int) -> tuple[dict, list[dict], RunRecord]:
    """One step: whole, or extended from two shorter pipeline steps."""
    sample = sample_micro_batches(scenario)
    if sample is None:
        record = _simulate(scenario, gate_scale, step)
        return summarize(record), per_layer_gpu_rows(record), record
    m1, m2 = sample
    one = _simulate(with_micro_batches(scenario, m1), gate_scale, step)
    record = _simulate(with_micro_batches(scenario, m2), gate_scale, step)
    return extend_summary(scenario, summarize(one), summarize(record), m1, m2), per_layer_gpu_rows(record), record


def run_scenario(scenario: Scenario, budget: Budget | None = None) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario, budget)
    return summary, rows


def _simulate(scenario: Scenario, gate_scale: dict | None = None, step: int = 0) -> RunRecord:
    """engine.simulate, with a stalled solver's error naming the collectives in flight by their ids."""
    run = Run(scenario, gate_scale, step)
    try:
        return run.simulate()
    except SolverStalled as exc:
        stuck = {id(getattr(b.on_done, "__self__", None)) for b in exc.batches}
        names = [f"{cid.kind} (group {cid.group}, index {cid.index}, micro-batch {cid.micro_batch}, chunk {cid.chunk})"
                 for cid, coll in run.collectives.items() if id(coll) in stuck]
        raise SolverStalled(f"internal error in {scenario.name!r}: {exc}; collectives: "
                            f"{', '.join(names[:4]) or 'unknown'}{' ...' if len(names) > 4 else ''}",
                            exc.batches) from None
