"""Rules a scenario's layout must obey; each broken rule is a ScenarioError naming key, value and rule."""
from __future__ import annotations

from hardware.units import GIB
from simulator.errors import ScenarioError
from simulator.scenario.balance_rules import check_load_balancing
from simulator.scenario.memory import Memory, auto_expert_tp, key_to_change, max_batch_per_gpu, memory_per_gpu
from simulator.scenario.schema import Scenario
from simulator.scenario.serving import check_serving, kv_bytes_per_token_layer, kv_cache_bytes_per_sequence
from simulator.wire import algorithm


def check_tensor_parallel(s: Scenario) -> None:
    t, a, gpn = s.parallel.tp_size, s.model.attention, s.cluster.gpus_per_node
    key_value = s.parallel.expert_tp_size
    if key_value != "auto" and key_value < 1:
        raise ScenarioError("parallel.expert_tp_size", key_value, "must be >= 1 (GPUs each expert is split over) or auto")
    if key_value == "auto":  # auto's memory rule needs the rank layout: check what it needs first
        for key, size in (("tp_size", t), ("ep_size", s.parallel.ep_size)):
            if s.num_gpus % (size * s.parallel.pp_size):
                raise ScenarioError(f"parallel.{key}", size, f"x parallel.pp_size={s.parallel.pp_size} must divide the "
                                    f"{s.num_gpus} GPUs (hardware.nodes x gpus_per_node): a TP or EP group lives "
                                    f"inside one pipeline stage")
    e = s.expert_tp
    if e > 1:
        why = ""
        if key_value == "auto":
            auto = auto_expert_tp(s)
            why = (f" (seed 4.1 with auto: one expert with its gradients and optimizer share needs "
                   f"{auto['expert_bytes'] / GIB:.1f} GiB, {auto['available_bytes'] / GIB:.1f} GiB are left, "
                   f"so it is split over {e} GPUs)")
        if gpn % e:
            raise ScenarioError("parallel.expert_tp_size", key_value, f"an expert-TP group lives inside one node: "
                                f"{e} must divide gpus_per_node={gpn}{why}")
        if s.model.moe_intermediate_size % e:
            raise ScenarioError("parallel.expert_tp_size", key_value, f"{e} must divide model.moe_intermediate_size="
                                f"{s.model.moe_intermediate_size}: each GPU holds 1/{e} of every expert's width{why}")
    if t == 1:
        return
    if gpn % t:
        raise ScenarioError("parallel.tp_size", t, f"a TP group lives inside one node: must divide gpus_per_node={gpn}")
    if a.num_heads % t:
        raise ScenarioError("parallel.tp_size", t, f"must divide model.attention.num_heads={a.num_heads}")
    if a.kind == "gqa" and a.num_kv_heads % t:
        raise ScenarioError("parallel.tp_size", t, f"must divide model.attention.num_kv_heads={a.num_kv_heads}")
    if s.workload.tokens_per_gpu % s.pipeline.chunks:
        raise ScenarioError("pipeline.chunks", s.pipeline.chunks, "with tp_size > 1 must divide workload.tokens_per_gpu")


