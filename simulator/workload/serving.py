"""Decode's KV lengths per GPU: with workload.context_len_distribution uniform, each sequence's KV
length is drawn on [1, 2 x context_len - 1] (mean context_len), so the GPUs' attention over their
own sequences (DP-attention; with TP-attention the TP group's) takes different times and the MoE
layers wait for the slowest."""
from __future__ import annotations

import numpy as np

from simulator.scenario.serving import sequences_per_micro_batch


def context_spread(s) -> dict:
    """(GPU, micro-batch) -> the mean KV length of the sequences it attends over / context_len; empty
    when every sequence is context_len long (or outside decode). Drawn from the routing seed, per
    TP group (its GPUs attend over the same sequences) and micro-batch."""
    w = s.workload
    if w.mode != "decode" or w.context_len_distribution == "fixed":
        return {}
    c = w.context_len
    n = sequences_per_micro_batch(s) * s.parallel.tp_size
    out = {}
    for group, members in enumerate(s.ranks.tp_groups):
        for mb in range(w.micro_batches):
            rng = np.random.default_rng([s.routing.seed, group, mb, 11])
            scale = float(rng.integers(1, 2 * c, size=n).mean()) / c
            out.update({(int(g), mb): scale for g in np.atleast_1d(members)})
    return out
