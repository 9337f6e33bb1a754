"""The work a scenario asks for, estimated from the scenario alone, and the budget it must fit.

A run costs the simulator three things: routing (a sampled expert choice per token copy), the
discrete-event simulation (events; each collective's fair-share solves grow with its GPUs) and the
memory of the largest routing call and of the kept record. All three follow from the layout, so a
scenario that cannot finish on this machine (tokens_per_gpu 1e7, nodes 16,384) is refused before it
starts, with the estimate and the flag that raises the budget, instead of running until killed.

The constants are fitted on measured runs of the reference scenarios and of sizes of the tiny test
scenario on the 2-core development VM (benchmarks/budget_check.py prints estimate against measured;
tests/test_budget.py holds events and memory within 2x). They are rough on purpose: the budget only
has to tell a minute from an hour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hardware.units import GIB
from simulator.errors import ScenarioError
from simulator.scenario.schema import Scenario
from simulator.workload.routing import MAX_DRAWS_PER_COPY, expected_draws_per_copy

DEFAULT_MAX_MEMORY_GB = 4.0  # GiB of the simulator's own memory (this VM has 8 GB, two runs may share it)
DEFAULT_MAX_MINUTES = 10.0  # wall-clock minutes on the 2-core development VM

# Fitted on this VM (benchmarks/budget_check.py). The time constants were rescaled by issue 14's
# exact speed-ups, each term by the phase it stands for: SimPy and the per-op engine x 0.8 (simulate
# CPU time of the 4-layer stage at EP 256 and the 61-layer step at EP 64, old and new run side by
# side: 9.2 -> 7.1 s, 22.8 -> 18.8 s); the per-GPU solve and bookkeeping x 0.55 and the collector's
# growth x 0.46 (the 61-layer step at EP 256 back to back at about the same load, raw SimPy 1.72 and
# 1.98 us per event: solves + bookkeeping 218 -> 121 s, engine 193 -> 89 s); node-limited routing
# x 0.56 (327 -> 183 s there); the zipf sampler x 0.82 (the sampler alone, 0.98 -> 0.80 s). Unlimited
# uniform routing did not change. Then the compiled routing sampler, traffic counter and solver
# (simulator/workload/kernels.py, engine/fairshare_kernel.py; benchmarks/budget_check.py before and
# after): node-limited routing and its counting 0.07 -> 0.035 us per copy, zipf 0.15 -> 0.05, a
# further draw 0.037 -> 0.005 us, the per-GPU solve x 0.75 (2.0 -> 1.2 s of solves at EP 256), and
# the process itself holds numba's LLVM (about 125 MB more resident).
EVENTS_PER_OP = 41.0  # simulated events per (GPU, layer, micro-batch, chunk, phase): 39-42 measured
EVENTS_PER_TP_OP = 24.0  # extra per such unit with tensor parallelism (gather / scatter rings)
EVENT_S = 16e-6  # seconds per event at small EP (SimPy plus the per-op engine work); 20e-6 before issue 14
EVENT_S_PER_GPU = 0.025e-6  # per event and GPU of the EP group: the fair-share solve covers the group
# per event and event already kept: the collector walked every live record (measured 49 us per event at
# 3.6 M events, 24 us below 0.6 M; the README's 1024-GPU run: 6.7 M events in 16.5 min); the run now
# freezes what exists before it and collects the young generation less often (engine/run.py)
EVENT_S_PER_EVENT = 3.2e-12
COPY_S = {"uniform": 0.03e-6, "balanced": 0.03e-6, "zipf": 0.05e-6}  # seconds per routed copy, and traffic
# dirichlet and trace have no fitted cost: charged as zipf (an alias-table draw per copy; a trace's indexing is cheaper)
GATE_VALUE_S = 92e-9  # routing.threshold: per (token, expert) gate value drawn, 256 experts, this VM (gating.py)
DRAW_S = 0.005e-6  # per further draw a copy needs (a repeat the sampler skips)
LIMITED_COPY_S = 0.005e-6  # extra per copy with max_nodes_per_token (the node bookkeeping)
CALL_S = 4e-3  # per routing call (one EP group, layer, micro-batch): routers, traffic matrices
BASE_BYTES = 185e6  # the interpreter with numpy, simpy, pydantic and numba (its LLVM) imported
COPY_BYTES = 10.0  # bytes per routed copy of the largest routing call (expert ids, their slots; 8.8 measured)
EVENT_BYTES = 260.0  # kept per event: intervals, records


@dataclass(frozen=True)
class Budget:
    """What a run may cost; inf turns a limit off."""
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB
    max_minutes: float = DEFAULT_MAX_MINUTES


@dataclass(frozen=True)
class Estimate:
    num_runs: int  # simulations (2 when the step is extended from two shorter ones)
    routed_copies: int  # (token, expert) pairs sampled over all runs
    draws_per_copy: float  # sampler draws per routed copy (1 for an easy law; more for a steep zipf)
    num_collectives: int
    num_events: int
    peak_memory_bytes: float
    wall_s: float

    def describe(self) -> str:
        return (f"{self.wall_s / 60:.1f} min and {self.peak_memory_bytes / GIB:.2f} GiB "
                f"({self.num_events:,} simulated events, {self.routed_copies:,} routed token copies, "
                f"{self.num_collectives:,} collectives, {self.num_runs} run(s))")


def draws_per_copy(s: Scenario) -> float:
    """Expected sampler draws per kept expert of the scenario's law (routing.expected_draws_per_copy);
    zipf at its steepest layer, dirichlet and trace charged as uniform (their law is drawn later)."""
    e, k = s.model.num_experts, s.model.top_k
    if s.routing.distribution == "balanced":
        return 1.0
    if s.routing.distribution == "zipf":
        p = np.arange(1, e + 1, dtype=np.float64) ** -max((s.routing.zipf_alpha, *s.routing.zipf_alpha_per_layer))
    else:
        p = np.full(e, 1.0 / e)
    return expected_draws_per_copy(p, k)


def _micro_batch_runs(s: Scenario) -> list[int]:
    from simulator.extension import sample_micro_batches  # extension reads memory, which reads this package
    sample = sample_micro_batches(s)
    return [s.workload.micro_batches] if sample is None else list(sample)


def estimate(s: Scenario) -> Estimate:
    """Routed copies, collectives, events, peak memory and wall time of simulating `s` (with
    workload.extend_layers, of its two shorter models)."""
    from simulator.extension import sample_layers, with_moe_layers  # extension reads memory, which reads this package

    layers = sample_layers(s)
    if layers is not None:
        parts = [_estimate(with_moe_layers(s, n)) for n in layers]
        return Estimate(sum(e.num_runs for e in parts), sum(e.routed_copies for e in parts), parts[0].draws_per_copy,
                        sum(e.num_collectives for e in parts), sum(e.num_events for e in parts),
                        max(e.peak_memory_bytes for e in parts), sum(e.wall_s for e in parts))
    return _estimate(s)


def _estimate(s: Scenario) -> Estimate:
    from simulator.workload.build import batch_limit  # build reads the scenario package

    par, m, w = s.parallel, s.model, s.workload
    g, p = s.num_gpus, par.pp_size
    layers = 1 if w.scope == "moe_layer" else m.num_layers
    moe_layers = 1 if w.scope == "moe_layer" else m.num_moe_layers
    phases = 1 if not s.backward else 3 if s.training.recompute == "full" else 2
    chunks = batch_limit(s, s.pipeline.chunks)[2]
    ep_groups = g // (p * par.ep_size)  # per stage, counting each expert-TP rank's group
    runs = _micro_batch_runs(s) * s.workload.steps  # every step is its own simulation (simulator/steps.py)
    # summed over stages: (GPUs / p) x layers x micro-batches, also under DualPipe (two chunks of half each)
    mb_total = sum(runs)
    ops = (g // p) * layers * mb_total * chunks * phases
    events = ops * (EVENTS_PER_OP + (EVENTS_PER_TP_OP if par.tp_size > 1 else 0.0))
    calls = ep_groups * moe_layers * mb_total  # routing calls: one per EP group, MoE layer and micro-batch
    copies = calls * par.ep_size * w.tokens_per_gpu * m.top_k
    draws = draws_per_copy(s)
    if draws > MAX_DRAWS_PER_COPY:
        per_layer = max(s.routing.zipf_alpha_per_layer, default=0.0) > s.routing.zipf_alpha
        raise ScenarioError("routing.zipf_alpha_per_layer" if per_layer else "routing.zipf_alpha",
                            list(s.routing.zipf_alpha_per_layer) if per_layer else s.routing.zipf_alpha,
                            f"with model.top_k={m.top_k} of {m.num_experts} experts the router's k-th choice has "
                            f"too little mass to be sampled (about {min(draws, 1e300):.3g} draws per routed copy); "
                            f"lower zipf_alpha or top_k")
    collectives = calls * chunks * 2 * phases  # dispatch and combine; the rings of TP and DP come on top
    copy_s = (COPY_S.get(s.routing.distribution, COPY_S["zipf"])
              + (LIMITED_COPY_S if s.routing.max_nodes_per_token else 0.0)
              + (GATE_VALUE_S * m.num_experts / m.top_k if s.routing.threshold is not None else 0.0))
    per_run = events / len(runs)
    wall = (events * (EVENT_S + EVENT_S_PER_GPU * par.ep_size + EVENT_S_PER_EVENT * per_run)
            + copies * (copy_s + DRAW_S * (draws - 1)) + calls * CALL_S)
    largest_call = par.ep_size * w.tokens_per_gpu * m.top_k  # copies
    memory = BASE_BYTES + COPY_BYTES * largest_call + EVENT_BYTES * per_run
    return Estimate(len(runs), int(copies), draws, int(collectives), int(events), memory, wall)


def check_budget(s: Scenario, budget: Budget) -> Estimate:
    """Refuse (ScenarioError naming the flag) a scenario estimated past the budget."""
    est = estimate(s)
    if est.wall_s > budget.max_minutes * 60:
        raise ScenarioError("--max-minutes", budget.max_minutes,
                            f"{s.name!r} is estimated at {est.describe()}; rule: a run estimated past the time "
                            f"budget is refused; raise it with --max-minutes {_round_up(est.wall_s / 60 * 1.5)} "
                            f"(or inf), or shrink the scenario")
    if est.peak_memory_bytes > budget.max_memory_gb * GIB:
        raise ScenarioError("--max-memory-gb", budget.max_memory_gb,
                            f"{s.name!r} is estimated at {est.describe()}; rule: a run estimated past the memory "
                            f"budget is refused; raise it with --max-memory-gb "
                            f"{_round_up(est.peak_memory_bytes / GIB * 1.5)} (or inf), or shrink the scenario")
    return est


def _round_up(x: float) -> str:
    """A round value above x for the message's suggested flag."""
    if not math.isfinite(x):
        return "inf"
    step = 10 ** math.floor(math.log10(max(x, 1e-9)))
    return f"{math.ceil(x / step) * step:g}"
