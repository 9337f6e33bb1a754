"""Max-min fair rates for flows that each load several ports in fixed proportions.

A flow f moves r_f bytes/s of its own measure; it puts w_fp * r_f bytes/s on port p. Progressive
filling: raise all unfrozen flows' rates together until some port's capacity is used up, freeze the
flows through that port, repeat. Vectorised over the sparse (flow, port, weight) entries, so one
solve costs O(entries) per bottleneck level, and there are few levels in practice.
"""
from __future__ import annotations

import numpy as np

LEVEL_RTOL = 1e-9  # ports saturating within this relative level are frozen together


def max_min_rates(entry_flow: np.ndarray, entry_port: np.ndarray, entry_weight: np.ndarray,
                  capacity: np.ndarray, num_flows: int) -> np.ndarray:
    """Rates (flow units per second) of num_flows flows; every flow must have >= 1 entry."""
    num_ports = len(capacity)
    rates = np.zeros(num_flows)
    frozen = np.zeros(num_flows, dtype=bool)
    residual = np.asarray(capacity, dtype=np.float64).copy()
    live = np.ones(len(entry_flow), dtype=bool)
    level = 0.0
    while live.any():
        demand = np.bincount(entry_port[live], entry_weight[live], minlength=num_ports)
        used = demand > 0
        headroom = np.full(num_ports, np.inf)
        headroom[used] = np.maximum(residual[used], 0.0) / demand[used]
        step = headroom.min()
        level += step
        residual -= step * demand
        saturated = used & (headroom <= step + LEVEL_RTOL * level)
        newly = np.unique(entry_flow[live & saturated[entry_port]])
        rates[newly] = level
        frozen[newly] = True
        live &= ~frozen[entry_flow]
    return rates
