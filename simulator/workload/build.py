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

from hardware.compute import RooflineCompute
from simulator.errors import ScenarioError
from simulator.scenario.memory import memory_per_gpu, moe_layers_in_scope, stage_layers
from simulator.wire import token_bytes
from simulator.workload.costs import expert_bwd_s, routed_permute
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
    group 0, which keeps one-group runs' streams). Each group draws its own tokens; the adaptive
    gate's scales are kept per group (in training every group of a layer gets the same ones,
    simulator/steps.py summed_over_groups)."""
    m, r = s.model, s.routing
    drift = drift_order(m.num_experts, r.drift, step, np.random.default_rng([r.seed, 0, layer, 3]))
    scale = None if gate_scale is None else gate_scale.get((group, layer))
    return Router(m.num_experts, m.top_k, r.distribution, layer_zipf_alpha(r, layer), expert_node,
                  r.max_nodes_per_token, np.random.default_rng([r.seed, 0, layer]), scale,
                  r.dirichlet_concentration, drift)


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
    shared: dict = {}  # eplb: moe_layer -> its placement (in training, the one all its EP groups hold)
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
                    # training: expert DP sums gradients slot by slot, so every EP group running the
                    # layer holds one placement, packed once (their law and, in training, their gate
                    # are the same: law_router, steps.summed_over_groups); serving: each group its own
                    if not s.backward or layer not in shared:
                        shared[layer] = eplb_placement(router.probabilities, len(slot_gpu), p,
                                                       int(member_node.max()) + 1, hierarchical=hierarchical)
                    place = shared[layer]
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
    permute = routed_permute(s)
    for (group, layer, mb, c), t in traffic.items():
        first = group - group % e
        rows = (t.expert_tokens if e == 1 else
                sum(traffic[g, layer, mb, c].expert_tokens for g in range(first, first + e)))
        work[group, layer, mb, c] = np.array([compute.expert_ffn_s(rows[on_gpu[g]], m.hidden_size, width, permute)
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
