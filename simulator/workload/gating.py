"""Seed 2.1's threshold form of the gate: TopK = {e | g_e(t) >= threshold}, sorted by g_e desc, capped at top_k.

The gate is the same one routing.py samples (logits z_te = b_e + G_te, a per-expert bias plus
Gumbel(0, 1) noise for the token's representation), but the threshold needs the gate values
g_te = softmax(z_t)_e themselves, not only which experts rank first, so this router draws them:
exp(G) for G ~ Gumbel(0, 1) is 1 / X with X ~ Exp(1), so g_te = (p_e / X_te) / sum_j (p_j / X_tj)
with p = softmax(b) (the Router's probabilities, adaptive gate and drift included). That is O(E)
work per token against the top-k sampler's O(k): threshold gating is opt-in.

A token keeps its experts whose gate reaches the threshold, at most top_k of them, best first.
The seed's set can be empty (no expert of the token reaches the threshold): epsim follows the
formula as written, and such a token goes through no routed expert (its shared experts and the
residual still run). A threshold <= 1 / num_experts keeps at least one expert for every token,
since the largest of E gates summing to 1 is at least 1 / E. The copies left out are marked -1,
as capacity drops are: they are neither sent nor computed, and MFU counts the copies kept.
"""
from __future__ import annotations

import numpy as np

MIN_EXP = np.float32(1e-30)
GATE_BLOCK_VALUES = 1 << 22  # gate values drawn at once (16 MiB of float32): bounds memory at EP 1024


def gate_values(probabilities: np.ndarray, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """[num_tokens, E] float32 softmax gates of fresh tokens under the Gumbel gate with softmax(b) = p."""
    x = rng.standard_exponential((num_tokens, len(probabilities)), dtype=np.float32)
    # float32 draws can be exactly 0 (an infinite weight, then NaN gates): floored at MIN_EXP, which an
    # Exp(1) draw falls below with probability 1e-30, so the law is unchanged while sums stay finite
    w = np.asarray(probabilities, dtype=np.float32)[None, :] / np.maximum(x, MIN_EXP)
    return w / w.sum(axis=1, keepdims=True)


def threshold_top_k(gates: np.ndarray, top_k: int, threshold: float) -> np.ndarray:
    """[T, top_k] int32 expert ids, best first, -1 where the k-th best gate is below threshold."""
    k = min(top_k, gates.shape[1])
    top = np.argpartition(-gates, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(gates, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    return np.where(values >= np.float32(threshold), top, -1).astype(np.int32)


class ThresholdRouter:
    """A Router's law (its `probabilities`), gated by seed 2.1's threshold."""

    def __init__(self, law, threshold: float):
        self.probabilities = law.probabilities
        self.num_experts, self.top_k = law.num_experts, law.top_k
        self.threshold = threshold

    def route(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Expert ids [num_tokens, top_k] (-1: below the threshold), in order of preference."""
        out = np.empty((num_tokens, self.top_k), dtype=np.int32)
        block = max(1, GATE_BLOCK_VALUES // self.num_experts)
        for start in range(0, num_tokens, block):
            stop = min(num_tokens, start + block)
            out[start:stop] = threshold_top_k(gate_values(self.probabilities, stop - start, rng), self.top_k,
                                              self.threshold)
        return out
