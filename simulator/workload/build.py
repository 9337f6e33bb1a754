"""Elaboration of the workload: routing, batching and per-chunk compute times, before the engine runs.

Routing is sampled once per (EP group, MoE layer, micro-batch) from a seeded generator keyed by
those indices, so every run of a scenario sees the same tokens.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from hardware.compute import (
    ATTENTION_CORE_BACKWARD_FACTOR,
    BACKWARD_FACTOR,
    RooflineCompute,
    ffn_bwd_parts,
    ffn_parts,
)
from simulator.errors import ScenarioError
from simulator.scenario.memory import FP8_SAVED_BYTES, memory_per_gpu, moe_layers_in_scope, stage_layers
from simulator.scenario.serving import KV_BYTES
from simulator.wire import token_bytes
from simulator.workload.gating import ThresholdRouter
from simulator.workload.placement import Placement, eplb_placement, round_robin_placement, slot_layout
from simulator.workload.routing import Router, UnsampleableLaw, drift_order, drop_over_capacity
from simulator.workload.routing_trace import TraceRouter, load_trace
from simulator.workload.traffic import chunk_bounds, micro_batch_traffic


@dataclass
class Workload:
    num_chunks: int
    chunk_tokens: list[int]
    tokens_per_batch_limit: int
    rounds: int
    expert_gpu: np.ndarray  # physical expert slot -> GPU index inside the EP group (simulator/workload/placement.py)
    traffic: dict  # (group, moe_layer, mb, chunk) -> ChunkTraffic
    expert_work_s: dict  # (group, moe_layer, mb, chunk) -> [P] forward seconds of routed experts
    # (group, moe_layer, mb, chunk) -> [P] backward seconds of routed experts (their input and
    # weight gradients, and the moe_act recompute); empty without a backward
    expert_bwd_s: dict
    placements: dict  # (group, moe_layer) -> Placement; traffic's expert_tokens count tokens per slot
    dropped_copies: int = 0  # (token, expert) copies over capacity (routing.capacity_factor), not sent
    placement_reports: dict | None = None  # topology_aware: (group, moe_layer) -> the solver's report
    ungated_copies: int = 0  # routing.threshold: (token, expert) places the gate left empty (below the threshold)
    routed: dict | None = None  # keep_routing: (group, moe_layer, mb) -> [P x T, top_k] the router's expert ids


def buffer_bytes_per_token(s) -> float:
    """Receive-buffer bytes a token needs: its dispatch and its combine message."""
    h, a2a = s.model.hidden_size, s.network.all_to_all
    return token_bytes(s.network.dispatch_dtype, h, a2a) + token_bytes(s.network.combine_dtype, h, a2a)


def batch_limit(s, num_chunks: int) -> tuple[int, int, int]:
    """Seed 2.2: Batch_size = min(available_tokens, GPU_memory_limit / token_size).

    A GPU's receive buffer must hold, per chunk, every token any GPU of its group may send it
    (DeepEP sizes buffers the same way); the memory left after weights, gradients, optimizer
    state, activations and the allowance bounds it. When it does not fit, chunks are split further
    into rounds.
    """
    per_token = buffer_bytes_per_token(s)
    mem = memory_per_gpu(s)
    limit = int((mem.capacity - mem.before_buffers) // per_token)
    available = math.ceil(s.workload.tokens_per_gpu / num_chunks) * s.parallel.ep_size
    batch = min(available, limit)
    rounds = math.ceil(available / max(batch, 1))
    return batch, rounds, min(s.workload.tokens_per_gpu, num_chunks * rounds)


def layer_zipf_alpha(routing, moe_layer: int) -> float:
    """MoE layer moe_layer's Zipf exponent: routing.zipf_alpha_per_layer cycled, else zipf_alpha."""
    per_layer = routing.zipf_alpha_per_layer
    return per_layer[moe_layer % len(per_layer)] if per_layer else routing.zipf_alpha


