"""RunRecord -> the numbers of summary.json and the per-layer / per-GPU table. Pure functions."""
from __future__ import annotations

import numpy as np

from hardware.topology import PORT_CLASSES
from hardware.units import GIB
from simulator import __version__
from simulator.engine.collective import COLLECTIVES, CollectiveId
from simulator.engine.data_parallel import adam_bytes_per_param
from simulator.engine.gpu import COMPUTE
from simulator.engine.host import host_modelled
from simulator.engine.record import RunRecord
from simulator.model import FLOP_CONVENTION
from simulator.scenario.memory import (
    RESERVED_BYTES,
    WEIGHT_BYTES,
    auto_expert_tp,
    local_params,
    max_batch_per_gpu,
    memory_per_gpu,
    optimizer_bytes,
    serving_weight_bytes,
)
from simulator.scenario.serving import kv_cache_bytes, kv_cache_bytes_per_sequence, prefill_passes
from simulator.wire import ELEMENT_BYTES, algorithm
from simulator.workload.build import buffer_bytes_per_token
from simulator.workload.costs import KERNEL_CLASSES

TRAIN_FLOP_FACTOR = 3.0  # forward + backward (2x forward)


def union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    """Total length covered by intervals [starts[i], ends[i])."""
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s, e = np.asarray(starts)[order], np.asarray(ends)[order]
    reach = np.maximum.accumulate(e)
    gap_start = np.concatenate([[False], s[1:] > reach[:-1]])
    total, seg_start = 0.0, s[0]
    for i in np.nonzero(gap_start)[0]:
        total += reach[i - 1] - seg_start
        seg_start = s[i]
    return float(total + reach[-1] - seg_start)


def step_tokens(s) -> int:
    """Tokens one step processes: each GPU of a stage feeds tokens_per_gpu per micro-batch, and a
    micro-batch crosses every stage."""
    return s.workload.tokens_per_gpu * s.workload.micro_batches * s.num_gpus // s.parallel.pp_size


def output_tokens(s) -> float:
    """Tokens a step delivers: decode's generated tokens (accepted_tokens_per_step of each sequence),
    else the tokens it processes."""
    w = s.workload
    if w.mode == "decode":
        return w.batch_per_gpu * w.accepted_tokens_per_step * s.num_gpus
    return step_tokens(s)


def flop_per_token(s) -> float:
    """Model FLOPs of one token's forward (FLOP_CONVENTION); decode attends over context_len keys."""
    w = s.workload
    return s.model.forward_flop_per_token(w.seq_len, w.scope, w.embedding_and_head,
                                          context=w.context_len if w.mode == "decode" else None)


def step_flop(r: RunRecord) -> float:
    s = r.scenario
    tokens, per_token = step_tokens(s), flop_per_token(s)
    factor = TRAIN_FLOP_FACTOR if s.backward else 1.0
    if r.ungated_copies:  # threshold gating (or a trace) chose fewer than top_k experts: those copies do no work
        return (tokens * per_token - r.ungated_copies * 2.0 * s.model.expert_params) * factor
    return tokens * per_token * factor


def comm_intervals(r: RunRecord) -> list[list[tuple[float, float]]]:
    """Per GPU: [first byte sent, own part done] of every collective it took part in."""
    out: list[list[tuple[float, float]]] = [[] for _ in range(r.num_gpus)]
    for coll in r.collectives.values():
        for local, g in enumerate(coll.gpus):
            out[g].append((coll.start_s, float(coll.done_s[local])))
    return out


