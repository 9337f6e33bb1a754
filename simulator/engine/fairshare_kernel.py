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


@njit(cache=True)
def component_labels(entry_flow, entry_port, num_flows, num_ports):
    """The connected components of the flow-port graph (flows joined by the ports they share):
    (label per flow, label per port, -1 for a port no flow uses). Labels count from 0 in the order
    of each component's first flow. Breadth-first over port -> entries and flow -> entries indexes
    built here, O(entries)."""
    n = entry_flow.shape[0]
    port_start = np.zeros(num_ports + 1, np.int64)
    flow_start = np.zeros(num_flows + 1, np.int64)
    for i in range(n):
        port_start[entry_port[i] + 1] += 1
        flow_start[entry_flow[i] + 1] += 1
    for p in range(num_ports):
        port_start[p + 1] += port_start[p]
    for f in range(num_flows):
        flow_start[f + 1] += flow_start[f]
    port_entries = np.empty(n, np.int64)
    flow_entries = np.empty(n, np.int64)
    port_fill = port_start[:-1].copy()
    flow_fill = flow_start[:-1].copy()
    for i in range(n):
        port_entries[port_fill[entry_port[i]]] = i
        port_fill[entry_port[i]] += 1
        flow_entries[flow_fill[entry_flow[i]]] = i
        flow_fill[entry_flow[i]] += 1
    flow_label = np.full(num_flows, -1, np.int64)
    port_label = np.full(num_ports, -1, np.int64)
    queue = np.empty(num_flows, np.int64)
    label = 0
    for first in range(num_flows):
        if flow_label[first] >= 0:
            continue
        flow_label[first] = label
        queue[0] = first
        head, tail = 0, 1
        while head < tail:
            f = queue[head]
            head += 1
            for k in range(flow_start[f], flow_start[f + 1]):
                p = entry_port[flow_entries[k]]
                if port_label[p] >= 0:
                    continue
                port_label[p] = label
                for j in range(port_start[p], port_start[p + 1]):
                    g = entry_flow[port_entries[j]]
                    if flow_label[g] < 0:
                        flow_label[g] = label
                        queue[tail] = g
                        tail += 1
        label += 1
    return flow_label, port_label


@njit(cache=True)
def drop_flows(finished, entry_flow, entry_port, entry_weight, dirty, port_entries):
    """The entries of the flows still running (not `finished`), in their order, with their flows
    renumbered in order (a finished flow's index is taken by the next one); the finished flows'
    ports marked in `dirty` and their entries taken off `port_entries`, in place. One pass."""
    num_flows = finished.shape[0]
    remap = np.empty(num_flows, np.int64)
    kept = 0
    for f in range(num_flows):
        remap[f] = kept
        if not finished[f]:
            kept += 1
    n = entry_flow.shape[0]
    flow = np.empty(n, np.int64)
    port = np.empty(n, np.int64)
    weight = np.empty(n)
    k = 0
    for i in range(n):
        f, p = entry_flow[i], entry_port[i]
        if finished[f]:
            dirty[p] = True
            port_entries[p] -= 1
        else:
            flow[k], port[k], weight[k] = remap[f], p, entry_weight[i]
            k += 1
    return flow[:k].copy(), port[:k].copy(), weight[:k].copy()
