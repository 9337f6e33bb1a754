"""What each op's kernels cost on one GPU, by kernel class: the dense ops around the experts
(norms, attention, router, shared experts, embedding and LM head, FP8 casts), the routed experts'
backward extras, recompute's re-runs, and decode attention over the KV cache. The engine reads
them per chunk size; the workload builder times the routed experts with them."""
from __future__ import annotations

import numpy as np

from hardware.compute import (
    ATTENTION_CORE_BACKWARD_FACTOR,
    BACKWARD_FACTOR,
    RooflineCompute,
    ffn_bwd_parts,
    ffn_parts,
)
from simulator.scenario.memory import FP8_SAVED_BYTES
from simulator.scenario.serving import KV_BYTES
from simulator.wire import algorithm


def expert_bwd_extras(s, compute: RooflineCompute, rows: float, width: int) -> dict[str, float]:
    """What the routed experts' backward runs besides their FFN block's gradients, by kernel class,
    over the `rows` rows a GPU received: the FP8 recipe's casts (FP8 GEMMs) and the SwiGLU re-run
    (moe_act recompute); classes with no work left out."""
    casts = ffn_grad_casts_s(compute, rows, s.model.hidden_size, width) if s.workload.gemm_dtype == "fp8" else 0.0
    extras = {"quantisation": casts, "elementwise": swiglu_rerun_s(s, compute, rows, width)}
    return {cls: v for cls, v in extras.items() if v}


def routed_permute(s) -> bool:
    """Whether the routed experts run the permute / un-permute kernels around their GEMMs: not where
    the all-to-all delivers the rows grouped by expert and reduces them itself (DeepEP LL)."""
    return algorithm(s.network.all_to_all).permutes


def expert_bwd_s(s, compute: RooflineCompute, tokens_per_expert: np.ndarray, width: int) -> float:
    """One GPU's routed experts' backward: their GEMMs' gradients and the kernels around them, and
    expert_bwd_extras."""
    total = compute.expert_ffn_bwd_s(tokens_per_expert, s.model.hidden_size, width, permute=routed_permute(s))
    for v in expert_bwd_extras(s, compute, int(tokens_per_expert.sum()), width).values():
        total += v
    return total


def recompute_modules(s) -> set[str]:
    """The modules selective recompute re-runs in the backward (none unless training with it)."""
    t = s.training
    return set(t.recompute_modules) if s.workload.mode == "train" and t.recompute == "selective" else set()


def swiglu_rerun_s(s, compute: RooflineCompute, rows, width: int | None = None) -> float:
    """moe_act: the SwiGLU re-run over `rows` expert rows of `width` (default the expert's whole
    intermediate size) in the backward (read gate and up, write the output, BF16); nothing without it."""
    if "moe_act" not in recompute_modules(s):
        return 0.0
    return compute.memory_s(rows * 3 * (width or s.model.moe_intermediate_size) * 2)


KERNEL_CLASSES = ("gemm", "attention", "elementwise", "permute", "quantisation", "optimizer", "other")
QUANT_BYTES = 2 + 1 + 4 / 128  # FP8 quantisation of a BF16 tensor: read 2 B, write 1 B and a scale per 1x128 tile
TRANSPOSE_BYTES = 2 * FP8_SAVED_BYTES  # a saved FP8 tensor re-tiled for the weight gradient: read and write


def ffn_grad_casts_s(compute, rows: float, h: int, i: int) -> float:
    """The FP8 recipe's backward casts of an SwiGLU FFN over `rows` rows (DeepSeek-V3 report 3.3,
    figure 6: Dgrad and Wgrad run in FP8). Per GEMM [rows, k] x [k, n]: the BF16 output gradient
    quantised twice, per token (1x128 tiles, the input gradient's operand) and per channel,
    transposed (128x1, the weight gradient's); the saved FP8 input re-tiled from 1x128 to 128x1
    (read and write) for the weight gradient. Gate+up: n = 2i, k = h; down: n = h, k = i."""
    if rows <= 0:
        return 0.0
    return (2 * compute.memory_s(rows * 2 * i * QUANT_BYTES) + compute.memory_s(rows * h * TRANSPOSE_BYTES)
            + 2 * compute.memory_s(rows * h * QUANT_BYTES) + compute.memory_s(rows * i * TRANSPOSE_BYTES))


def ffn_split(compute, tokens, h: int, i: int, permute: bool) -> dict[str, float]:
    """The kernel classes of an SwiGLU FFN block (hardware.compute.ffn_parts): grouped GEMMs, the
    SwiGLU, and the permute / un-permute of the rows (routed experts)."""
    parts = ffn_parts(compute, tokens, h, i, permute)
    if parts is None:
        return {}
    up, act, down, perm = parts
    out = {"gemm": up + down, "elementwise": act}
    if permute:
        out["permute"] = perm
    return out


