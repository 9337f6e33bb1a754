"""Compute model: how long a kernel takes on one GPU at full SM rate.

Roofline: time = max(FLOP / (peak x matmul_efficiency), bytes / (HBM x memory_efficiency))
plus one kernel launch, with the efficiencies of the hardware preset; GEMMs by their shape
(hardware/gemm_shape.py) when a published calibration gives the law. This is the model without a
calibration file; hardware/calibrated.py keeps its interface and times kernels from a measured fit
(falling back to this roofline outside the measured range). All functions return seconds.
"""
from __future__ import annotations

import numpy as np

from hardware.gemm_shape import WGRAD_OUT_BYTES, grouped_time_s, wgrad_time_s
from hardware.spec import GPUSpec

BF16_BYTES = 2
# FlashAttention's backward recomputes the scores: 5 matmuls against the forward's 2
ATTENTION_CORE_BACKWARD_FACTOR = 2.5
# A memory-bound kernel's gradient pass against its forward (reads the saved input and the incoming
# gradient, writes the outgoing one); GEMMs time their two gradient GEMMs instead (gemm_bwd_s)
BACKWARD_FACTOR = 2.0


class GradientGemms:
    """A GEMM's backward in terms of a compute model's own gemm_s, grouped_gemm_s and wgrad_s: the
    input gradient [m, n] x [n, k] (the forward's kernel at that shape) and the weight gradient over
    the m tokens into the [k, n] weight (an MoE layer's experts: one K-grouped launch, each expert
    over its own tokens). Shared by every compute model, the kernel counter included."""

    def gemm_bwd_s(self, m: int, n: int, k: int) -> float:
        """The backward of gemm_s(m, n, k)."""
        if m <= 0:
            return 0.0
        return self.gemm_s(m, k, n) + self.wgrad_s(np.array([m]), k, n)

    def grouped_gemm_bwd_s(self, ms: np.ndarray, n: int, k: int) -> float:
        """The backward of grouped_gemm_s(ms, n, k)."""
        return self.grouped_gemm_s(ms, k, n) + self.wgrad_s(ms, k, n)


class RooflineCompute(GradientGemms):
    """Roofline time for the kernels an MoE transformer runs."""

    def __init__(self, gpu: GPUSpec, dtype: str = "bf16", shape_law: dict | None = None,
                 wgrad_law: dict | None = None):
        self.gpu = gpu
        self.dtype = dtype  # GEMM input dtype
        self._flop_per_s = gpu.peak_flop_per_s(dtype) * gpu.matmul_efficiency
        self._bytes_per_s = gpu.hbm_bytes_per_s * gpu.memory_efficiency
        self._elem_bytes = 1.0 if dtype == "fp8" else 2.0
        # GEMM time by shape (hardware/gemm_shape.py) in place of one matmul rate, when a published
        # calibration carries one
        self.shape_law = shape_law
        # weight-gradient GEMMs by shape where a published table gives their own law (FP8); else
        # the shape law, else the roofline, at the wgrad's shape
        self.wgrad_law = wgrad_law

    def describe(self) -> dict:
        out = {
            "kind": "roofline",
            "gpu": self.gpu.name,
            "gemm_dtype": self.dtype,
            "matmul_efficiency": self.gpu.matmul_efficiency,
            "memory_efficiency": self.gpu.memory_efficiency,
            "kernel_launch_s": self.gpu.kernel_launch_s,
        }
        if self.shape_law:
            out["gemm_shape_law"] = dict(self.shape_law)
        if self.wgrad_law:
            out["wgrad_shape_law"] = dict(self.wgrad_law)
        return out

    def _roofline_s(self, flop, num_bytes):
        return np.maximum(np.asarray(flop) / self._flop_per_s, np.asarray(num_bytes) / self._bytes_per_s)

    def gemm_s(self, m: int, n: int, k: int) -> float:
        """[m, k] x [k, n] -> [m, n] in BF16 output."""
        if m <= 0:
            return 0.0
        if self.shape_law:
            return grouped_time_s([m], n, k, self.shape_law, self.gpu.num_sms, self._elem_bytes)
        flop = 2.0 * m * n * k
        num_bytes = (m * k + k * n) * self._elem_bytes + m * n * BF16_BYTES
        return float(self._roofline_s(flop, num_bytes)) + self.gpu.kernel_launch_s

    def grouped_gemm_s(self, ms: np.ndarray, n: int, k: int) -> float:
        """One grouped GEMM over experts: group e multiplies [ms[e], k] by its own [k, n] weight.

        Each group is its own roofline (a group of 3 tokens is weight-read bound), one launch.
        Groups with no tokens skip their weights, as grouped GEMM kernels do.
        """
        ms = np.asarray(ms, dtype=np.float64)
        ms = ms[ms > 0]
        if ms.size == 0:
            return 0.0
        if self.shape_law:
            return grouped_time_s(ms, n, k, self.shape_law, self.gpu.num_sms, self._elem_bytes)
        flop = 2.0 * ms * n * k
        num_bytes = (ms * k + k * n) * self._elem_bytes + ms * n * BF16_BYTES
        return float(self._roofline_s(flop, num_bytes).sum()) + self.gpu.kernel_launch_s

    def wgrad_s(self, ks: np.ndarray, rows: int, cols: int) -> float:
        """One weight-gradient launch: groups (experts) each reduce their ks[e] tokens into the same
        [rows, cols] FP32 main gradient (hardware/gemm_shape.py wgrad_time_s); a dense wgrad is one
        group. Groups without tokens add nothing."""
        ks = np.asarray(ks, dtype=np.float64)
        ks = ks[ks > 0]
        if ks.size == 0:
            return 0.0
        law = self.wgrad_law or self.shape_law
        if law:
            return wgrad_time_s(ks, rows, cols, law, self.gpu.num_sms, self._elem_bytes)
        flop = 2.0 * rows * cols * ks
        num_bytes = (rows + cols) * ks * self._elem_bytes + rows * cols * WGRAD_OUT_BYTES
        return float(self._roofline_s(flop, num_bytes).sum()) + self.gpu.kernel_launch_s

    def memory_s(self, num_bytes: float) -> float:
        """A streaming kernel (permute, activation, norm) that moves num_bytes through HBM."""
        if num_bytes <= 0:
            return 0.0
        return num_bytes / self._bytes_per_s + self.gpu.kernel_launch_s

    def attention_core_s(self, flop: float, num_bytes: float) -> float:
        """Fused attention (flash-style) kernel: a roofline of its FLOPs and the bytes of Q, K, V, O."""
        if flop <= 0:
            return 0.0
        # Attention cores run in BF16 even when the projections use FP8.
        flop_per_s = self.gpu.peak_bf16_flop_per_s * self.gpu.matmul_efficiency
        return max(flop / flop_per_s, num_bytes / self._bytes_per_s) + self.gpu.kernel_launch_s

    def attention_core_bwd_s(self, flop: float, num_bytes: float) -> float:
        """The core's backward for a forward of `flop`: ATTENTION_CORE_BACKWARD_FACTOR x its work,
        at the forward's rate."""
        return ATTENTION_CORE_BACKWARD_FACTOR * self.attention_core_s(flop, num_bytes)

    def decode_attention_s(self, kind: str, flop: float, num_bytes: float) -> float:
        """A decode attention kernel (FlashMLA, FlashAttention's decode) over a KV cache: without a
        published rate for it, the attention core's roofline."""
        return self.attention_core_s(flop, num_bytes)

    def expert_ffn_s(self, tokens_per_expert: np.ndarray, hidden_size: int, intermediate_size: int,
                     permute: bool = True) -> float:
        """SwiGLU experts as a real MoE layer runs them: permute tokens by expert, grouped GEMM for
        gate+up (hidden -> 2 x intermediate), SiLU x up, grouped GEMM down, weighted un-permute.
        Shared experts and dense FFNs see their tokens in place: permute=False."""
        parts = ffn_parts(self, tokens_per_expert, hidden_size, intermediate_size, permute)
        if parts is None:
            return 0.0
        up, act, down, perm = parts
        ffn = up + act + down
        return ffn + perm if permute else ffn

    def expert_ffn_bwd_s(self, tokens_per_expert: np.ndarray, hidden_size: int, intermediate_size: int,
                         permute: bool = True) -> float:
        """The backward of expert_ffn_s: each GEMM's input and weight gradients (ffn_bwd_parts)."""
        parts = ffn_bwd_parts(self, tokens_per_expert, hidden_size, intermediate_size, permute)
        return 0.0 if parts is None else float(sum(parts))