def stage_moe_work(s, rank: int) -> list[tuple[int, range]]:
    """(index among MoE layers, the micro-batches that run it) for each MoE layer PP rank `rank`
    holds: every layer and micro-batch while PP = 1; with DualPipe a stage of each direction sees
    only that direction's half of the micro-batches."""
    m = s.workload.micro_batches
    if s.parallel.pp_size == 1:
        return [(layer, range(m)) for layer in range(moe_layers_in_scope(s))]
    dense = s.model.num_dense_layers
    dualpipe = s.parallel.pp_schedule == "dualpipe"
    out = []
    for chunk, layers in enumerate(stage_layers(s, rank)):
        mbs = range(chunk * m // 2, (chunk + 1) * m // 2) if dualpipe else range(m)
        out += [(layer - dense, mbs) for layer in layers if layer >= dense]
    return out


def topology_aware(s, probabilities: np.ndarray, group: int) -> tuple[Placement, dict]:
    """Seed 1.2's placement of one EP group's experts for its router's law (round-robin's slot
    layout; the dispatch's expected bytes per port in the scenario's dtype and algorithm)."""
    from hardware.topology import Topology
    from simulator.workload.topology_placement import topology_aware_placement  # scipy (HiGHS), on demand

    return topology_aware_placement(probabilities, s.ranks.ep_group(group), Topology(s.cluster), s.network.all_to_all,
                                    s.workload.tokens_per_gpu, s.model.top_k,
                                    bytes_per_token=token_bytes(s.network.dispatch_dtype, s.model.hidden_size,
                                                                s.network.all_to_all))


def law_router(s, group: int, layer: int, step: int, gate_scale: dict | None, expert_node: np.ndarray) -> Router:
    """The seeded router of EP group `group`'s MoE layer `layer` at step `step`: its law (the
    routing distribution, the layer's skew, drift, the adaptive gate's scales), with expert_node
    the node of each expert under the placement it routes over (group-limited routing).

    The law is the model's router, so it is the same in every EP group: which experts a Zipf or
    Dirichlet law makes hot, and how drift moves them, are drawn once per layer (from the key of
    group 0, which keeps one-group runs' streams). The adaptive gate's scales are per group, as
    are the tokens each group draws."""
    m, r = s.model, s.routing
    drift = drift_order(m.num_experts, r.drift, step, np.random.default_rng([r.seed, 0, layer, 3]))
    scale = None if gate_scale is None else gate_scale.get((group, layer))
    return Router(m.num_experts, m.top_k, r.distribution, layer_zipf_alpha(r, layer), expert_node,
                  r.max_nodes_per_token, np.random.default_rng([r.seed, 0, layer]), scale,
                  r.dirichlet_concentration, drift)


def training_law(s, layer: int, step: int, gate_scale: dict | None) -> np.ndarray:
    """Training: MoE layer `layer`'s expected tokens per expert summed over every EP group that
    runs it (the expert-DP replicas, and DualPipe's two copies of its stage). Their gradients are
    summed slot by slot, so they must all hold the same experts in the same slots: EPLB packs
    one placement per layer from the whole step's load, as a trainer keeping its replicas in sync
    would (serving instances are independent, and each EP group packs its own)."""
    base = round_robin_placement(s.model.num_experts, s.parallel.ep_size).expert_gpu()
    total = np.zeros(s.model.num_experts)
    for group in range(s.ranks.num_ep_groups):
        rank = int(s.ranks.pp_rank[s.ranks.ep_groups[group][0]])
        if any(moe == layer for moe, _ in stage_moe_work(s, rank)):
            total += law_router(s, group, layer, step, gate_scale, s.ranks.ep_group(group).node[base]).probabilities
    return total


def build_workload(s, compute: RooflineCompute, gate_scale: dict | None = None, step: int = 0,
                   placements_in: dict | None = None, keep_routing: bool = False) -> Workload:
    """The workload of step `step` (0: the first; later steps draw fresh tokens) with the adaptive
    gate's per-(EP group, MoE layer) expert scales (None: the router's own law); placements_in:
    (group, moe_layer) -> the Placement to use (EPLB rebalanced from observed loads) instead of one
    solved from the law; keep_routing: keep the router's expert ids (run --save-routing)."""
    p = s.parallel.ep_size
    m = s.model
    batch, rounds, num_chunks = batch_limit(s, s.pipeline.chunks)
    base = round_robin_placement(m.num_experts, p)
    slot_gpu = slot_layout(s.placement.strategy, m.num_experts, s.placement.redundant_experts, p)
    local = np.arange(p)
    on_gpu = [np.nonzero(slot_gpu == g)[0] for g in range(p)]  # the slots each GPU holds
    traffic, work, work_bwd, placements = {}, {}, {}, {}
    solved, reports = {}, {}  # topology_aware: one solve per (group, law), its report per layer
    shared: dict = {}  # training with eplb: moe_layer -> the one placement all its EP groups hold
    hierarchical = s.routing.max_nodes_per_token is not None
    cf = s.routing.capacity_factor  # per source GPU and expert, as Megatron's moe_expert_capacity_factor
    capacity = None if cf is None else math.ceil(cf * s.workload.tokens_per_gpu * m.top_k / m.num_experts)
    dropped = ungated = 0
    trace = load_trace(s.routing.trace) if s.routing.distribution == "trace" else None
    trace_routers: dict = {}  # moe_layer -> TraceRouter: the EP groups take a layer's recorded tokens in turn
    routed = {} if keep_routing else None
    # micro-batches route and count side by side (each has its own random stream, and their results
    # are taken in order, so any thread count gives the same workload); a trace is read in turn
    threads = 1 if trace is not None else routing_threads()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    pending: deque = deque()

    def collect(limit: int) -> None:
        nonlocal ungated, dropped
        while len(pending) > limit:
            (group, layer, mb), result = pending.popleft()
            try:
                chunks, empty, drop, experts = result() if pool is None else result.result()
            except UnsampleableLaw as exc:
                raise unsampleable(s, layer, exc) from None
            ungated += empty
            dropped += drop
            if routed is not None:
                routed[group, layer, mb] = experts
            for c, t in enumerate(chunks):
                traffic[group, layer, mb, c] = t

    try:
        for group in range(s.ranks.num_ep_groups):
            member_node = s.ranks.ep_group(group).node
            for layer, mbs in stage_moe_work(s, int(s.ranks.pp_rank[s.ranks.ep_groups[group][0]])):
                def router_for(place: Placement):
                    if trace is not None:
                        if layer not in trace_routers:
                            trace_routers[layer] = TraceRouter(trace, step, layer, m.top_k, m.num_experts)
                        return trace_routers[layer]
                    router = law_router(s, group, layer, step, gate_scale, member_node[place.expert_gpu()])
                    return router if s.routing.threshold is None else ThresholdRouter(router, s.routing.threshold)

                router, place = router_for(base), base
                if placements_in is not None:  # EPLB rebalanced from the loads observed so far
                    place = placements_in[group, layer]
                    router = router_for(place)
                elif s.placement.strategy == "eplb":  # balance the expected loads, then route over them
                    if s.backward and trace is None:  # one placement per layer for all its replicas
                        if layer not in shared:
                            shared[layer] = eplb_placement(training_law(s, layer, step, gate_scale), len(slot_gpu),
                                                           p, int(member_node.max()) + 1, hierarchical=hierarchical)
                        place = shared[layer]
                    else:  # a trace's law is the layer's in every group
                        place = eplb_placement(router.probabilities, len(slot_gpu), p, int(member_node.max()) + 1,
                                               hierarchical=hierarchical)
                    router = router_for(place)
                elif s.placement.strategy == "topology_aware":  # seed 1.2: the busiest port's expected load, minimised
                    key = (group, router.probabilities.tobytes())
                    if key not in solved:
                        solved[key] = topology_aware(s, router.probabilities, group)
                    place, reports[group, layer] = solved[key]
                    router = router_for(place)
                placements[group, layer] = place
                try:
                    warm(router, place)
                except UnsampleableLaw as exc:
                    raise unsampleable(s, layer, exc) from None
                for mb in mbs:
                    job = partial(route_micro_batch, s, router, place, member_node, (group, layer, mb), step, capacity,
                                  num_chunks, trace is not None, routed is not None)
                    pending.append(((group, layer, mb), job if pool is None else pool.submit(job)))
                    collect(ROUTING_WINDOW * threads)
        collect(0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # With expert TP e, the e EP groups of one (stage, expert-DP rank) are its expert-TP ranks
    # (RankLayout.ep_group_of): EP rank j of each holds a 1/e slice of the same experts and runs it
    # on the tokens all of them received (all-gathered over the expert-TP group).
    e = s.expert_tp
    width = m.moe_intermediate_size // e
    for (group, layer, mb, c), t in traffic.items():
        first = group - group % e
        rows = (t.expert_tokens if e == 1 else
                sum(traffic[g, layer, mb, c].expert_tokens for g in range(first, first + e)))
        work[group, layer, mb, c] = np.array([compute.expert_ffn_s(rows[on_gpu[g]], m.hidden_size, width)
                                              for g in local])
        if s.backward:
            work_bwd[group, layer, mb, c] = np.array([expert_bwd_s(s, compute, rows[on_gpu[g]], width) for g in local])
    sizes = [hi - lo for lo, hi in chunk_bounds(s.workload.tokens_per_gpu, num_chunks)]
    return Workload(num_chunks, sizes, batch, rounds, slot_gpu, traffic, work, work_bwd, placements, dropped, reports,
                    ungated, routed)


ROUTING_WINDOW = 2  # micro-batches in flight per routing thread (each holds its [P x T, k] expert ids)
MAX_ROUTING_THREADS = 8


def routing_threads() -> int:
    """Threads that route micro-batches side by side: EPSIM_THREADS when set, else the CPUs this
    process may run on, at most MAX_ROUTING_THREADS (the sampler and the counter release the GIL)."""
    value = os.environ.get("EPSIM_THREADS")
    if value is not None:
        if value.strip().isdigit() and 0 < int(value) <= 1024:
            return int(value)
        warnings.warn(f"EPSIM_THREADS = {value!r}: must be a whole number of threads in 1..1024; "
                      "using the CPUs this process may run on", stacklevel=2)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_ROUTING_THREADS, cpus))


