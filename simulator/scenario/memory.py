"""The memory one GPU needs for its part of the layout (seed 2.2, 4.1, 4.2), term by term.

Per parameter the GPU holds (Megatron-Core's mixed-precision accounting, docs "Distributed
Optimizer": BF16 parameters with FP32 gradients take 18 B, or 6 + 12/d with the distributed
optimizer over d data-parallel ranks):
    weights      2 B    BF16
    gradients    4 B    FP32 main-grad buffer (2 B when training.grad_reduce_dtype is bf16)
    optimizer   12 B    FP32 master weight and Adam's two moments (8 B with BF16 moments), / DP size with ZeRO-1
Dense parameters shard over dense DP, expert parameters over expert DP.

Activations: the tensors a layer saves for its backward, per token, counted tensor by tensor
(saved_tensors: BF16, FP8 for FP8 GEMM inputs, less what selective recompute re-runs), times the tokens of every micro-batch in flight under the
schedule; with full recompute only each layer's BF16 input, plus one layer's whole activations
while it is re-run. Serving saves nothing: one layer's working set; it holds the GEMM dtype's
weights and the KV cache (simulator/scenario/serving.py).

Buffers: the all-to-all receive buffers, sized by the batch limit (seed 2.2). Other: a fixed
allowance for the CUDA context, library workspaces, NCCL channel buffers and allocator
fragmentation (an assumption, RESERVED_BYTES, named in provenance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from simulator.scenario.schema import Scenario
from simulator.scenario.serving import kv_cache_bytes, kv_cache_bytes_per_sequence
from simulator.stages import peak_in_flight, rank_layers, schedule
from simulator.wire import ELEMENT_BYTES, token_bytes

WEIGHT_BYTES = 2
GRAD_BYTES = ELEMENT_BYTES  # the main-grad buffer holds grads in training.grad_reduce_dtype
MASTER_BYTES = 4  # FP32 master weight


def optimizer_bytes(s: Scenario) -> int:
    """Optimizer state per parameter: the FP32 master weight and Adam's two moments (12 B; 8 B with
    BF16 moments, as DeepSeek-V3 trains)."""
    return MASTER_BYTES + 2 * ELEMENT_BYTES[s.training.adam_moments_dtype]
def serving_weight_bytes(s: Scenario) -> float:
    """Bytes per parameter a serving GPU holds: the GEMM dtype's weights only (FP8 with DeepSeek's
    FP32 scale per 128 x 128 block, as its released checkpoint; BF16 otherwise). Norms and the router
    kept in BF16 are counted at the same rate (a fraction of a percent of the parameters)."""
    return 1 + 4 / (128 * 128) if s.workload.gemm_dtype == "fp8" else 2
RESERVED_BYTES = 3e9  # assumption: CUDA context ~0.5 GB, cuBLAS/NCCL workspaces and buffers, fragmentation
ACT_BYTES = 2  # BF16 activations


def experts_per_gpu(s: Scenario) -> int:
    """The most experts one GPU holds (seed 1.1, expert i on GPU i mod G: one when E <= G,
    ceil(E / G) when E > G; when G does not divide E the first E mod G GPUs hold one more)."""
    if s.placement.strategy == "eplb":  # every GPU holds (E + redundant) / G physical slots, each a whole expert
        return (s.model.num_experts + s.placement.redundant_experts) // s.parallel.ep_size
    return max(1, -(-s.model.num_experts // s.parallel.ep_size))


def expert_slice_params(s: Scenario) -> int:
    """Parameters of one routed expert on one GPU: 1 / expert TP of it (split along its
    intermediate dimension: gate/up column-parallel, down row-parallel)."""
    return s.model.expert_params // s.expert_tp


def moe_layers_in_scope(s: Scenario) -> int:
    return 1 if s.workload.scope == "moe_layer" else s.model.num_moe_layers


def stage_layers(s: Scenario, rank: int) -> list[range]:
    """The layers of each model chunk of PP rank `rank` (all layers while PP = 1)."""
    return rank_layers(s.model.num_layers, s.parallel.pp_size, s.parallel.vpp_size, rank, s.parallel.pp_schedule)


def vocab_params_held(s: Scenario, layers) -> int:
    """The token embedding's and the LM head's parameters (each on this rank's TP shard) that the
    stage holding `layers` keeps: the embedding with layer 0, the head with the last layer, with
    workload.embedding_and_head over the whole model; 0 otherwise."""
    if not (s.workload.embedding_and_head and s.workload.scope == "model"):
        return 0
    m = s.model
    return m.vocab_params(s.parallel.tp_size) * ((0 in layers) + (m.num_layers - 1 in layers))


def local_params(s: Scenario, rank: int | None = None) -> dict[str, int]:
    """Parameters on a GPU of PP rank `rank` (None: the busiest): dense (replicated over the EP
    group) and routed experts."""
    whole = s.workload.embedding_and_head and s.workload.scope == "model"
    if s.parallel.pp_size == 1 and s.parallel.tp_size == 1 and not whole:
        return {"dense": s.model.replicated_params(s.workload.scope),
                "expert": experts_per_gpu(s) * moe_layers_in_scope(s) * expert_slice_params(s)}
    if rank is None and s.parallel.pp_size > 1:
        return max((local_params(s, r) for r in range(s.parallel.pp_size)), key=lambda d: sum(d.values()))
    m, tp = s.model, s.parallel.tp_size
    if s.workload.scope == "moe_layer":
        return {"dense": m.dense_layer_params(moe=True, attention=False, tp=tp),
                "expert": experts_per_gpu(s) * expert_slice_params(s)}
    layers = [layer for chunk in stage_layers(s, rank or 0) for layer in chunk]
    moe = sum(1 for layer in layers if layer >= m.num_dense_layers)
    vocab = vocab_params_held(s, layers)
    return {"dense": vocab + sum(m.dense_layer_params(moe=layer >= m.num_dense_layers, tp=tp) for layer in layers),
            "expert": experts_per_gpu(s) * moe * expert_slice_params(s)}


FP8_SAVED_BYTES = 1 + 4 / 128  # an FP8 GEMM input kept for its backward: E4M3 with an FP32 scale per 1x128 tile


def saved_tensors(s: Scenario, moe: bool) -> list[tuple[str, int, float]]:
    """(tensor, elements per token, bytes per element) a layer keeps for its backward, tensor by
    tensor, under the scenario's selective recompute modules and GEMM precision.

    The input of an FP8 GEMM is kept in FP8 (what Transformer Engine and DeepSeek-V3, report
    3.3.2, cache for the weight gradient); everything else in BF16, router probabilities in FP32.
    A recompute module's outputs are not kept: layernorm (both norms' outputs; re-run from the
    residual), mla_up_proj (Q, K, V; re-run from the latents), moe_act (the SwiGLU output; re-run
    from its input; in FP8 training its input is then cached in FP8, as DeepSeek-V3 does). core_attn
    keeps no more than FlashAttention, which recomputes its scores anyway. Not modelled: DeepSeek's
    E5M6 format for the output projection's input (FP8 here)."""
    m, a, h = s.model, s.model.attention, s.model.hidden_size
    modules = set(s.training.recompute_modules) if s.training.recompute == "selective" else set()
    gemm_in = FP8_SAVED_BYTES if s.workload.gemm_dtype == "fp8" else ACT_BYTES
    keep_norm_out = "layernorm" not in modules
    # DeepSeek-V3 (3.3.2) caches the SwiGLU input in FP8 when it re-runs the SwiGLU (moe_act) in FP8 training
    swiglu_in = FP8_SAVED_BYTES if gemm_in == FP8_SAVED_BYTES and "moe_act" in modules else ACT_BYTES
    out = [("norm inputs (residual stream)", 2 * h, ACT_BYTES)]
    if s.workload.scope == "model":
        if keep_norm_out:
            out.append(("attention input (norm output)", h, gemm_in))
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            out += [("MLA latents (up-projection inputs)", a.q_lora_rank + a.kv_lora_rank, gemm_in),
                    ("rotary key", a.qk_rope_head_dim, ACT_BYTES)]
            if "mla_up_proj" not in modules:
                out.append(("Q, K, V for FlashAttention's backward", a.num_heads * (2 * qk + a.v_head_dim), ACT_BYTES))
            out.append(("attention output (output-projection input)", a.num_heads * a.v_head_dim, gemm_in))
        else:
            out += [("Q, K, V for FlashAttention's backward", (a.num_heads + 2 * a.num_kv_heads) * a.head_dim, ACT_BYTES),
                    ("attention output (output-projection input)", a.num_heads * a.head_dim, gemm_in)]
    if not moe:
        i = m.dense_intermediate_size
        if keep_norm_out:
            out.append(("FFN input (norm output)", h, gemm_in))
        return out + [("gate/up output (SwiGLU input)", 2 * i, ACT_BYTES), ("SwiGLU output", i, gemm_in)]
    i, k, shared, e = m.moe_intermediate_size, m.top_k, m.num_shared_experts, s.expert_tp
    if keep_norm_out:
        out.append(("router and shared-expert input (norm output)", h, ACT_BYTES))
    # with expert TP e a GPU holds the copies its whole expert-TP group received (e x as many) at
    # 1 / e of the intermediate width
    out += [("routed copies: permuted input", e * k * h, gemm_in),
            ("routed copies: gate/up output (SwiGLU input)", k * 2 * i, swiglu_in),
            # Megatron-Core multiplies the gate probabilities into the SwiGLU output (weighted
            # SwiGLU), so their gradient needs the SwiGLU output and each copy's probability, not
            # the expert's output
            ("routed copies: gate probabilities", e * k, 4)]
    if "moe_act" not in modules:
        out.append(("routed copies: SwiGLU output", k * i, gemm_in))
    if shared:
        out.append(("shared experts: gate/up output", shared * 2 * i, swiglu_in))
        if "moe_act" not in modules:
            out.append(("shared experts: SwiGLU output", shared * i, gemm_in))
    return out + [("router probabilities", m.num_experts, 4)]


