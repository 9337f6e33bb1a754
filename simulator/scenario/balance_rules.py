"""Rules of the load-balancing keys: threshold gating, trace replay, EPLB rebalancing (issue 12)."""
from __future__ import annotations

from simulator.errors import ScenarioError
from simulator.scenario.memory import moe_layers_in_scope


def check_load_balancing(s) -> None:
    r, pl = s.routing, s.placement
    if r.distribution == "trace" and r.trace is None:
        raise ScenarioError("routing.distribution", "trace", "replays a file: set routing.trace to its path")
    if r.trace is not None:
        if r.distribution != "trace":
            raise ScenarioError("routing.trace", r.trace, f"is read with routing.distribution=trace, not {r.distribution}")
        if r.adaptive_alpha > 0:
            raise ScenarioError("routing.adaptive_alpha", r.adaptive_alpha,
                                "adjusts a gate's law; a trace replays recorded choices (routing.distribution=trace)")
        from simulator.workload.routing_trace import check_trace  # pandas, on demand
        check_trace(s, moe_layers_in_scope(s))
    if r.threshold is not None:
        if r.distribution in ("balanced", "trace"):
            raise ScenarioError("routing.threshold", r.threshold, f"gates softmax scores; routing.distribution="
                                f"{r.distribution} assigns experts without them (use uniform, zipf or dirichlet)")
        if r.max_nodes_per_token is not None:
            raise ScenarioError("routing.threshold", r.threshold,
                                "is simulated without group-limited routing (routing.max_nodes_per_token: null)")
    k = pl.rebalance_every_steps
    if k is not None:
        if pl.strategy != "eplb":
            raise ScenarioError("placement.rebalance_every_steps", k,
                                f"re-solves EPLB's placement: needs placement.strategy=eplb, not {pl.strategy}")
        if k >= s.workload.steps:
            raise ScenarioError("placement.rebalance_every_steps", k,
                                f"must be < workload.steps={s.workload.steps}, or no step would see a rebalanced placement")