def check_pipeline(s: Scenario) -> None:
    par, m = s.parallel, s.model
    p, v = par.pp_size, par.vpp_size
    if s.num_gpus % p:
        raise ScenarioError("parallel.pp_size", p, f"must divide the {s.num_gpus} GPUs")
    if (s.num_gpus // p) % par.tp_size:
        raise ScenarioError("parallel.tp_size", par.tp_size, f"x parallel.pp_size={p} must divide the {s.num_gpus} "
                            f"GPUs: a pipeline stage ({s.num_gpus // p} GPUs) holds whole TP groups")
    if v > 1 and par.pp_schedule != "interleaved":
        raise ScenarioError("parallel.vpp_size", v, "more than one model chunk per rank needs parallel.pp_schedule=interleaved")
    if p == 1:
        return
    stage, gpn = s.num_gpus // p, s.cluster.gpus_per_node
    if stage % gpn and gpn % stage:
        raise ScenarioError("parallel.pp_size", p, f"a pipeline stage ({stage} GPUs = GPUs / pp_size) must be whole "
                            f"nodes or part of one node of gpus_per_node={gpn}: its data-parallel rings need the same "
                            f"GPUs on every node they span")
    if s.workload.scope != "model":
        raise ScenarioError("parallel.pp_size", p, "a pipeline splits the model's layers: needs workload.scope=model")
    if m.num_layers < p * v:
        raise ScenarioError("parallel.pp_size", p, f"x parallel.vpp_size={v} virtual stages need at least one layer "
                            f"each; model.num_layers={m.num_layers}")
    if s.pipeline.schedule == "dualpipe" and par.pp_schedule != "interleaved":
        raise ScenarioError("pipeline.schedule", "dualpipe", f"with parallel.pp_size > 1 pairs the interleaved "
                            f"schedule's steady-state forwards and backwards (Megatron-Core's EP all-to-all overlap "
                            f"under PP; its warm-up keeps the pairs from waiting on each other): needs "
                            f"parallel.pp_schedule=interleaved, not {par.pp_schedule}")
    if s.pipeline.schedule not in ("lockstep", "dualpipe"):
        raise ScenarioError("pipeline.schedule", s.pipeline.schedule, "orders micro-batches on a single stage; with "
                            "parallel.pp_size > 1 the schedule is parallel.pp_schedule's (dualpipe: its steps paired)")
    if par.pp_schedule == "dualpipe":
        m_ = s.workload.micro_batches
        if p % 2 or m_ % 2 or m_ < 2 * p:
            raise ScenarioError("parallel.pp_schedule", "dualpipe", f"needs an even pp_size and an even number of "
                                f"micro-batches >= 2 x pp_size (DualPipe); pp_size={p}, micro_batches={m_}")
        if s.workload.mode != "train":
            raise ScenarioError("parallel.pp_schedule", "dualpipe", "pairs forwards with backwards: needs workload.mode=train")
    if par.pp_schedule == "interleaved":
        if v < 2:
            raise ScenarioError("parallel.vpp_size", v, "the interleaved schedule needs vpp_size >= 2 model chunks")
        if s.workload.micro_batches % p:
            raise ScenarioError("workload.micro_batches", s.workload.micro_batches,
                                f"the interleaved schedule needs a multiple of parallel.pp_size={p} (Megatron-Core)")


def check_recompute(s: Scenario) -> None:
    t = s.training
    modules = list(t.recompute_modules)
    if "recompute_modules" in t.model_fields_set and t.recompute != "selective":
        raise ScenarioError("training.recompute_modules", modules,
                            f"lists what selective recompute re-runs: needs training.recompute=selective, not {t.recompute}")
    if len(set(modules)) != len(modules):
        raise ScenarioError("training.recompute_modules", modules, "lists each module once")
    if "mla_up_proj" in modules and t.recompute == "selective" and s.model.attention.kind != "mla":
        raise ScenarioError("training.recompute_modules", modules,
                            f"mla_up_proj re-runs MLA's up-projections; model.attention.kind is {s.model.attention.kind}")


def check_placement(s: Scenario) -> None:
    pl, m, ep = s.placement, s.model, s.parallel.ep_size
    if pl.redundant_experts and pl.strategy != "eplb":
        raise ScenarioError("placement.redundant_experts", pl.redundant_experts,
                            f"redundant expert slots are filled by placement.strategy=eplb, not {pl.strategy}")
    if pl.strategy == "topology_aware" and s.expert_tp > 1:
        raise ScenarioError("placement.strategy", "topology_aware", "is simulated with parallel.expert_tp_size=1")
    if pl.strategy != "eplb":
        return
    slots = m.num_experts + pl.redundant_experts
    if slots < ep or slots % ep:
        raise ScenarioError("placement.redundant_experts", pl.redundant_experts,
                            f"model.num_experts={m.num_experts} + redundant experts must fill every GPU of "
                            f"parallel.ep_size={ep} equally (a multiple of it, e.g. {max(-(-slots // ep), 1) * ep - m.num_experts})")
    if s.expert_tp > 1:
        raise ScenarioError("placement.strategy", "eplb", "is simulated with parallel.expert_tp_size=1")
    nodes = s.ranks.ep_group(0).num_nodes
    if s.routing.max_nodes_per_token is not None and (m.num_experts % nodes or slots % nodes):
        raise ScenarioError("placement.strategy", "eplb", f"hierarchical EPLB (group-limited routing) packs one expert "
                            f"group per node: model.num_experts={m.num_experts} and its {slots} slots must divide "
                            f"over the EP group's {nodes} nodes")


def check_expert_groups(m) -> None:
    """Group-limited routing (model.num_expert_groups / num_groups_per_token) must be satisfiable."""
    groups, per_token = m.num_expert_groups, m.num_groups_per_token
    if m.num_experts % groups:
        raise ScenarioError("model.num_expert_groups", groups, f"must divide model.num_experts={m.num_experts}")
    if per_token > groups:
        raise ScenarioError("model.num_groups_per_token", per_token, f"must be <= model.num_expert_groups={groups}")
    if per_token * (m.num_experts // groups) < m.top_k:
        raise ScenarioError("model.num_groups_per_token", per_token, f"{per_token} group(s) of "
                            f"{m.num_experts // groups} experts cannot hold top_k={m.top_k} experts")


def check_layer_extension(s: Scenario) -> None:
    """workload.extend_layers: the MoE layers simulated stand for the rest, so every MoE layer must be
    alike: one stage holding them all, one law for every layer, one step."""
    if s.workload.extend_layers != "always":
        return
    r = s.routing
    rule = ("extends a whole model from its first MoE layers (simulator/extension.py), which stand for "
            "the rest only when every MoE layer is alike")
    if s.workload.scope != "model":
        raise ScenarioError("workload.extend_layers", "always", f"{rule}: needs workload.scope=model")
    if s.parallel.pp_size > 1:
        raise ScenarioError("workload.extend_layers", "always",
                            f"{rule}: needs parallel.pp_size=1 (a pipeline's stages hold different layers)")
    if s.workload.steps > 1:
        raise ScenarioError("workload.extend_layers", "always",
                            f"{rule}: needs workload.steps=1 (loads and gates of later steps need every layer)")
    if r.zipf_alpha_per_layer or r.distribution == "trace":
        raise ScenarioError("workload.extend_layers", "always",
                            f"{rule}: routing.zipf_alpha_per_layer and traces give each layer its own law")
    if r.distribution in ("zipf", "dirichlet"):
        # each layer draws its own hot experts, so a few layers are a poor sample of the rest:
        # 61-layer DeepSeek-V3 at EP 64, Zipf 1.2, seeds 0-3: -5.3, -13.2, -6.9, -1.0 % (README)
        raise ScenarioError("workload.extend_layers", "always",
                            f"{rule}: routing.distribution={r.distribution} draws each layer's hot experts, and a "
                            f"few layers misjudge the rest by several percent; use uniform or balanced routing")


def check_layout(s: Scenario) -> None:
    ep = s.parallel.ep_size
    gpus = s.num_gpus
    gpn = s.cluster.gpus_per_node
    m = s.model
    check_tensor_parallel(s)
    check_pipeline(s)
    check_recompute(s)
    if gpus % ep:
        raise ScenarioError("parallel.ep_size", ep, f"must divide the {gpus} GPUs (hardware.nodes x gpus_per_node)")
    stage, e = gpus // s.parallel.pp_size, s.expert_tp
    auto = " (auto: seed 4.1 splits each expert over that many GPUs)" if s.parallel.expert_tp_size == "auto" else ""
    if stage % (ep * e):
        raise ScenarioError("parallel.ep_size", ep, f"x expert_tp_size={e}{auto} must divide the {stage} GPUs of a "
                            f"pipeline stage (GPUs / parallel.pp_size={s.parallel.pp_size}): an EP group lives inside "
                            f"one stage")
    if (ep * e) % gpn and gpn % (ep * e):
        raise ScenarioError("parallel.ep_size", ep, f"an EP group (with its expert-TP groups) must be whole nodes or part "
                            f"of one node: ep_size x expert_tp_size={e} must divide or be a multiple of gpus_per_node={gpn}")
    if m.num_experts < ep and m.num_experts > gpn and m.num_experts % gpn:
        raise ScenarioError("parallel.ep_size", ep, f"exceeds model.num_experts={m.num_experts}, so GPU i holds expert "
                            f"i and the rest hold none (seed 1.1); then num_experts must be a multiple of "
                            f"gpus_per_node={gpn} so that every node holding experts holds the same number")
    if m.top_k > m.num_experts:
        raise ScenarioError("model.top_k", m.top_k, f"must be <= model.num_experts={m.num_experts}")
    check_expert_groups(m)
    if m.num_dense_layers > m.num_layers:
        raise ScenarioError("model.num_dense_layers", m.num_dense_layers, f"must be <= model.num_layers={m.num_layers}")
    if m.num_moe_layers < 1:
        raise ScenarioError("model.num_dense_layers", m.num_dense_layers, "leaves no MoE layer to simulate")
    if m.attention.kind == "gqa" and (m.attention.num_kv_heads < 1 or m.attention.head_dim < 1):
        raise ScenarioError("model.attention", m.attention.kind, "gqa needs num_kv_heads >= 1 and head_dim >= 1")
    if m.attention.kind == "mla" and (m.attention.kv_lora_rank < 1 or m.attention.v_head_dim < 1):
        raise ScenarioError("model.attention", m.attention.kind, "mla needs kv_lora_rank >= 1 and v_head_dim >= 1")
    if s.network.comm_sms >= s.cluster.gpu.num_sms:
        raise ScenarioError("network.comm_sms", s.network.comm_sms,
                            f"must be < the GPU's {s.cluster.gpu.num_sms} SMs (hardware.num_sms)")
    if algorithm(s.network.all_to_all).sm_rate_field and s.network.comm_sms < 2:
        raise ScenarioError("network.comm_sms", s.network.comm_sms,
                            f"{s.network.all_to_all} (DeepEP normal) runs on channels of 2 SMs and moves bytes only "
                            "as fast as its SMs copy them: needs >= 2")
    if s.cluster.nccl_sms >= s.cluster.gpu.num_sms:
        raise ScenarioError("hardware.nccl_sms", s.cluster.nccl_sms,
                            f"must be < the GPU's {s.cluster.gpu.num_sms} SMs (hardware.num_sms)")
    if s.workload.tokens_per_gpu < s.pipeline.chunks:
        raise ScenarioError("pipeline.chunks", s.pipeline.chunks,
                            f"must be <= workload.tokens_per_gpu={s.workload.tokens_per_gpu}")
    if s.pipeline.schedule == "sequential" and s.workload.mode != "train":
        raise ScenarioError("pipeline.schedule", "sequential",
                            "runs each micro-batch's forward then its backward: needs workload.mode=train")
    if s.pipeline.schedule == "dualpipe" and (s.workload.mode != "train" or s.pipeline.overlap != "three_stream"):
        raise ScenarioError("pipeline.schedule", "dualpipe",
                            "pairs a forward with a backward: needs workload.mode=train and pipeline.overlap=three_stream")
    if s.routing.adaptive_alpha > 0 and s.routing.distribution == "balanced":
        raise ScenarioError("routing.adaptive_alpha", s.routing.adaptive_alpha,
                            "adapts a gate's law; routing.distribution=balanced assigns exact equal counts")
    if s.routing.drift > 0 and (s.workload.steps < 2 or s.routing.distribution in ("uniform", "balanced")):
        raise ScenarioError("routing.drift", s.routing.drift, "moves a skewed law's hot experts from step to step: "
                            "needs workload.steps >= 2 and routing.distribution zipf or dirichlet")
    if s.routing.adaptive_alpha > 0 and s.workload.steps < 2:
        raise ScenarioError("routing.adaptive_alpha", s.routing.adaptive_alpha,
                            "adjusts each step's gate from the previous step's loads: needs workload.steps >= 2")
    check_layer_extension(s)
    check_placement(s)
    check_load_balancing(s)
    if s.routing.distribution == "balanced" and m.num_experts % m.top_k:
        raise ScenarioError("routing.distribution", "balanced",
                            f"needs model.num_experts={m.num_experts} to be a multiple of model.top_k={m.top_k}")
    limit = s.routing.max_nodes_per_token
    if limit is not None:
        nodes_with_experts = max(1, min(ep, m.num_experts) // gpn)
        experts_per_node = m.num_experts // nodes_with_experts
        if s.placement.strategy == "round_robin" and m.num_experts > ep and m.num_experts % ep and ep > gpn:
            few, many = m.num_experts // ep, -(-m.num_experts // ep)
            raise ScenarioError("routing.max_nodes_per_token", limit,
                                f"group-limited routing needs the same number of experts on every node; round-robin "
                                f"of model.num_experts={m.num_experts} over parallel.ep_size={ep} gives some GPUs "
                                f"{many} experts and others {few}")
        if s.routing.distribution == "balanced":
            raise ScenarioError("routing.max_nodes_per_token", limit,
                                "applies to gated distributions (uniform, zipf); balanced assigns exact equal counts")
        if limit * experts_per_node < m.top_k:
            raise ScenarioError("routing.max_nodes_per_token", limit,
                                f"{limit} node(s) x {experts_per_node} experts per node cannot hold top_k={m.top_k} experts")
    check_serving(s)
    mem = memory_per_gpu(s)
    decode = s.workload.mode == "decode"
    if decode and mem.before_buffers > mem.capacity and mem.weights + mem.other < mem.capacity:
        w = s.workload
        per_seq = kv_cache_bytes_per_sequence(s)
        raise ScenarioError(
            "workload.batch_per_gpu", w.batch_per_gpu,
            f"does not fit memory: the KV cache takes {per_seq / GIB * 1024:.1f} MiB per sequence "
            f"({w.context_len} tokens x {s.model.num_layers} layers x {kv_bytes_per_token_layer(s):g} B, "
            f"{w.kv_cache_dtype}), {mem.kv_cache / GIB:.1f} GiB for {w.batch_per_gpu} sequences, beside "
            f"{mem.weights / GIB:.1f} GiB of weights, {mem.activations / GIB:.2f} GiB of working set and "
            f"{mem.other / GIB:g} GiB allowance, over hardware.hbm_gb={mem.capacity / GIB:g} (GiB); rule: memory "
            f"per GPU <= HBM; at most {max_batch_per_gpu(s)} sequences fit at workload.context_len={w.context_len}")
    if mem.before_buffers > mem.capacity:
        key, value = key_to_change(s, mem)
        terms = ", ".join(f"{t} {getattr(mem, t) / GIB:.1f}" for t in Memory.TERMS if t != "buffers")
        raise ScenarioError(
            key, value,
            f"does not fit memory: {mem.before_buffers / GIB:.1f} GiB per GPU before all-to-all buffers "
            f"({terms} GiB; the biggest is {mem.biggest}) at ep_size={ep} exceeds "
            f"hardware.hbm_gb={mem.capacity / GIB:g} (GiB); rule: memory per GPU <= HBM; change {key}"
            f"{' (with more hardware.nodes)' if key == 'parallel.ep_size' and ep == gpus else ''}")