def ffn_kernels(compute, tokens, h: int, i: int, permute: bool) -> dict[str, float]:
    """expert_ffn_s (which a calibration may fit as one block) split in the proportions of its parts."""
    total = compute.expert_ffn_s(np.asarray(tokens), h, i, permute=permute)
    parts = ffn_split(compute, tokens, h, i, permute)
    whole = sum(parts.values())
    return {cls: v * total / whole for cls, v in parts.items()} if whole > 0 else {}


def ffn_bwd_kernels(compute, tokens, h: int, i: int, permute: bool) -> dict[str, float]:
    """ffn_kernels' backward: expert_ffn_bwd_s split in the proportions of its parts (ffn_bwd_parts)."""
    parts = ffn_bwd_parts(compute, tokens, h, i, permute)
    if parts is None:
        return {}
    up, act, down, perm = parts
    split = {"gemm": up + down, "elementwise": act, **({"permute": perm} if permute else {})}
    total, whole = compute.expert_ffn_bwd_s(np.asarray(tokens), h, i, permute=permute), sum(split.values())
    return {cls: v * total / whole for cls, v in split.items()} if whole > 0 else {}


def dense_kernels(s, compute: RooflineCompute, num_tokens: int) -> dict[str, dict[str, float]]:
    """Per op (and backward op), the seconds of each kernel class it runs on num_tokens tokens of
    this GPU: the GEMMs and attention core, and the kernels around them (issue: whole-step fidelity).

    Per layer, forward, memory-bound at the HBM rate with one launch each: the two RMSNorms (read
    and write the hidden state, BF16) and MLA's two latent norms; rotary embedding on the rope part
    of Q and K; the two residual adds (read two, write one); the router's softmax and top-k over
    FP32 logits; with FP8 GEMMs, the quantisation of every GEMM input (QUANT_BYTES per element;
    the routed tokens are quantised before the dispatch). The backward of each memory-bound kernel
    costs BACKWARD_FACTOR x its forward (the gradient passes read the saved input and the incoming
    gradient and write the outgoing one); each GEMM runs its input and weight gradients at their
    own shapes (compute.gemm_bwd_s), the attention core its own backward; plus what selective
    recompute re-runs.

    With tensor parallelism (sequence parallel), num_tokens is this rank's shard; the TP-split
    kernels (attention projections and core, dense FFN) see the whole gathered sequence (t x num_tokens)
    with 1/t of the heads or of the intermediate width; MLA's down-projections are duplicated on
    every rank; norms, residuals, router, routed and shared experts run on the local shard."""
    m = s.model
    a = m.attention
    h = m.hidden_size
    n = num_tokens
    t = s.parallel.tp_size
    nt = n * t
    fp8 = s.workload.gemm_dtype == "fp8"
    if a.kind == "mla":
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        shapes = ([(a.q_lora_rank, h), (a.num_heads * qk // t, a.q_lora_rank)] if a.q_lora_rank
                  else [(a.num_heads * qk // t, h)])
        shapes += [(a.kv_lora_rank + a.qk_rope_head_dim, h),
                   (a.num_heads * (a.qk_nope_head_dim + a.v_head_dim) // t, a.kv_lora_rank),
                   (h, a.num_heads * a.v_head_dim // t)]
        latent_norms = compute.memory_s(nt * (a.q_lora_rank + a.kv_lora_rank) * 2 * 2)
        rope = compute.memory_s(nt * (a.num_heads // t + 1) * a.qk_rope_head_dim * 2 * 2)
        inputs = [h] + ([a.q_lora_rank] if a.q_lora_rank else []) + [a.kv_lora_rank, a.num_heads * a.v_head_dim // t]
    else:
        shapes = [((a.num_heads + 2 * a.num_kv_heads) * a.head_dim // t, h), (h, a.num_heads * a.head_dim // t)]
        latent_norms = 0.0
        rope = compute.memory_s(nt * (a.num_heads + a.num_kv_heads) // t * a.head_dim * 2 * 2)
        inputs = [h, a.num_heads * a.head_dim // t]
    # the attention's projections, [nt, k] x [k, n_out] each; their backward: input and weight gradients
    proj = sum(compute.gemm_s(nt, n_out, k) for n_out, k in shapes)
    proj_bwd = sum(compute.gemm_bwd_s(nt, n_out, k) for n_out, k in shapes)
    norm = compute.memory_s(n * h * 2 * 2)  # one RMSNorm over the local shard
    residual = compute.memory_s(n * h * 3 * 2)
    attention_around = norm + latent_norms + rope + residual  # input norm, MLA latent norms, rotary, residual add
    mlp_around = norm + residual  # pre-MLP norm and the residual after the MLP
    quant_attention = compute.memory_s(nt * sum(inputs) * QUANT_BYTES) if fp8 else 0.0
    # the recipe's backward casts: each output gradient twice, each distinct saved input transposed
    quant_attention_bwd = (sum(2 * compute.memory_s(nt * n_out * QUANT_BYTES) for n_out, _ in shapes)
                           + sum(compute.memory_s(nt * w * TRANSPOSE_BYTES) for w in inputs)) if fp8 else 0.0
    # the core's FLOPs and bytes per GPU: t x the tokens, 1/t of the heads
    if s.workload.mode == "decode":  # over the KV cache (no backward)
        core = decode_attention_s(s, compute, n)
        window = decode_attention_s(s, compute, n, sliding=True) if a.sliding_window else core
        core_bwd = window_bwd = ATTENTION_CORE_BACKWARD_FACTOR * core
    else:
        full = (n * a.core_flop_per_token(s.workload.seq_len), n * a.core_bytes_per_token())
        core, core_bwd = compute.attention_core_s(*full), compute.attention_core_bwd_s(*full)
        window, window_bwd = core, core_bwd
        if a.sliding_window:
            windowed = (n * a.core_flop_per_token(s.workload.seq_len, sliding=True), n * a.core_bytes_per_token())
            window, window_bwd = compute.attention_core_s(*windowed), compute.attention_core_bwd_s(*windowed)
    rerun = recompute_modules(s)
    # selective recompute re-runs in the backward: an RMSNorm before the attention's and before the
    # MLP's backward; MLA's up-projection GEMMs; the shared experts' SwiGLU
    norm_rerun = norm if "layernorm" in rerun else 0.0
    up_proj = 0.0
    if "mla_up_proj" in rerun:
        up_proj = compute.gemm_s(nt, a.num_heads * (a.qk_nope_head_dim + a.v_head_dim) // t, a.kv_lora_rank)
        up_proj += (compute.gemm_s(nt, a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim) // t, a.q_lora_rank)
                    if a.q_lora_rank else 0.0)
    i_moe, i_dense = m.moe_intermediate_size, m.dense_intermediate_size // t
    # router: logits GEMM, then softmax / sigmoid and top-k over FP32 logits (read, write the scores)
    router = {"gemm": compute.gemm_s(n, m.num_experts, h), "elementwise": compute.memory_s(n * m.num_experts * 4 * 2)
              + mlp_around}
    router_gemm_bwd = compute.gemm_bwd_s(n, m.num_experts, h)
    if fp8:  # the tokens quantised once before the dispatch (and the shared experts' input)
        router["quantisation"] = compute.memory_s(n * h * QUANT_BYTES)
    shared_rows = np.full(m.num_shared_experts, n)
    shared = ffn_kernels(compute, shared_rows, h, i_moe, permute=False) if m.num_shared_experts else {}
    shared_bwd = ffn_bwd_kernels(compute, shared_rows, h, i_moe, permute=False) if m.num_shared_experts else {}
    if shared and fp8:
        shared["quantisation"] = compute.memory_s(n * m.num_shared_experts * i_moe * QUANT_BYTES)
    dense_ffn = ffn_kernels(compute, np.array([nt]), h, i_dense, permute=False)
    dense_ffn_bwd = ffn_bwd_kernels(compute, np.array([nt]), h, i_dense, permute=False)
    dense_ffn["elementwise"] = dense_ffn.get("elementwise", 0.0) + mlp_around
    if fp8:
        dense_ffn["quantisation"] = compute.memory_s(nt * (h + i_dense) * QUANT_BYTES)

    # the FP8 recipe's backward casts (none in BF16): the attention's projections, the FFNs' GEMMs;
    # the router's gate stays BF16 (DeepSeek-V3 keeps the MoE gating in higher precision), so the
    # routed tokens' quantisation has no backward of its own (their GEMMs' casts are the experts')
    quant_bwd = {"quantisation": quant_attention_bwd} if fp8 else {}
    if fp8:
        shared_bwd["quantisation"] = ffn_grad_casts_s(compute, n * m.num_shared_experts, h, i_moe)
        dense_ffn_bwd["quantisation"] = ffn_grad_casts_s(compute, nt, h, i_dense)

    def attention(core_s):
        return {"gemm": proj, "attention": core_s, "elementwise": attention_around, "quantisation": quant_attention}

    def backward(fwd: dict, own: dict, extra: dict | None = None) -> dict:
        """BACKWARD_FACTOR x each forward class, but the classes `own` times at their backward's own
        shapes: GEMMs' input and weight gradients, the attention core's backward; plus `extra`."""
        out = {cls: BACKWARD_FACTOR * v for cls, v in fwd.items()}
        out.update(own)
        for cls, v in (extra or {}).items():
            out[cls] = out.get(cls, 0.0) + v
        return out

    att, att_window = attention(core), attention(window)
    rerun_attention = {"elementwise": norm_rerun, "gemm": up_proj}
    kernels = {
        "attention": att,
        "attention_bwd": backward(att, {"gemm": proj_bwd, "attention": core_bwd, **quant_bwd}, rerun_attention),
        "attention_window": att_window,  # a sliding-window layer
        "attention_window_bwd": backward(att_window, {"gemm": proj_bwd, "attention": window_bwd, **quant_bwd},
                                         rerun_attention),
        "router": router,
        "router_bwd": backward(router, {"gemm": router_gemm_bwd, "quantisation": 0.0}, {"elementwise": norm_rerun}),
        "shared": shared,
        "shared_bwd": backward(shared, shared_bwd,
                               {"elementwise": swiglu_rerun_s(s, compute, n * m.num_shared_experts)}),
        "dense_ffn": dense_ffn,
        "dense_ffn_bwd": backward(dense_ffn, dense_ffn_bwd,
                                  {"elementwise": norm_rerun + BACKWARD_FACTOR * mlp_around}),
        # gather the tokens' rows (read + write BF16); backward: scatter-add into the FP32 grad
        "embedding": {"other": compute.memory_s(2 * n * h * 2)},
        "embedding_bwd": {"other": compute.memory_s(n * h * (2 + 2 * 4))},
        # logits GEMM over the vocabulary on the local shard, then cross-entropy: write the BF16
        # logits, read them, write their gradient (epsim: three BF16 passes over n x vocab); the
        # final norm before the head
        "lm_head": {"gemm": compute.gemm_s(n, m.vocab_size, h),
                    "elementwise": compute.memory_s(3 * n * m.vocab_size * 2) + norm},
        "lm_head_bwd": {"gemm": compute.gemm_bwd_s(n, m.vocab_size, h), "elementwise": 2 * norm},
    }
    return {op: {cls: v for cls, v in parts.items() if v} for op, parts in kernels.items()}


def decode_attention_s(s, compute: RooflineCompute, num_tokens: int, sliding: bool = False) -> float:
    """One decode attention kernel on a GPU over the KV cache of the sequences whose num_tokens
    (1 + MTP drafts each) it attends for (with TP-attention: its TP group's t x as many sequences,
    1/t of the heads), each context_len long (capped at a sliding window).

    MLA runs absorbed (FlashMLA): every head attends over the shared latent, d_k = kv_lora + rope
    keys and d_v = kv_lora values, FLOPs 2 h s_q s_k (d_k + d_v), bytes the latents read once per
    sequence plus Q and O (BF16). GQA (FlashAttention decode): 4 h s_q s_k d FLOPs, the rank's K and V
    heads read once. The rates are the compute model's (decode_attention_s)."""
    a, w, t = s.model.attention, s.workload, s.parallel.tp_size
    q = 1 + w.mtp_draft_tokens
    sequences = num_tokens / q * t
    heads = a.num_heads // t
    ctx = min(w.context_len, a.sliding_window) if sliding and a.sliding_window else w.context_len
    kv = KV_BYTES[w.kv_cache_dtype]
    if a.kind == "mla":
        dk, dv = a.kv_lora_rank + a.qk_rope_head_dim, a.kv_lora_rank
        flop = sequences * q * heads * 2.0 * ctx * (dk + dv)
        num_bytes = sequences * ctx * dk * kv + sequences * q * heads * (dk + dv) * 2
    else:
        d = a.head_dim
        flop = sequences * q * heads * 4.0 * d * ctx
        num_bytes = sequences * ctx * 2 * (a.num_kv_heads // t) * d * kv + sequences * q * heads * 2 * d * 2
    return compute.decode_attention_s(a.kind, flop, num_bytes)


def op_seconds(kernels: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per op, the sum of its kernels' seconds (dense_kernels' table)."""
    return {op: float(sum(parts.values())) for op, parts in kernels.items()}


def dense_work_s(s, compute: RooflineCompute, num_tokens: int) -> dict[str, float]:
    """Seconds of the per-token work every GPU does on its own tokens, per op: the sum of its kernels."""
    return op_seconds(dense_kernels(s, compute, num_tokens))
