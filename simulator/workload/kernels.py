"""Compiled per-token loops of routing and traffic counting (numba), the two phases that dominate a
large-EP step's build: a token's k experts are a handful of scalar steps, which numpy can only
express as many passes over million-element arrays.

`route_tokens` samples routing.py's law (see its docstring), one token after another: draws from the
routing probabilities with replacement, repeats skipped (= without replacement, Plackett-Luce), and,
under a node limit, once a token's experts span `limit` nodes its later draws are restricted to those
nodes (node by probability mass, then expert inside the node), which is the same law as drawing from
all experts and skipping the other nodes. The draws come from the caller's numpy Generator.

`count_chunk_into` counts what seed 2.2's batching by destination sends: per (source, destination)
GPU the distinct tokens and the (token, expert) copies, per (source, destination node) the distinct
tokens, and per slot the copies; a slot of -1 (dropped or ungated) counts nowhere.

Compiled on first use and cached next to this file (numba's cache=True). The two entry points
release the GIL (nogil), so micro-batches route and count on several threads (build.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def alias_table(p):
    """Walker's alias table of the probabilities p (Vose's construction): draw a column i uniformly,
    keep it with probability keep[i], else take alias[i]; each outcome's mass is exactly p's (up to
    float64 rounding). One uniform, no search, per draw."""
    n = p.shape[0]
    keep = p * (n / p.sum())
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = nl = 0
    for i in range(n):
        if keep[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        lo = small[ns]
        hi = large[nl - 1]
        alias[lo] = hi
        keep[hi] -= 1.0 - keep[lo]
        if keep[hi] < 1.0:
            nl -= 1
            small[ns] = hi
            ns += 1
    for j in range(nl):  # what is left is 1 up to rounding
        keep[large[j]] = 1.0
    for j in range(ns):
        keep[small[j]] = 1.0
    return keep, alias


@njit(cache=True)
def _alias_draw(u, keep, alias, offset, n):
    """The outcome (offset + local index) of uniform u under the alias table keep/alias[offset:offset + n]:
    u x n's integer part picks the column, its fraction decides between the column and its alias."""
    x = u * n
    i = min(int(x), n - 1)
    return offset + i if x - i < keep[offset + i] else offset + alias[offset + i]


@njit(cache=True)
def _insert(items, count, value):
    """Append value to the set items[:count] unless it is there; the set's new size."""
    for j in range(count):
        if items[j] == value:
            return count
    items[count] = value
    return count + 1


@njit(cache=True, nogil=True)
def route_tokens(rng, out, uniform, keep, alias, expert_node, limit, node_mass, within_keep, within_alias,
                 experts_by_node, max_draws):
    """Fill out [n, k] with each token's experts in order of preference. uniform: every expert equally
    likely (no tables); keep / alias [E]: the routing probabilities' alias table (alias_table); limit:
    the node limit (0: none), with node_mass [N] and, per node, the alias table of its experts'
    probabilities (within_keep / within_alias [N x experts per node], indices local to the node) over
    experts_by_node [N x experts per node]. Returns -1, or the first token that took max_draws draws
    without finding k distinct experts (the rest of out is then undefined)."""
    n, k = out.shape
    num_experts = expert_node.shape[0]
    per_node = experts_by_node.shape[0] // node_mass.shape[0]
    nodes = np.empty(max(limit, 1), np.int64)
    for t in range(n):
        filled = 0
        num_nodes = 0
        draws = 0
        while filled < k:
            draws += 1
            if draws > max_draws:
                return t
            if limit > 0 and num_nodes == limit:
                if uniform:  # every node and expert equally likely
                    node = nodes[int(rng.random() * limit)]
                    e = experts_by_node[node * per_node + int(rng.random() * per_node)]
                else:  # a node of the token's by mass, then an expert inside it
                    total = 0.0
                    for j in range(num_nodes):
                        total += node_mass[nodes[j]]
                    u = rng.random() * total
                    j, acc = 0, node_mass[nodes[0]]
                    while acc <= u and j < num_nodes - 1:
                        j += 1
                        acc += node_mass[nodes[j]]
                    node = nodes[j]
                    local = _alias_draw(rng.random(), within_keep, within_alias, node * per_node, per_node)
                    e = experts_by_node[local]
            elif uniform:
                e = int(rng.random() * num_experts)
            else:
                e = _alias_draw(rng.random(), keep, alias, 0, num_experts)
            repeat = False
            for j in range(filled):
                if out[t, j] == e:
                    repeat = True
                    break
            if repeat:
                continue
            if limit > 0:
                num_nodes = _insert(nodes, num_nodes, expert_node[e])
            out[t, filled] = e
            filled += 1
    return -1


@njit(cache=True, nogil=True)
def count_chunk_into(slots, tokens_per_gpu, lo, hi, slot_gpu, member_node, pair_tokens, pair_copies,
                     node_tokens, slot_tokens):
    """Add the counts of tokens lo..hi-1 of every source GPU (slots [P x tokens_per_gpu, k], EP-rank-major)."""
    k = slots.shape[1]
    num_ranks = pair_tokens.shape[0]
    gpus = np.empty(k, np.int64)
    nodes = np.empty(k, np.int64)
    for src in range(num_ranks):
        for t in range(src * tokens_per_gpu + lo, src * tokens_per_gpu + hi):
            num_gpus = 0
            num_nodes = 0
            for j in range(k):
                s = slots[t, j]
                if s < 0:
                    continue
                slot_tokens[s] += 1
                g = slot_gpu[s]
                pair_copies[src, g] += 1
                grown = _insert(gpus, num_gpus, g)
                if grown == num_gpus:  # this token already reached GPU g
                    continue
                num_gpus = grown
                pair_tokens[src, g] += 1
                grown = _insert(nodes, num_nodes, member_node[g])
                if grown > num_nodes:
                    num_nodes = grown
                    node_tokens[src, member_node[g]] += 1
