"""Importable entry points behind run_sim.py."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from simulator.engine import RunRecord
from simulator.engine.fairshare import SolverStalled
from simulator.engine.run import Run
from simulator.errors import ScenarioError
from simulator.extension import (
    extend_layers_summary,
    extend_summary,
    sample_layers,
    sample_micro_batches,
    with_micro_batches,
    with_moe_layers,
)
from simulator.metrics import per_layer_gpu_rows, summarize
from simulator.rebalance import rebalance
from simulator.scenario import Scenario
from simulator.scenario.budget import Budget, check_budget
from simulator.seed_bandwidth import seed_bandwidth
from simulator.steps import (
    MIN_FACTOR,
    adapt,
    expert_loads,
    expert_tokens,
    load_rows,
    max_over_mean,
    summed_over_groups,
)
from simulator.workload.routing_trace import save_routing as save_routing_trace


def simulate_scenario(scenario: Scenario, budget: Budget | None = None, save_routing: Path | None = None,
                      progress=None) -> tuple[dict, list[dict], RunRecord]:
    """Simulate and measure: (summary, per-layer/per-GPU rows, the RunRecord for traces). A
    pipeline step too long to simulate whole is extended from two shorter ones (the record and
    rows are then those of the longer of the two). With a budget, a run estimated past it is
    refused (ScenarioError) before any work is done. save_routing: write every step's expert ids
    there as an NPZ trace (simulator/workload/routing_trace.py) that routing.distribution=trace replays.
    progress(n): told the simulated events as they happen, n at a time, over every step and run."""
    if budget is not None:
        check_budget(scenario, budget)
    if save_routing is not None and sample_layers(scenario) is not None:
        raise ScenarioError("--save-routing", str(save_routing), "records a step simulated whole; "
                            "workload.extend_layers=always simulates two shorter models")
    if save_routing is not None and sample_micro_batches(scenario) is not None:
        raise ScenarioError("--save-routing", str(save_routing), "records a step simulated whole; this pipeline step "
                            "is extended from two shorter ones (fewer micro-batches or pp_size 1)")
    steps = scenario.workload.steps
    alpha = scenario.routing.adaptive_alpha
    every = scenario.placement.rebalance_every_steps
    scale, per_step, loads_out, routed = None, [], [], []
    placements, observed, rebalances = None, {}, []
    for step in range(steps):
        summary, rows, record, run = _simulate_step(scenario, scale, step, placements, save_routing is not None,
                                                    progress)
        if save_routing is not None:
            routed.append(run.workload.routed)
        tokens = expert_tokens(record.counts, record.placements)
        loads = expert_loads(tokens)
        summary["expert_load_max_over_mean"] = max_over_mean(loads)
        loads_out += load_rows(step, tokens, loads)
        per_step.append({"step": step, "step_time_s": summary["step_time_s"], "mfu": summary["mfu"],
                         "load_imbalance": summary["load_imbalance"],
                         "expert_load_max_over_mean": summary["expert_load_max_over_mean"]})
        if alpha > 0:  # training: one gate for every replica, from the layer's whole load
            scale = adapt(scale, expert_loads(summed_over_groups(tokens)) if scenario.backward else loads, alpha)
        if every:
            placements = placements or record.placements  # held from step 0 (the law's EPLB) until the first rebalance
            observed = {key: observed.get(key, 0) + t for key, t in tokens.items()}
            if (step + 1) % every == 0 and step + 1 < steps:  # rebalance from the last `every` steps' loads
                placements, report = rebalance(scenario, observed, record.placements)
                observed = {}
                rebalances.append({"after_step": step, **report})
            moved = rebalances[-1] if rebalances and rebalances[-1]["after_step"] == step else None
            per_step[-1]["migration_bytes"] = moved["migration_bytes"] if moved else 0.0
            per_step[-1]["migration_time_s"] = moved["migration_time_s"] if moved else 0.0
    if save_routing is not None:
        save_routing_trace(save_routing, routed)
    if every:
        summary["rebalance"] = {"every_steps": every, "count": len(rebalances), "rebalances": rebalances,
                                "migration_bytes_total": float(sum(r["migration_bytes"] for r in rebalances)),
                                "migration_time_s_total": float(sum(r["migration_time_s"] for r in rebalances))}
    if steps > 1:
        # the last step's summary (after adaptation), and every step's numbers
        summary["per_step"] = per_step
        summary["provenance"]["steps"] = (
            f"{steps} steps of fresh tokens; the summary is the last step's; per-expert loads each step in "
            f"expert_load.csv" + (f"; adaptive gating with alpha={alpha} from the previous step's loads, "
                                  f"cumulative, factors floored at {MIN_FACTOR}" if alpha > 0 else "")
            + (f"; EPLB re-solved every {every} steps from the loads observed since the last rebalance, the "
               f"moved experts' weights sent point to point over the simulated network (time reported in "
               f"rebalance and per_step, not added to step_time_s)" if every else ""))
    summary["seed_bandwidth"] = seed_bandwidth(scenario, summary)
    return summary, rows, replace(record, expert_load_rows=loads_out)


def _simulate_step(scenario: Scenario, gate_scale: dict | None, step: int, placements: dict | None = None,
                   keep_routing: bool = False, progress=None) -> tuple[dict, list[dict], RunRecord, Run]:
    """One step: whole, or extended from two shorter pipeline steps, or (extend_layers) from two
    models with fewer MoE layers."""
    layers = sample_layers(scenario)
    if layers is not None:
        n1, n2 = layers
        one = _simulate_step(with_moe_layers(scenario, n1), gate_scale, step, placements, progress=progress)[0]
        two, rows, record, run = _simulate_step(with_moe_layers(scenario, n2), gate_scale, step, placements,
                                                progress=progress)
        return extend_layers_summary(scenario, one, two, n1, n2), rows, record, run
    sample = sample_micro_batches(scenario)
    if sample is None:
        record, run = _simulate(scenario, gate_scale, step, placements, keep_routing, progress)
        return summarize(record), per_layer_gpu_rows(record), record, run
    m1, m2 = sample
    one, _ = _simulate(with_micro_batches(scenario, m1), gate_scale, step, placements, progress=progress)
    record, run = _simulate(with_micro_batches(scenario, m2), gate_scale, step, placements, progress=progress)
    return extend_summary(scenario, summarize(one), summarize(record), m1, m2), per_layer_gpu_rows(record), record, run


def run_scenario(scenario: Scenario, budget: Budget | None = None) -> tuple[dict, list[dict]]:
    summary, rows, _ = simulate_scenario(scenario, budget)
    return summary, rows


def _simulate(scenario: Scenario, gate_scale: dict | None = None, step: int = 0, placements: dict | None = None,
              keep_routing: bool = False, progress=None) -> tuple[RunRecord, Run]:
    """engine.simulate, with a stalled solver's error naming the collectives in flight by their ids."""
    run = Run(scenario, gate_scale, step, placements, keep_routing)
    try:
        return run.simulate(progress), run
    except SolverStalled as exc:
        stuck = {id(getattr(b.on_done, "__self__", None)) for b in exc.batches}
        names = [f"{cid.kind} (group {cid.group}, index {cid.index}, micro-batch {cid.micro_batch}, chunk {cid.chunk})"
                 for cid, coll in run.collectives.items() if id(coll) in stuck]
        raise SolverStalled(f"internal error in {scenario.name!r}: {exc}; collectives: "
                            f"{', '.join(names[:4]) or 'unknown'}{' ...' if len(names) > 4 else ''}",
                            exc.batches) from None