def warm(router, place: Placement) -> None:
    """Build the router's and the placement's lazy tables before threads share them."""
    tables = getattr(router, "_sampler_tables", None)
    if tables is not None and router.distribution != "balanced":
        tables()
    if not place.identity:
        place.replicas()


def route_micro_batch(s, router, place: Placement, member_node: np.ndarray, where: tuple[int, int, int], step: int,
                      capacity: int | None, num_chunks: int, traced: bool, keep: bool):
    """One micro-batch of one (EP group, MoE layer): route its tokens, drop what exceeds capacity,
    pick the replica slots and count the traffic. (chunks' traffic, ungated copies, dropped copies,
    the expert ids when kept). Raises UnsampleableLaw."""
    group, layer, mb = where
    p = s.parallel.ep_size
    # step 0 keeps the single-step key: one step is today's run, bit for bit
    key = [s.routing.seed, group, layer, mb, 1] + ([step] if step else [])
    experts = router.route(p * s.workload.tokens_per_gpu, np.random.default_rng(key))
    kept = experts if keep else None
    empty = int((experts < 0).sum()) if s.routing.threshold is not None or traced else 0
    dropped = 0
    if capacity is not None:
        experts = drop_over_capacity(experts, s.workload.tokens_per_gpu, capacity)
        dropped = int((experts < 0).sum()) - empty
    slots = place.slots_of(experts, np.random.default_rng([s.routing.seed, group, layer, mb, 2, step]))
    chunks = micro_batch_traffic(slots, s.workload.tokens_per_gpu, num_chunks, place.slot_gpu, member_node,
                                 place.num_slots)
    return chunks, empty, dropped, kept