def busy_unions(r: RunRecord) -> dict[str, float]:
    """Per-GPU means of the time its compute stream is busy, the time some collective of it is in
    flight, and the time a collective is in flight while the compute stream is idle (exposed)."""
    comm = comm_intervals(r)
    out = {"compute": [], "comm": [], "exposed": []}
    for intervals, ivs in zip(r.intervals, comm):
        cs = np.array([iv.start_s for iv in intervals if iv.stream == COMPUTE])
        ce = np.array([iv.end_s for iv in intervals if iv.stream == COMPUTE])
        ms = np.array([iv[0] for iv in ivs])
        me = np.array([iv[1] for iv in ivs])
        busy = union_length(cs, ce)
        out["compute"].append(busy)
        out["comm"].append(union_length(ms, me))
        out["exposed"].append(union_length(np.concatenate([cs, ms]), np.concatenate([ce, me])) - busy)
    return {key: float(np.mean(v)) for key, v in out.items()}


def breakdown(r: RunRecord, unions: dict | None = None) -> dict[str, float]:
    """Per-GPU mean of compute / exposed comm / idle; the three add up to the step time."""
    u = unions or busy_unions(r)
    c, x = u["compute"], u["exposed"]
    return {"compute": c, "exposed_comm": x, "idle": max(r.step_time_s - c - x, 0.0)}


def gemm_dtype_peak(s) -> float:
    """Dense peak of the GEMM dtype (FP8 runs against their own peak); FP32 (CPUs): the preset's peak."""
    dtype = s.workload.gemm_dtype
    return s.cluster.gpu.peak_flop_per_s(dtype) if dtype in ("bf16", "fp8") else s.cluster.gpu.peak_bf16_flop_per_s


def compute_by_kernel_class(r: RunRecord) -> dict[str, float]:
    """Per-GPU mean seconds of compute in each kernel class (GEMM, attention, elementwise/norm,
    permute, quantisation, optimizer, other): each kernel's time split in its op's proportions
    (RunRecord.kernel_classes); they add up to breakdown_s.compute."""
    classes = r.kernel_classes or {}
    totals = dict.fromkeys(KERNEL_CLASSES, 0.0)
    for intervals in r.intervals:
        for iv in intervals:
            if iv.stream != COMPUTE:
                continue
            name = iv.op.op + ("_bwd" if iv.op.phase == "backward" else "")
            for cls, share in classes.get(name, {"other": 1.0}).items():
                totals[cls] += (iv.end_s - iv.start_s) * share
    return {cls: float(v / max(r.num_gpus, 1)) for cls, v in totals.items()}


def collective_stats(r: RunRecord) -> dict:
    """Per kind: calls per GPU, time per call per GPU, bytes each GPU sends per call."""
    out = {}
    for kind in COLLECTIVES:
        colls = [c for c in r.collectives.values() if c.kind == kind]
        if not colls:
            continue
        times = np.concatenate([c.recv_done_s - c.start_s for c in colls])
        out[kind] = {
            "count": sum(len(c.gpus) for c in colls) // r.num_gpus,
            "mean_time_s": float(times.mean()),
            "max_time_s": float(times.max()),
            # every hop out of a GPU (hierarchical's forwarding, a ring's passes)
            "mean_bytes_per_gpu": float(np.mean([c.bytes_out / len(c.gpus) for c in colls])),
            # what the call delivers, each copy once (token copies to other GPUs; a ring's buffer)
            "mean_payload_bytes_per_gpu": float(np.mean([c.payload_bytes / len(c.gpus) for c in colls])),
            "mean_nvlink_bytes_per_gpu": float(np.mean([c.bytes_nvlink / len(c.gpus) for c in colls])),
            "mean_ib_bytes_per_gpu": float(np.mean([c.bytes_ib / len(c.gpus) for c in colls])),
        }
    return out


def bandwidth(r: RunRecord) -> tuple[dict, dict]:
    """(per busy time, weighted by bytes; per step time, averaged over links) for each link class."""
    cls, peak = r.ports.port_class, r.ports.peak_bytes_per_s
    nbytes, busy = r.ports.num_bytes, r.ports.busy_s
    busy_util, step_util = {}, {}
    for c, name in enumerate(PORT_CLASSES):
        sel = cls == c
        if not sel.any():
            continue
        carried = sel & (nbytes > 0) & (busy > 0)
        util = nbytes[carried] / (busy[carried] * peak[carried])
        busy_util[name] = float(np.average(util, weights=nbytes[carried])) if carried.any() else 0.0
        step_util[name] = float(np.mean(nbytes[sel] / (r.step_time_s * peak[sel]))) if r.step_time_s > 0 else 0.0
    return busy_util, step_util


