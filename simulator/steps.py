"""Many consecutive steps (workload.steps): per-expert load monitoring and the seed's adaptive gating.

Seed 2.3: after each step, per expert e of every MoE layer (and EP group, whose tokens route
independently),

    Load_e = tokens_processed_e / total_tokens_sent,   avg_load = mean_e Load_e = 1 / E

and with routing.adaptive_alpha = alpha > 0 the next step's gate is

    g'_e = g_e x (1 + alpha x (1 - Load_e / avg_load)).

epsim applies it cumulatively: step t+1's gate is step t's scaled again by step t's loads, as a
bias that keeps correcting (DeepSeek-V3's auxiliary-loss-free balancing updates its routing bias
the same way every step); applied to the untouched gate each time, a corrected step would undo its
own correction and the loads would oscillate. A factor is floored at MIN_FACTOR, so an expert more
than 1 + 1/alpha times as loaded as the mean keeps a positive gate (named in provenance). Scaling
g_e by c_e is adding log c_e to expert e's logit, so the router samples the same top-k law with
probabilities proportional to p_e x c_e (simulator/workload/routing.py). Each step draws fresh
tokens; step 0 is the single-step run bit for bit, and alpha = 0 leaves every gate as it is.
"""
from __future__ import annotations

import numpy as np

MIN_FACTOR = 0.05


def expert_tokens(counts: dict, placements: dict | None) -> dict[tuple[int, int], np.ndarray]:
    """(EP group, MoE layer) -> tokens per logical expert over the step's micro-batches and chunks
    (a replicated expert's slots summed)."""
    sums: dict[tuple[int, int], np.ndarray] = {}
    for (group, layer, _mb, _chunk), c in counts.items():
        tokens = np.asarray(c.expert_tokens, dtype=np.float64)
        sums[group, layer] = sums[group, layer] + tokens if (group, layer) in sums else tokens.copy()
    if placements:
        sums = {key: placements[key].expert_totals(tokens).astype(np.float64) for key, tokens in sums.items()}
    return sums


def expert_loads(tokens: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """(EP group, MoE layer) -> Load_e (sums to 1) from expert_tokens' totals. A layer whose tokens
    reached no expert (threshold gating) tells nothing about its experts: it counts as balanced, so
    the adaptive gate leaves its scales alone."""
    return {key: per_expert / per_expert.sum() if per_expert.sum() > 0 else np.full(len(per_expert), 1 / len(per_expert))
            for key, per_expert in tokens.items()}


def max_over_mean(loads: dict[tuple[int, int], np.ndarray]) -> float:
    """The busiest expert's load over the mean, averaged over MoE layers and EP groups."""
    return float(np.mean([load.max() * len(load) for load in loads.values()])) if loads else 1.0


def summed_over_groups(tokens: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """Each (EP group, MoE layer) -> the layer's tokens per expert over all its EP groups. In
    training the router is one parameter kept in sync over the data-parallel replicas, so its gate
    adapts to the whole step's load (as DeepSeek-V3's bias update reads the batch's), and EPLB
    rebalances every replica of a layer alike (simulator/rebalance.py), the same in every group."""
    by_layer: dict[int, np.ndarray] = {}
    for (group, layer) in sorted(tokens):
        by_layer[layer] = by_layer[layer] + tokens[group, layer] if layer in by_layer else tokens[group, layer].copy()
    return {(group, layer): by_layer[layer] for group, layer in tokens}


def adapt(scale: dict | None, loads: dict[tuple[int, int], np.ndarray], alpha: float) -> dict:
    """Step t+1's gate scales from step t's (None: all 1) and its loads."""
    out = {}
    for key, load in loads.items():
        factor = np.maximum(1.0 + alpha * (1.0 - load * len(load)), MIN_FACTOR)
        out[key] = (scale[key] if scale else 1.0) * factor
    return out


def load_rows(step: int, tokens: dict[tuple[int, int], np.ndarray],
              loads: dict[tuple[int, int], np.ndarray]) -> list[dict]:
    """expert_load.csv rows of one step: tokens and Load_e per (EP group, MoE layer, expert)."""
    return [{"step": step, "ep_group": group, "moe_layer": layer, "expert": e, "tokens": int(tokens[group, layer][e]),
             "load": float(load[e]), "load_over_mean": float(load[e] * len(load))}
            for (group, layer), load in sorted(loads.items()) for e in range(len(load))]
