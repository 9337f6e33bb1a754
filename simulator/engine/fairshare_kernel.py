"""The progressive-filling loop of fairshare.py, compiled (numba): a large-EP step solves tens of
thousands of fair shares over up to a million (flow, port) entries, a few levels each.

Each level sums the live entries' weights per port in entry order, as a sequential bincount would,
so the rates are the same floating-point numbers whatever the implementation; dropping a frozen
flow's entries leaves every later sum unchanged (their weights would add 0).

A flow may have its own rate cap (cap[f], inf: none): the level then also stops where the lowest
live cap is reached, and the flows at it freeze there, as if each had a private port of that
capacity. With every cap infinite the levels, and so the rates, are bit for bit those without caps.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def progressive_filling(entry_flow, entry_port, entry_weight, residual, num_flows, max_levels, rtol, cap):
    """(rates, levels) of the max-min fair share; residual [ports] is the capacity, used up in place;
    cap [flows] each flow's own rate cap (inf: none). levels < 0: the solve passed max_levels
    (-levels taken) and the rates are incomplete."""
    num_ports = residual.shape[0]
    rates = np.zeros(num_flows)
    for p in range(num_ports):  # a NaN or infinite capacity has no fair share (a cap would hide it)
        if not np.isfinite(residual[p]):
            return rates, -1
    flow, port, weight = entry_flow.copy(), entry_port.copy(), entry_weight.copy()
    n = flow.shape[0]
    demand = np.zeros(num_ports)
    headroom = np.empty(num_ports)
    newly = np.zeros(num_flows, np.bool_)
    level = 0.0
    levels = 0
    mincap = np.inf  # the lowest cap among the live flows, kept up by the compaction pass
    for i in range(n):
        if cap[flow[i]] < mincap:
            mincap = cap[flow[i]]
    while n > 0:
        levels += 1
        if levels > max_levels:
            return rates, -levels
        demand[:] = 0.0
        for i in range(n):
            demand[port[i]] += weight[i]
        step = np.inf
        for p in range(num_ports):
            if demand[p] > 0:
                headroom[p] = max(residual[p], 0.0) / demand[p]
                if headroom[p] < step:
                    step = headroom[p]
            else:
                headroom[p] = np.inf
        if mincap - level < step:  # a live flow's own cap comes first
            step = max(mincap - level, 0.0)
        level += step
        for p in range(num_ports):
            residual[p] -= step * demand[p]
        limit = step + rtol * level
        for i in range(n):  # the flows through a port that saturated at this level freeze at it
            if (demand[port[i]] > 0 and headroom[port[i]] <= limit) or (cap[flow[i]] < np.inf
                                                                        and cap[flow[i]] <= level + rtol * level):
                newly[flow[i]] = True
                rates[flow[i]] = level
        kept = 0
        mincap = np.inf
        for i in range(n):  # keep the entries of flows still rising, in their order
            if not newly[flow[i]]:
                flow[kept], port[kept], weight[kept] = flow[i], port[i], weight[i]
                if cap[flow[i]] < mincap:
                    mincap = cap[flow[i]]
                kept += 1
        n = kept
        newly[:] = False
    return rates, levels
