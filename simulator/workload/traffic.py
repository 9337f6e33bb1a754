"""From routed tokens to who sends what to whom (seed 2.2: batching by destination GPU).

For one EP group, one MoE layer, one micro-batch and one chunk, `ChunkTraffic` holds token counts
per GPU pair; the network model turns them into bytes along each all-to-all algorithm's paths.
"""
from __future__ import annotations

import numpy as np


class ChunkTraffic:
    """Token counts of one chunk. The pair counts are kept sparse: only the (src, dst) pairs that
    carry tokens, in row-major order (at EP 1024 DeepSeek-V3's 256 experts leave three quarters of
    the destinations empty, and a dense int64 P x P per chunk and layer was gigabytes); integer
    counts are stored in the narrowest of int32 / int64 that holds them. Built from the dense counts:
        pair_tokens  [P, P] distinct tokens of src that have >= 1 expert on dst
        pair_copies  [P, P] (token, expert) pairs from src to experts on dst (no dedupe)
        node_tokens  [P, N] distinct tokens of src that have >= 1 expert on node n
        expert_tokens [E] tokens routed to each expert
    """

    __slots__ = ("num_ranks", "pair_index", "pair_token_count", "pair_copy_count", "node_tokens", "expert_tokens")

    def __init__(self, pair_tokens: np.ndarray, pair_copies: np.ndarray, node_tokens: np.ndarray,
                 expert_tokens: np.ndarray):
        pair_tokens, pair_copies = np.asarray(pair_tokens), np.asarray(pair_copies)
        p = pair_tokens.shape[0]
        index = np.flatnonzero((pair_tokens != 0) | (pair_copies != 0))
        self.num_ranks = p
        self.pair_index = index.astype(np.int32 if p * p <= np.iinfo(np.int32).max else np.int64)
        self.pair_token_count = _narrow(pair_tokens.ravel()[index])
        self.pair_copy_count = _narrow(pair_copies.ravel()[index])
        self.node_tokens = _narrow(np.asarray(node_tokens))
        self.expert_tokens = expert_tokens

    def pairs(self, copies: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, count) of the pairs that carry tokens, row-major: copies or distinct tokens."""
        index = self.pair_index.astype(np.int64)
        return index // self.num_ranks, index % self.num_ranks, self.pair_copy_count if copies else self.pair_token_count

    def _dense(self, count: np.ndarray) -> np.ndarray:
        out = np.zeros(self.num_ranks * self.num_ranks, dtype=_wide(count.dtype))
        out[self.pair_index] = count
        return out.reshape(self.num_ranks, self.num_ranks)

    @property
    def pair_tokens(self) -> np.ndarray:
        return self._dense(self.pair_token_count)

    @property
    def pair_copies(self) -> np.ndarray:
        return self._dense(self.pair_copy_count)

    def _received(self, count: np.ndarray) -> np.ndarray:
        dst = self.pair_index.astype(np.int64) % self.num_ranks
        total = np.bincount(dst, count, minlength=self.num_ranks)
        return total.astype(np.int64) if np.issubdtype(count.dtype, np.integer) else total

    @property
    def recv_copies(self) -> np.ndarray:
        """Token copies each GPU's experts process."""
        return self._received(self.pair_copy_count)

    @property
    def recv_tokens(self) -> np.ndarray:
        """Distinct tokens each GPU receives (once per destination GPU)."""
        return self._received(self.pair_token_count)


def _narrow(counts: np.ndarray) -> np.ndarray:
    """Integer counts as int32 where they fit (exact either way), anything else as it is."""
    if np.issubdtype(counts.dtype, np.integer) and (counts.size == 0 or (counts.min() >= 0 and counts.max()
                                                                          <= np.iinfo(np.int32).max)):
        return counts.astype(np.int32)
    return counts


def _wide(dtype) -> type:
    return np.int64 if np.issubdtype(dtype, np.integer) else dtype


def chunk_bounds(num_tokens: int, num_chunks: int) -> list[tuple[int, int]]:
    """Split a GPU's tokens into num_chunks contiguous, as-equal-as-possible slices."""
    edges = np.linspace(0, num_tokens, num_chunks + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


def micro_batch_traffic(experts: np.ndarray, tokens_per_gpu: int, num_chunks: int, expert_gpu: np.ndarray,
                        member_node: np.ndarray, num_experts: int) -> list[ChunkTraffic]:
    """Per-chunk traffic of one micro-batch: `experts` is [P * tokens_per_gpu, k], EP-rank-major, and
    expert_gpu [num_experts] their EP ranks; member_node[r] is the node of EP rank r, numbered inside
    the group. A copy of -1 was dropped (expert capacity) or ungated and counts nowhere."""
    from simulator.workload.kernels import count_chunk_into

    p = len(member_node)
    num_nodes = int(member_node.max()) + 1
    experts = np.ascontiguousarray(experts)
    expert_gpu, member_node = np.asarray(expert_gpu, dtype=np.int64), np.asarray(member_node, dtype=np.int64)
    out = []
    for lo, hi in chunk_bounds(tokens_per_gpu, num_chunks):
        tokens, copies = np.zeros((p, p), np.int64), np.zeros((p, p), np.int64)
        nodes, per_expert = np.zeros((p, num_nodes), np.int64), np.zeros(num_experts, np.int64)
        count_chunk_into(experts, tokens_per_gpu, lo, hi, expert_gpu, member_node, tokens, copies, nodes, per_expert)
        out.append(ChunkTraffic(pair_tokens=tokens, pair_copies=copies, node_tokens=nodes, expert_tokens=per_expert))
    return out