def max_link_load(r: RunRecord) -> dict:
    """Seed 1.2's objective as simulated, two ways. Per all-to-all (a dispatch or combine of one EP
    group and MoE layer, the unit the placement balances): the busiest GPU egress port's bytes over
    its achievable rate, averaged over the calls (`all_to_all_busy_s`). Over the whole step: the
    port whose bytes take longest (`busy_s`, its class, bytes, and bytes over its class's mean); it
    sums every layer, so a port hot in every layer (EPLB puts each layer's heaviest pack on EP rank 0)
    outweighs a hot spot that moves from layer to layer."""
    p = r.ports
    seconds = np.divide(p.num_bytes, p.capacity_bytes_per_s, out=np.zeros(len(p.num_bytes)),
                        where=p.capacity_bytes_per_s > 0)
    k = int(np.argmax(seconds))
    same = p.port_class == p.port_class[k]
    mean = float(p.num_bytes[same].mean())
    rate = {c: float(p.capacity_bytes_per_s[p.port_class == c].max()) for c in (0, 1) if (p.port_class == c).any()}
    calls = [max(float(c.nvlink_bytes_per_gpu.max(initial=0)) / rate[0] if 0 in rate else 0.0,
                 float(c.ib_bytes_per_gpu.max(initial=0)) / rate[1] if 1 in rate else 0.0)
             for c in r.collectives.values() if c.kind.split("_")[0] in ("dispatch", "combine")]
    return {"all_to_all_busy_s": float(np.mean(calls)) if calls else 0.0,
            "port_class": PORT_CLASSES[int(p.port_class[k])], "busy_s": float(seconds[k]),
            "bytes": float(p.num_bytes[k]), "over_mean": float(p.num_bytes[k]) / mean if mean > 0 else 1.0}


def pipeline_bubble(r: RunRecord) -> dict:
    """Per PP stage, the time its GPUs spend outside their tasks before the pipeline drains (the
    last task ends anywhere): warm-up, waiting for a neighbour, cool-down. Mean over the stage's
    GPUs; the fraction is of the step, mean over stages."""
    s = r.scenario
    p = s.parallel.pp_size
    if r.task_spans is None:
        return {"pipeline_bubble_fraction": 0.0, "pipeline_bubble_s": [0.0]}
    end = max(e for spans in r.task_spans for _, e in spans)
    per_stage = []
    for stage in range(p):
        gpus = np.nonzero(s.ranks.pp_rank == stage)[0]
        idle = [end - union_length(np.array([a for a, _ in r.task_spans[g]]), np.array([b for _, b in r.task_spans[g]]))
                for g in gpus]
        per_stage.append(float(np.mean(idle)))
    return {"pipeline_bubble_fraction": float(np.mean(per_stage) / r.step_time_s), "pipeline_bubble_s": per_stage}


def placement_solver(r: RunRecord) -> dict:
    """topology_aware: the solver's busiest-port objective against round-robin's, its bound and time."""
    reports = r.placement_reports
    if not reports:
        return {}
    values = list(reports.values())
    return {"placement_solver": {
        "methods": sorted({v["method"] for v in values}),
        "objective_vs_round_robin": float(np.mean([v["objective_s"] / v["round_robin_s"] for v in values])),
        "max_gap": float(max(v["gap"] for v in values)),
        "solve_s": float(sum(v["solve_s"] for v in {id(v): v for v in values}.values())),
    }}


