"""Max-min fair rates for flows that each load several ports in fixed proportions.

A flow f moves r_f bytes/s of its own measure; it puts w_fp * r_f bytes/s on port p. Progressive
filling: raise all unfrozen flows' rates together until some port's capacity is used up, freeze the
flows through that port, repeat. Vectorised over the sparse (flow, port, weight) entries, so one
solve costs O(entries) per bottleneck level, and there are few levels in practice.

Every level freezes at least the flows through the port that set it, so a solve has at most one
level per flow; a solve past twice that (a NaN capacity, an engine bug) raises SolverStalled
instead of spinning.
"""
from __future__ import annotations

import numpy as np

LEVEL_RTOL = 1e-9  # ports saturating within this relative level are frozen together
LEVEL_SLACK = 8  # levels allowed beyond 2 x flows: a margin, never needed


class SolverStalled(RuntimeError):
    """Internal error: a solver passed the iteration bound its input implies. Never a property of a
    valid scenario (tests/test_reliability.py shows valid inputs stay far below the bounds).
    `batches` holds the flow batches (collectives) that were in flight, for the caller to name."""

    def __init__(self, message: str, batches: tuple = ()):
        super().__init__(message)
        self.batches = batches


def level_bound(num_flows: int) -> int:
    """Levels a solve may take: one per flow is the most a valid input needs, doubled, plus a margin."""
    return 2 * num_flows + LEVEL_SLACK


def max_min_rates(entry_flow: np.ndarray, entry_port: np.ndarray, entry_weight: np.ndarray,
                  capacity: np.ndarray, num_flows: int) -> np.ndarray:
    """Rates (flow units per second) of num_flows flows; every flow must have >= 1 entry."""
    return max_min_levels(entry_flow, entry_port, entry_weight, capacity, num_flows)[0]


def max_min_levels(entry_flow: np.ndarray, entry_port: np.ndarray, entry_weight: np.ndarray,
                   capacity: np.ndarray, num_flows: int) -> tuple[np.ndarray, int]:
    """(rates, bottleneck levels the solve took); raises SolverStalled past level_bound(num_flows)."""
    num_ports = len(capacity)
    rates = np.zeros(num_flows)
    residual = np.asarray(capacity, dtype=np.float64).copy()
    # A frozen flow's entries keep their place with weight 0: every level's port demands are then
    # the same sums in the same order as over the live entries alone (x + 0.0 == x), without
    # compacting the entry arrays.
    weight = np.array(entry_weight, dtype=np.float64)
    live = np.ones(len(entry_flow), dtype=bool)
    newly = np.zeros(num_flows, dtype=bool)
    level = 0.0
    num_levels = 0
    num_live = len(entry_flow)
    while num_live:
        num_levels += 1
        if num_levels > level_bound(num_flows):
            raise SolverStalled(f"max-min fair share took {num_levels} levels for {num_flows} flows over "
                                f"{num_ports} ports (each level freezes >= 1 flow); non-finite capacities: "
                                f"{int((~np.isfinite(residual)).sum())}")
        demand = np.bincount(entry_port, weight, minlength=num_ports)
        used = demand > 0
        headroom = np.full(num_ports, np.inf)
        headroom[used] = np.maximum(residual[used], 0.0) / demand[used]
        step = headroom.min()
        level += step
        residual -= step * demand
        saturated = used & (headroom <= step + LEVEL_RTOL * level)
        newly[:] = False
        newly[entry_flow[saturated[entry_port] & live]] = True
        rates[newly] = level
        dead = newly[entry_flow]
        weight[dead] = 0.0
        live &= ~dead
        num_live -= int(np.count_nonzero(dead))
    return rates, num_levels
