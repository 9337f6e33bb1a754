"""Expert placement inside one EP group, as data: physical expert slots on GPUs, and per MoE layer
which logical expert each slot holds (seed 1.1; DeepSeek's EPLB with redundant experts).

A placement is `slot_gpu` [S] (the EP rank holding each physical slot, the same in every layer)
and, per MoE layer, `slot_expert` [S] (the logical expert in each slot). A logical expert with
several slots (replicas) has its tokens split evenly over them, each copy going to one replica
drawn uniformly; the traffic builder, the expert compute, the memory model and the load reports
all read the same placement.

- `round_robin` (seed 1.1): S = E slots, expert i in slot i on GPU i mod G.
- `eplb` (deepseek-ai/EPLB, simulator/workload/eplb.py): S = E + placement.redundant_experts slots,
  slot i on GPU i // (S / G); per layer, the hottest experts replicated and all packed onto GPUs
  to balance the expected load (the routing law's expert probabilities for the first step; the
  previous step's measured loads after it). Hierarchical (expert groups packed onto nodes first)
  when the router is group-limited, with one group per node of the EP group; global otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


def round_robin(num_experts: int, num_gpus: int) -> np.ndarray:
    """Expert i -> GPU (i mod G): one expert per GPU when E <= G, ceil(E/G) per GPU when E > G."""
    if num_experts <= 0 or num_gpus <= 0:
        raise ValueError('"num_experts" and "num_gpus" must be > 0.')
    return np.arange(num_experts) % num_gpus


@dataclass(frozen=True)
class Placement:
    """Physical expert slots of one EP group in one MoE layer."""
    slot_gpu: np.ndarray  # [S] EP rank of each slot
    slot_expert: np.ndarray  # [S] logical expert in each slot
    num_experts: int

    @property
    def num_slots(self) -> int:
        return len(self.slot_gpu)

    @property
    def identity(self) -> bool:
        """One slot per expert, slot e holding expert e: no replica to choose."""
        return self.num_slots == self.num_experts and bool((self.slot_expert == np.arange(self.num_experts)).all())

    def replicas(self) -> np.ndarray:
        """[E] slots each logical expert has."""
        return self._replica_table[0]

    @cached_property
    def _replica_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots per expert [E], slots grouped by expert [S], each expert's first index in that order [E])."""
        count = np.bincount(self.slot_expert, minlength=self.num_experts)
        return count, np.argsort(self.slot_expert, kind="stable"), np.concatenate([[0], np.cumsum(count)[:-1]])

    def expert_gpu(self) -> np.ndarray:
        """[E] the GPU of each expert's first slot (group-limited routing reads experts' nodes)."""
        _, first = np.unique(self.slot_expert, return_index=True)
        return self.slot_gpu[first]

    def slots_of(self, experts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The slot each routed (token, expert) copy goes to: the expert's own slot, or one of its
        replicas drawn uniformly (so a replicated expert's tokens split evenly over its copies)."""
        if self.identity:
            return experts
        if (experts < 0).any():  # dropped copies stay dropped
            kept = experts >= 0
            return np.where(kept, self.slots_of(np.where(kept, experts, 0), rng), -1).astype(experts.dtype)
        count, order, start = self._replica_table
        pick = (rng.random(experts.shape) * count[experts]).astype(np.int64)
        return order[start[experts] + pick].astype(experts.dtype)

    def expert_totals(self, slot_tokens: np.ndarray) -> np.ndarray:
        """[E] tokens per logical expert from [S] tokens per slot."""
        return np.bincount(self.slot_expert, weights=slot_tokens, minlength=self.num_experts).astype(np.int64)


def round_robin_placement(num_experts: int, num_gpus: int) -> Placement:
    return Placement(round_robin(num_experts, num_gpus), np.arange(num_experts), num_experts)


def slot_layout(strategy: str, num_experts: int, redundant: int, num_gpus: int) -> np.ndarray:
    """[S] the GPU of each physical slot, the same in every layer: EPLB's slot i on GPU i // (S / G);
    round-robin's and topology-aware's slot i on GPU i mod G."""
    if strategy == "eplb":
        slots = num_experts + redundant
        return np.arange(slots) // (slots // num_gpus)
    return round_robin(num_experts, num_gpus)


def eplb_placement(expected_load: np.ndarray, num_slots: int, num_gpus: int, num_nodes: int,
                   hierarchical: bool) -> Placement:
    """DeepSeek's EPLB over one layer's expected loads: slot i on GPU i // (S / G)."""
    from simulator.workload.eplb import rebalance_experts

    groups = num_nodes if hierarchical else 1
    phy2log, _, _ = rebalance_experts(np.asarray(expected_load, dtype=np.float64)[None, :], num_slots, groups,
                                      num_nodes if hierarchical else 1, num_gpus)
    num_experts = len(expected_load)
    slot_gpu = slot_layout("eplb", num_experts, num_slots - num_experts, num_gpus)
    return Placement(slot_gpu, np.asarray(phy2log[0], dtype=np.int64), num_experts)


STRATEGIES = ("round_robin", "eplb")