def dropped(r: RunRecord) -> dict:
    """Routed (token, expert) copies dropped over expert capacity in the step, and their share."""
    kept = sum(int(c.recv_copies.sum()) for c in r.counts.values())
    total = kept + r.dropped_copies
    return {"copies": int(r.dropped_copies), "fraction": r.dropped_copies / total if total else 0.0}


def ungated(r: RunRecord) -> dict:
    """routing.threshold or a trace: the (token, expert) places left empty (the gate kept fewer than
    top_k experts), their share of top_k per token, and the mean experts per token kept."""
    s = r.scenario
    if s.routing.threshold is None and s.routing.distribution != "trace":
        return {}
    places = sum(step_tokens_routed(r))
    return {"tokens_ungated": {"copies": int(r.ungated_copies), "fraction": r.ungated_copies / places if places else 0.0,
                               "experts_per_token": s.model.top_k * (1 - r.ungated_copies / places) if places else 0.0}}


def step_tokens_routed(r: RunRecord) -> list[int]:
    """Per (group, MoE layer, micro-batch): the top_k places of its tokens."""
    s = r.scenario
    keys = {(g, layer, mb) for g, layer, mb, _ in r.counts}
    return [s.parallel.ep_size * s.workload.tokens_per_gpu * s.model.top_k] * len(keys)


def load_imbalance(r: RunRecord) -> float:
    """max / mean routed token copies per GPU, per (group, MoE layer, micro-batch), then averaged."""
    recv: dict[tuple, np.ndarray] = {}
    for (group, layer, mb, _chunk), counts in r.counts.items():
        key = (group, layer, mb)
        recv[key] = recv[key] + counts.recv_copies if key in recv else counts.recv_copies
    # a layer whose tokens all went nowhere (threshold gating, capacity) has no imbalance to report
    ratios = [v.max() / v.mean() for v in recv.values() if v.sum() > 0]
    return float(np.mean(ratios)) if ratios else 1.0


def expert_tp(s) -> dict:
    """The expert-TP size the run used and, for auto, what seed 4.1 found."""
    if s.parallel.expert_tp_size != "auto":
        return {"expert_tp_size": s.expert_tp}
    auto = auto_expert_tp(s)
    split = (f"each expert split over {s.expert_tp} GPUs along its intermediate dimension" if s.expert_tp > 1
             else "experts stay whole")
    return {"expert_tp_size": s.expert_tp,
            "expert_tp_auto": (f"seed 4.1: one expert with its gradients and optimizer share takes "
                               f"{auto['expert_bytes'] / GIB:.3f} GiB of the {auto['available_bytes'] / GIB:.1f} GiB "
                               f"the rest leaves: ceil(...) = {auto['expert_tp_size']}, {split}")}


def parallelism_provenance(s) -> str:
    par = s.parallel
    parts = [f"Megatron-Core rank order (TP fastest, then DP, then PP); EP {par.ep_size} inside a stage"]
    if par.tp_size > 1:
        parts.append(f"TP {par.tp_size} with sequence parallelism: attention and dense FFN split, an all-gather "
                     "before and a reduce-scatter after each (rings over NVLink); router and experts on the shard; "
                     "shared experts replicated")
    if s.expert_tp > 1:
        parts.append(f"expert TP {s.expert_tp}: each GPU of an expert-TP group holds 1/{s.expert_tp} of its experts' "
                     "width and runs it on the rows the whole group received, all-gathered before and reduce-"
                     "scattered after (one ring over the group's total rows: equal shares assumed)")
    if par.pp_size > 1:
        parts.append(f"PP {par.pp_size} x {par.vpp_size} virtual stages, schedule {par.pp_schedule}, layers split "
                     "evenly (earlier stages take the remainder), BF16 activations / gradients sent per micro-batch as "
                     "one flow")
    if s.workload.embedding_and_head:
        parts.append("embedding on the first layer's stage, LM head and cross-entropy on the last's")
    return "; ".join(parts)


