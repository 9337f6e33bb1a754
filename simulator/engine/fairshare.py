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
                  capacity: np.ndarray, num_flows: int, cap: np.ndarray | None = None) -> np.ndarray:
    """Rates (flow units per second) of num_flows flows; every flow must have >= 1 entry; cap: each
    flow's own rate cap (inf or None: none)."""
    return max_min_levels(entry_flow, entry_port, entry_weight, capacity, num_flows, cap)[0]


def max_min_levels(entry_flow: np.ndarray, entry_port: np.ndarray, entry_weight: np.ndarray,
                   capacity: np.ndarray, num_flows: int, cap: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(rates, bottleneck levels the solve took); raises SolverStalled past level_bound(num_flows)."""
    from simulator.engine.fairshare_kernel import progressive_filling

    residual = np.array(capacity, dtype=np.float64)
    cap = np.full(num_flows, np.inf) if cap is None else np.asarray(cap, dtype=np.float64)
    rates, num_levels = progressive_filling(np.asarray(entry_flow, dtype=np.int64), np.asarray(entry_port, dtype=np.int64),
                                            np.asarray(entry_weight, dtype=np.float64), residual, num_flows,
                                            level_bound(num_flows), LEVEL_RTOL, cap)
    if num_levels < 0:
        raise SolverStalled(f"max-min fair share took {-num_levels} levels for {num_flows} flows over "
                            f"{len(residual)} ports (each level freezes >= 1 flow); non-finite capacities: "
                            f"{int((~np.isfinite(np.asarray(capacity, dtype=np.float64))).sum())}")
    return rates, num_levels


def resolve_reached(entry_flow: np.ndarray, entry_port: np.ndarray, entry_weight: np.ndarray,
                    capacity: np.ndarray, rates: np.ndarray, cap: np.ndarray, reached: np.ndarray) -> int:
    """Re-solve, in place in `rates`, only the `reached` flows: max-min fair shares decompose over
    the connected components of the flow-port graph (fairshare_kernel.component_labels), so the
    components a change did not touch keep their rates; `reached` must be a union of components.
    Returns the flows solved.

    The reached entries keep their order and the flows their relative order, so when every flow is
    reached the solve is the whole-network solve, number for number. When only some are, the others
    keep the rates of an earlier solve in which other components may have taken part: the same
    max-min shares up to rounding (and LEVEL_RTOL's joint freezing of ports that saturate within
    1e-9 of each other's level)."""
    num_flows = len(rates)
    count = int(reached.sum())
    if count == num_flows:
        rates[:] = max_min_rates(entry_flow, entry_port, entry_weight, capacity, num_flows, cap)
    elif count:
        keep = reached[entry_flow]
        index = np.cumsum(reached) - 1  # the reached flows, renumbered in their order
        rates[reached] = max_min_rates(index[entry_flow[keep]], entry_port[keep], entry_weight[keep], capacity,
                                       count, cap[reached])
    return count