def _memory_parts(compute, total: float, hidden_size: int, intermediate_size: int, permute: bool):
    """An FFN block's memory-bound kernels over `total` rows: SiLU x up (read gate, up; write the
    product) and the permute + un-permute (read + write the gathered rows), BF16."""
    permute_bytes = 2 * total * hidden_size * BF16_BYTES
    act_bytes = total * 3 * intermediate_size * BF16_BYTES
    return compute.memory_s(act_bytes), 2 * compute.memory_s(permute_bytes) if permute else 0.0


def ffn_parts(compute, tokens_per_expert, hidden_size: int, intermediate_size: int,
              permute: bool = True) -> tuple[float, float, float, float] | None:
    """The kernels of an SwiGLU FFN block on `compute`'s rates, in launch order: (gate+up grouped
    GEMM, SiLU x up, down grouped GEMM, permute + un-permute); None without tokens. The one
    decomposition RooflineCompute.expert_ffn_s sums and the compute split by kernel class reads."""
    tokens = np.asarray(tokens_per_expert)
    total = float(tokens.sum())
    if total <= 0:
        return None
    act, perm = _memory_parts(compute, total, hidden_size, intermediate_size, permute)
    return (compute.grouped_gemm_s(tokens, 2 * intermediate_size, hidden_size), act,
            compute.grouped_gemm_s(tokens, hidden_size, intermediate_size), perm)


def ffn_bwd_parts(compute, tokens_per_expert, hidden_size: int, intermediate_size: int,
                  permute: bool = True) -> tuple[float, float, float, float] | None:
    """ffn_parts' backward, in the same order: the gate+up and down GEMMs' input and weight
    gradients (grouped_gemm_bwd_s); the SwiGLU's and the permutes' gradient passes at
    BACKWARD_FACTOR x their forward (they read the saved input and the incoming gradient and write
    the outgoing one)."""
    tokens = np.asarray(tokens_per_expert)
    total = float(tokens.sum())
    if total <= 0:
        return None
    act, perm = _memory_parts(compute, total, hidden_size, intermediate_size, permute)
    return (compute.grouped_gemm_bwd_s(tokens, 2 * intermediate_size, hidden_size), BACKWARD_FACTOR * act,
            compute.grouped_gemm_bwd_s(tokens, hidden_size, intermediate_size), BACKWARD_FACTOR * perm)