def data_parallel_provenance(s) -> str:
    if not s.backward:
        return "none: no gradients outside training" if s.workload.mode != "train" else \
            "none: scope moe_layer runs one MoE layer's forward, without backward or update"
    t = s.training
    sync = "reduce-scatter + parameter all-gather (ZeRO-1)" if t.distributed_optimizer else "all-reduce"
    bucket = f"{t.grad_bucket_params:,}" if t.grad_bucket_params else "Megatron's max(40M, 1M x DP)"
    overlap = "overlapped with the backward" if t.grad_overlap and s.pipeline.overlap == "three_stream" \
        else "after the whole backward"
    algorithm = ("rings" if t.distributed_optimizer or s.network.allreduce_algorithm == "ring"
                 else "double binary trees (a chain inside each node)" if s.network.allreduce_algorithm == "tree"
                 else "all-reduces by size (a double binary tree where it would finish sooner alone on the network, "
                      "else a ring; NCCL's protocols not modelled) and rings")
    cast = ("; then every held GEMM weight cast to FP8 (and its transposed copy), once a step"
            if s.workload.gemm_dtype == "fp8" else "")
    return (f"gradient {sync} in {t.grad_reduce_dtype}, buckets of {bucket} parameters of whole layers, "
            f"{overlap}; NCCL-style {algorithm} over dense DP {s.ranks.dp_size} and expert DP {s.ranks.expert_dp_size} "
            f"holding {s.cluster.nccl_sms} SMs; {'a gradient-norm pass (clipping) and ' if t.grad_clipping else ''}"
            f"Adam step memory-bound at {adam_bytes_per_param(s)} B per parameter over "
            f"{'the DP shard' if t.distributed_optimizer else 'all local parameters'}{cast}")


def memory_provenance(s) -> str:
    t = s.training
    if s.workload.mode != "train":
        nbytes = serving_weight_bytes(s)
        state = f"{'FP8' if nbytes < 2 else 'BF16'} weights ({nbytes:g} B per parameter)"
        acts = "one layer's working set"
        if s.workload.mode == "decode":
            acts += (f"; the KV cache of batch_per_gpu sequences at the mean context_len ({s.workload.kv_cache_dtype}, "
                     f"{'MLA latents whole on every TP rank' if s.model.attention.kind == 'mla' else 'KV heads / TP'})")
    else:
        moments = ELEMENT_BYTES[t.adam_moments_dtype]
        state = (f"{WEIGHT_BYTES + ELEMENT_BYTES[t.grad_reduce_dtype] + optimizer_bytes(s)} B per parameter "
                 f"(BF16 weight, {t.grad_reduce_dtype} grad, FP32 master, {t.adam_moments_dtype} Adam moments "
                 f"of {moments} B; optimizer / DP with ZeRO-1)")
        how = {"full": "full recompute: each layer's BF16 input, and one layer's tensors while it re-runs",
               "selective": f"selective recompute of {', '.join(t.recompute_modules)}",
               "none": "no recompute"}[t.recompute]
        acts = (f"activations saved for the backward tensor by tensor ({how}; "
                f"{'FP8' if s.workload.gemm_dtype == 'fp8' else 'BF16'} GEMM inputs) for the micro-batches "
                f"in flight under the schedule")
    return (f"{state}; {acts}; all-to-all receive buffers of the batch limit; {RESERVED_BYTES / 1e9:g} GB "
            f"allowance for context, workspaces and fragmentation (assumed); capacity hardware.hbm_gb in GiB")