def activation_bytes_per_token(s: Scenario, moe: bool) -> float:
    """Bytes one token's layer keeps for the backward (no full recompute), tensor by tensor."""
    return sum(elems * nbytes for _, elems, nbytes in saved_tensors(s, moe))


def logits_bytes(s: Scenario, layers=None) -> float:
    """The BF16 logits the LM head keeps for its backward, per micro-batch, on the GPU holding the
    last layer (when the model is simulated whole)."""
    if not (s.workload.embedding_and_head and s.workload.scope == "model"):
        return 0.0
    if layers is not None and s.model.num_layers - 1 not in layers:
        return 0.0
    return s.workload.tokens_per_gpu * s.model.vocab_size * ACT_BYTES


def micro_batches_in_flight(s: Scenario) -> int:
    """Micro-batches whose activations are held at once: lockstep runs every forward before any
    backward; dualpipe holds the one whose backward runs beside the next one's forward; sequential
    frees a micro-batch's activations in its backward, before the next forward."""
    if s.workload.mode != "train" or s.pipeline.schedule == "sequential":
        return 1
    if s.pipeline.schedule == "dualpipe":
        return min(2, s.workload.micro_batches)
    return s.workload.micro_batches


@dataclass(frozen=True)
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    other: float
    capacity: float
    buffers: float = 0.0
    kv_cache: float = 0.0  # decode: the KV cache of the GPU's sequences (simulator/scenario/serving.py)

    TERMS = ("weights", "gradients", "optimizer", "activations", "kv_cache", "buffers", "other")

    @property
    def before_buffers(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.kv_cache + self.other

    @property
    def peak(self) -> float:
        return self.before_buffers + self.buffers

    @property
    def biggest(self) -> str:
        return max(self.TERMS, key=lambda term: getattr(self, term))

    def as_dict(self) -> dict[str, float]:
        return {**{t: float(getattr(self, t)) for t in self.TERMS}, "peak": float(self.peak),
                "capacity": float(self.capacity)}


def full_recompute_activations(s: Scenario, num_layers: float, in_flight: float, moe: bool) -> float:
    """Full recompute: every layer of every micro-batch in flight keeps its BF16 input; one layer
    at a time holds its whole activations while it is re-run and back-propagated."""
    tokens = s.workload.tokens_per_gpu
    checkpoints = num_layers * in_flight * tokens * ACT_BYTES * s.model.hidden_size
    return checkpoints + tokens * activation_bytes_per_token(s, moe=moe)


def stage_activations(s: Scenario, rank: int) -> float:
    """Activation bytes PP rank `rank` holds at its peak under the pipeline schedule."""
    m, tokens = s.model, s.workload.tokens_per_gpu
    chunks = stage_layers(s, rank)
    if s.workload.mode == "train" and s.training.recompute == "full":
        weight = {c: tokens * ACT_BYTES * m.hidden_size * len(layers) + logits_bytes(s, layers)
                  for c, layers in enumerate(chunks)}
        p = s.parallel
        tasks = schedule(p.pp_schedule, p.pp_size, s.workload.micro_batches, p.vpp_size, rank)
        moe = any(layer >= m.num_dense_layers for layers in chunks for layer in layers)
        return peak_in_flight(tasks, weight) + tokens * activation_bytes_per_token(s, moe=moe)
    weight = {c: tokens * sum(activation_bytes_per_token(s, moe=layer >= m.num_dense_layers) for layer in layers)
              + logits_bytes(s, layers) for c, layers in enumerate(chunks)}
    if s.workload.mode != "train":
        return max(weight.values())
    p = s.parallel
    return peak_in_flight(schedule(p.pp_schedule, p.pp_size, s.workload.micro_batches, p.vpp_size, rank), weight)


def optimizer_shards(s: Scenario) -> dict[str, int]:
    """Over how many GPUs each family's optimizer state is split: its DP group with ZeRO-1."""
    if s.workload.mode == "train" and s.training.distributed_optimizer:
        return {"dense": s.ranks.dp_size, "expert": s.ranks.expert_dp_size}
    return {"dense": 1, "expert": 1}


def _state_memory(s: Scenario, params: dict[str, int], activations: float, buffers: float) -> Memory:
    """The terms of a GPU holding `params` and `activations`: weights, and in training gradients
    and (sharded) optimizer state; the allowance; the given buffers."""
    total = sum(params.values())
    capacity = s.cluster.gpu.hbm_bytes
    if s.workload.mode != "train":
        return Memory(total * serving_weight_bytes(s), 0.0, 0.0, activations, RESERVED_BYTES, capacity, buffers,
                      kv_cache_bytes(s))
    shards = optimizer_shards(s)
    optimizer = sum(optimizer_bytes(s) * n / shards[family] for family, n in params.items())
    return Memory(total * WEIGHT_BYTES, total * GRAD_BYTES[s.training.grad_reduce_dtype], optimizer, activations,
                  RESERVED_BYTES, capacity, buffers)


def memory_per_gpu(s: Scenario, buffers: float = 0.0) -> Memory:
    """Memory of the busiest GPU, without (or with the given) all-to-all buffers."""
    if s.parallel.pp_size > 1:
        return max((stage_memory(s, rank, buffers) for rank in range(s.parallel.pp_size)), key=lambda m: m.peak)
    if s.workload.mode != "train":
        act = activation_bytes_per_token(s, moe_layers_in_scope(s) > 0) * s.workload.tokens_per_gpu
        return _state_memory(s, local_params(s), act, buffers)
    dense_layers = 0 if s.workload.scope == "moe_layer" else s.model.num_dense_layers
    if s.training.recompute == "full":
        act = full_recompute_activations(s, dense_layers + moe_layers_in_scope(s), micro_batches_in_flight(s),
                                         moe_layers_in_scope(s) > 0)
    else:
        per_token = (dense_layers * activation_bytes_per_token(s, moe=False)
                     + moe_layers_in_scope(s) * activation_bytes_per_token(s, moe=True))
        act = per_token * s.workload.tokens_per_gpu * micro_batches_in_flight(s)
    act += logits_bytes(s) * micro_batches_in_flight(s)
    return _state_memory(s, local_params(s), act, buffers)


def stage_memory(s: Scenario, rank: int, buffers: float = 0.0) -> Memory:
    return _state_memory(s, local_params(s, rank), stage_activations(s, rank), buffers)


def key_to_change(s: Scenario, mem: Memory) -> tuple[str, object]:
    """The scenario key (and its value) a user would change to make the biggest term smaller."""
    term = mem.biggest
    params = local_params(s)
    if term == "activations":
        if s.workload.mode == "train" and s.training.recompute != "full":
            return "training.recompute", s.training.recompute  # keeps only each layer's input
        if s.training.global_batch_size is not None:
            return "training.micro_batch_size", s.training.micro_batch_size
        if s.parallel.pp_size > 1:  # the schedule, not the batch, sets how many are in flight
            return "workload.tokens_per_gpu", s.workload.tokens_per_gpu
        return "workload.micro_batches", s.workload.micro_batches
    if term == "optimizer" and not s.training.distributed_optimizer and s.workload.mode == "train":
        dp = s.ranks.expert_dp_size if params["expert"] >= params["dense"] else s.ranks.dp_size
        if dp > 1:
            return "training.distributed_optimizer", False
    if params["expert"] >= params["dense"] and experts_per_gpu(s) > 1:
        return "parallel.ep_size", s.parallel.ep_size
    if s.workload.scope == "model" and s.model.num_layers > s.parallel.pp_size * s.parallel.vpp_size:
        return "parallel.pp_size", s.parallel.pp_size  # more stages: fewer layers per GPU
    return "model.num_layers", s.model.num_layers


def auto_expert_tp(s: Scenario) -> dict:
    """Seed 4.1: Expert_parallelism = ceil(expert_size / GPU_memory_available). One expert with its
    gradients and optimizer share against the memory the rest of the GPU's state leaves (counted
    with experts whole)."""
    if s.parallel.expert_tp_size != 1:
        s = replace(s, parallel=s.parallel.model_copy(update={"expert_tp_size": 1}))
    mem = memory_per_gpu(s)
    params = local_params(s)
    n = params["expert"] or 1
    experts_state = (mem.weights + mem.gradients) * params["expert"] / max(sum(params.values()), 1)
    if s.workload.mode == "train":
        experts_state += optimizer_bytes(s) * params["expert"] / optimizer_shards(s)["expert"]
    one_expert = experts_state / (n / s.model.expert_params)
    left = mem.capacity - (mem.before_buffers - experts_state)
    # nothing left at all: no split helps, and the memory rule names the biggest term instead
    split = max(1, math.ceil(one_expert / left)) if left > 0 else 1
    return {"expert_tp_size": split, "expert_bytes": one_expert, "available_bytes": left}


def decode_bytes_per_sequence(s: Scenario) -> dict[str, float]:
    """What one more sequence of batch_per_gpu costs a decode GPU: its KV cache, its tokens' share
    of a layer's working set and of the all-to-all receive buffers (a chunk's tokens from every GPU
    of the EP group, dispatch and combine, as workload.build.batch_limit sizes them)."""
    w, n = s.workload, s.network
    tokens = (1 + w.mtp_draft_tokens) / w.micro_batches  # of one micro-batch, per sequence
    wire = token_bytes(n.dispatch_dtype, s.model.hidden_size, n.all_to_all) + token_bytes(
        n.combine_dtype, s.model.hidden_size, n.all_to_all)
    return {"kv_cache": kv_cache_bytes_per_sequence(s),
            "activations": activation_bytes_per_token(s, moe_layers_in_scope(s) > 0) * tokens,
            "buffers": tokens / s.pipeline.chunks * s.parallel.ep_size * wire}


def max_batch_per_gpu(s: Scenario) -> int:
    """The most sequences a decode GPU can hold at the scenario's context length: HBM less its
    weights and the allowance, over each sequence's KV cache, working set and buffers (even with
    two-batch overlap); 0 when the weights alone do not fit."""
    mem = memory_per_gpu(s)
    fixed = mem.weights + mem.other
    per_sequence = sum(decode_bytes_per_sequence(s).values())
    batch = int(max(mem.capacity - fixed, 0.0) // per_sequence)
    return batch - batch % s.workload.micro_batches