def expert_bwd_extras(s, compute: RooflineCompute, rows: float, width: int) -> dict[str, float]:
    """What the routed experts' backward runs besides their FFN block's gradients, by kernel class,
    over the `rows` rows a GPU received: the FP8 recipe's casts (FP8 GEMMs) and the SwiGLU re-run
    (moe_act recompute); classes with no work left out."""
    casts = ffn_grad_casts_s(compute, rows, s.model.hidden_size, width) if s.workload.gemm_dtype == "fp8" else 0.0
    extras = {"quantisation": casts, "elementwise": swiglu_rerun_s(s, compute, rows, width)}
    return {cls: v for cls, v in extras.items() if v}


def expert_bwd_s(s, compute: RooflineCompute, tokens_per_expert: np.ndarray, width: int) -> float:
    """One GPU's routed experts' backward: their GEMMs' gradients and the kernels around them, and
    expert_bwd_extras."""
    total = compute.expert_ffn_bwd_s(tokens_per_expert, s.model.hidden_size, width)
    for v in expert_bwd_extras(s, compute, int(tokens_per_expert.sum()), width).values():
        total += v
    return total


def unsampleable(s, layer: int, exc: UnsampleableLaw) -> ScenarioError:
    """The scenario key whose law a router could not sample (its own parameter, else the node limit)."""
    r = s.routing
    if exc.node_limit:
        key, value = "routing.max_nodes_per_token", r.max_nodes_per_token
    elif r.distribution == "dirichlet":
        key, value = "routing.dirichlet_concentration", r.dirichlet_concentration
    elif r.distribution == "zipf":
        key, value = "routing.zipf_alpha", layer_zipf_alpha(r, layer)
    else:
        key, value = "routing.distribution", r.distribution
    return ScenarioError(key, value, f"MoE layer {layer}'s router cannot be sampled: {exc}")


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