def serving_summary(r: RunRecord, unions: dict) -> dict:
    """Serving figures: per-node throughput; decode's inter-token latency, attention layout, KV cache
    and the largest batch that fits; prefill's time to first token; what two-batch overlap hid (the
    time collectives were in flight while the compute stream was busy)."""
    s = r.scenario
    w = s.workload
    if w.mode == "train":
        return {}
    step = r.step_time_s
    out = {"tokens_per_s_per_node": output_tokens(s) / step / s.cluster.num_nodes}
    block = {"attention": "tp" if s.parallel.tp_size > 1 else "dp",
             "two_batch_overlap": {"enabled": w.two_batch_overlap, "comm_in_flight_s": unions["comm"],
                                   "exposed_comm_s": unions["exposed"],
                                   "hidden_comm_s": unions["comm"] - unions["exposed"]}}
    if w.mode == "decode":
        out["itl_s"] = step / w.accepted_tokens_per_step
        block.update({"batch_per_gpu": w.batch_per_gpu, "context_len": w.context_len,
                      "context_len_distribution": w.context_len_distribution,
                      "tokens_per_sequence_per_step": 1 + w.mtp_draft_tokens,
                      "accepted_tokens_per_step": w.accepted_tokens_per_step,
                      "kv_cache_bytes_per_gpu": kv_cache_bytes(s),
                      "kv_cache_bytes_per_sequence": kv_cache_bytes_per_sequence(s),
                      "max_batch_per_gpu": max_batch_per_gpu(s)})
    else:
        passes = prefill_passes(s)
        out["ttft_s"] = passes * step
        block.update({"prompt_len": w.seq_len, "passes_per_prompt": passes,
                      "tokens_per_pass_per_gpu": w.tokens_per_gpu * w.micro_batches,
                      "kv_cache_bytes_per_gpu": kv_cache_bytes(s)})
    return {**out, "serving": block}


def sm_bound(s) -> str:
    cap = algorithm(s.network.all_to_all).rate_cap(s.cluster, s.network.comm_sms)
    if not np.isfinite(cap):
        return ""
    return (f"; each flow at most comm_sms={s.network.comm_sms} x {s.cluster.deepep_bytes_per_s_per_sm / 1e9:g} GB/s "
            f"per SM = {cap / 1e9:g} GB/s at its busiest port (the SMs its kernel holds)")


def host_summary(r: RunRecord) -> dict:
    """The host thread per GPU: CPU time issuing kernels, the share of the step it is busy, and the
    time it waited for the GPU at syncs (simulator/engine/host.py); zeros where launches are free."""
    s, h = r.scenario, r.host or {"launches_per_gpu": 0.0, "busy_s": 0.0, "busy_max_s": 0.0, "sync_wait_s": 0.0}
    return {"cuda_graphs": s.training.cuda_graphs, "launch_us": s.cluster.host_launch_s * 1e6,
            "graph_launch_us": s.cluster.graph_launch_s * 1e6, **h,
            "busy_fraction": h["busy_max_s"] / r.step_time_s if r.step_time_s > 0 else 0.0}


def host_provenance(s) -> str:
    if not host_modelled(s):
        return "not modelled: kernels are issued for free (hardware.host_launch_us is 0)"
    how = (f"CUDA graphs: one {s.cluster.graph_launch_s * 1e6:g} us graph launch per op"
           if s.training.cuda_graphs else f"eager: {s.cluster.host_launch_s * 1e6:g} us of CPU per kernel")
    sync = ("the host waits for the GPU before each forward dispatch (the received counts) and"
            if algorithm(s.network.all_to_all).host_sync else "no host sync in the dispatch; it waits")
    return (f"one host thread per GPU issues its ops in program order ({how}); {sync} for a pipeline "
            f"stage's input (with PP); the update is issued for free")


def summarize(r: RunRecord) -> dict:
    s = r.scenario
    g = s.num_gpus
    flop = step_flop(r)
    step = r.step_time_s
    busy_util, step_util = bandwidth(r)
    peak = s.cluster.gpu.peak_bf16_flop_per_s
    mem = memory_per_gpu(s, buffers=r.tokens_per_batch_limit * buffer_bytes_per_token(s))
    unions = busy_unions(r)
    return {
        "scenario": s.name,
        "num_gpus": g,
        "step_time_s": step,
        "mfu": flop / (step * g * peak),
        "mfu_vs_gemm_dtype_peak": flop / (step * g * gemm_dtype_peak(s)),
        "model_tflops_per_gpu": flop / step / g / 1e12,
        "tokens_per_s": output_tokens(s) / step,
        "tokens_per_s_per_gpu": output_tokens(s) / step / g,
        **serving_summary(r, unions),
        "bandwidth_utilization": busy_util,
        "bandwidth_utilization_step": step_util,
        "max_link_load": max_link_load(r),
        "collectives": collective_stats(r),
        "breakdown_s": breakdown(r, unions),
        "compute_by_kernel_class_s": compute_by_kernel_class(r),
        "load_imbalance": load_imbalance(r),
        "tokens_dropped": dropped(r),
        **ungated(r),
        **placement_solver(r),
        **pipeline_bubble(r),
        "host": host_summary(r),
        "model_flop_per_step": flop,
        "model_flop_per_token_forward": flop_per_token(s),
        "layout": {"ep_size": s.parallel.ep_size, "dp_size": s.dp_size, "tp_size": s.ranks.tp_size,
                   "pp_size": s.ranks.pp_size, "dense_dp_size": s.ranks.dp_size, **expert_tp(s),
                   "expert_dp_size": s.ranks.expert_dp_size,
                   "nodes": s.cluster.num_nodes, "gpus_per_node": s.cluster.gpus_per_node},
        "batching": {"chunks": r.num_chunks, "tokens_per_batch_limit": r.tokens_per_batch_limit,
                     "rounds": r.rounds},
        "memory_per_gpu": mem.as_dict(),
        "parameters_per_gpu": local_params(s),
        "simulated_events": r.num_events,
        "network_solves": r.network_solves,
        "provenance": {
            "compute_model": r.compute_model,
            "network_model": (f"fluid max-min fair share over per-direction ports (NVLink, NIC"
                              f"{', spine' if r.has_spine else ''}); one flow per token owner "
                              f"per collective; all_to_all={s.network.all_to_all}{sm_bound(s)}"),
            "hardware_preset": s.hardware_preset,
            "model_preset": s.model_preset,
            "seed": s.routing.seed,
            "flop_convention": " ".join(FLOP_CONVENTION.split()),
            "data_parallel": data_parallel_provenance(s),
            "memory": memory_provenance(s),
            "parallelism": parallelism_provenance(s),
            "host": host_provenance(s),
            "not_modelled": ("FSDP with reshard_after_forward (weights sharded between uses), "
                             "DualPipe's zero-bubble weight-gradient split, "
                             "serving's scheduler (continuous batching, prefill-decode KV transfer), "
                             "the MTP module's own layer (drafts are verified by the main model)"),
        },
        "epsim_version": __version__,
    }


def per_layer_gpu_rows(r: RunRecord) -> list[dict]:
    """One row per (MoE layer, GPU): routed tokens, expert compute and collective times, summed
    over micro-batches and chunks (forward)."""
    s = r.scenario
    rows = []
    keys_of: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for g, l, mb, c in r.counts:  # the micro-batches that ran each (EP group, MoE layer)
        keys_of.setdefault((g, l), []).append((mb, c))
    for (group, layer), keys in keys_of.items():
        recv = sum(r.counts[group, layer, mb, c].recv_copies for mb, c in keys)
        work = sum(r.counts[group, layer, mb, c].expert_compute_s for mb, c in keys)
        times = {}
        for kind in ("dispatch", "combine"):
            colls = [r.collectives[CollectiveId(kind, group, layer, mb, c)] for mb, c in keys]
            times[kind] = sum(c.recv_done_s - c.start_s for c in colls)
        for local, gpu in enumerate(s.ranks.ep_groups[group].tolist()):
            rows.append({"moe_layer": layer, "gpu": gpu, "ep_group": group,
                         "routed_token_copies": int(recv[local]),
                         "expert_compute_s": float(work[local]),
                         "dispatch_s": float(times["dispatch"][local]),
                         "combine_s": float(times["combine"][local])})
    return rows
