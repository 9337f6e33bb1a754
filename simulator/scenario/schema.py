"""The scenario's schema: one frozen pydantic section per YAML section, and the Scenario they build."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Optional

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from hardware.spec import ClusterSpec
from simulator.model import ModelSpec
from simulator.ranks import RankLayout
from simulator.wire import ALL_TO_ALL

Pos = Field(gt=0)
Frac = Field(gt=0, le=1)
NonNeg = Field(ge=0)

# Physical ranges (issue 16): every number is finite and inside a range the simulator handles, so
# `kernel_launch_us: 1e300` or `seq_len: 1e40` is one message naming the key, the value and the range
# instead of a hang. Each bound says where it comes from; they sit far outside today's hardware and
# models, and the work such a scenario asks for is estimated and budgeted apart (scenario/budget.py).
MAX_GPUS_PER_NODE = 576  # NVIDIA's announced largest NVLink domain (Vera Rubin NVL576); GB200 NVL72 ships 72
MAX_NODES = 16_384  # 131k GPUs at 8 per node: above the largest published training clusters (~100k H100)
MAX_LAYERS = 1024  # deepest published LLMs have ~126 (Llama 3.1 405B) and 118 (PaLM 540B) layers
MAX_WIDTH = 1 << 22  # hidden and FFN sizes: the largest published are 18,432 and 73,728 (PaLM); 57x that
MAX_EXPERTS = 1 << 20  # "Mixture of A Million Experts" (PEER, He 2024) routes over 1024^2 experts
MAX_TOKENS = 1 << 24  # 16.8M: above the longest trained contexts (Llama 4 Scout, 10M tokens)
MAX_HEADS = 1024  # attention heads / head dims: published models use <= 128 heads of <= 256 dims
MAX_US = 1e6  # latencies and per-call costs: 1 s, a million times a real launch or hop (2-10 us)
MAX_LINK_GB_PER_S = 1e9  # physical links are < 1e4 GB/s; up to 1e9 is "free communication" (tests/test_pipeline.py)
BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def range_text(field) -> str:
    """A field's bounds as an interval, e.g. (0, 4096] or [0, 10000]."""
    lo, hi, lo_open, hi_open = "-inf", "inf", True, True
    for bound in field.metadata:
        if isinstance(bound, (annotated_types.Gt, annotated_types.Ge)):
            lo, lo_open = _number(getattr(bound, "gt", getattr(bound, "ge", None))), isinstance(bound, annotated_types.Gt)
        if isinstance(bound, (annotated_types.Lt, annotated_types.Le)):
            hi, hi_open = _number(getattr(bound, "lt", getattr(bound, "le", None))), isinstance(bound, annotated_types.Lt)
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="wrap")
    @classmethod
    def _name_the_range(cls, value, handler, info):
        """A bound's message names the whole range, not only the side that was crossed."""
        try:
            return handler(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] in BOUND_ERRORS:
                raise PydanticCustomError("out_of_range", "{msg} (range {range})", {
                    "msg": err["msg"], "range": range_text(cls.model_fields[info.field_name])}) from None
            raise


class HardwareSection(_Section):
    preset: str = "h100-seed"
    description: str = ""
    nodes: int = Field(gt=0, le=MAX_NODES)
    gpu_name: str
    gpus_per_node: int = Field(gt=0, le=MAX_GPUS_PER_NODE)
    # 1 MFLOP/s (below any CPU) to 100 PFLOP/s (44x B200's 2.25 dense BF16 PFLOP/s)
    peak_bf16_tflops: float = Field(ge=1e-6, le=1e5)
    peak_fp8_tflops: float = Field(ge=1e-6, le=1e5)
    hbm_gb: float = Field(gt=0, le=1e5)  # GiB: B200 has 180; up to 100 TiB so the memory rule can be relaxed
    hbm_tb_per_s: float = Field(ge=1e-6, le=1e3)  # 1 MB/s to 1 PB/s (B200: 8 TB/s)
    num_sms: int = Field(gt=0, le=4096)  # H100 132, B200 148
    matmul_efficiency: float = Frac
    memory_efficiency: float = Frac
    kernel_launch_us: float = Field(ge=0, le=1e4)  # 10 ms: a launch is 2-10 us, on a CPU tens
    nvlink_gb_per_s: float = Field(gt=0, le=MAX_LINK_GB_PER_S)  # per direction; NVLink5 900
    nvlink_efficiency: float = Frac
    nvlink_latency_us: float = Field(ge=0, le=MAX_US)
    ib_gbit_per_s: float = Field(gt=0, le=8 * MAX_LINK_GB_PER_S)  # per NIC; XDR is 800 Gbit/s
    ib_efficiency: float = Frac
    ib_latency_us: float = Field(ge=0, le=MAX_US)
    ib_cross_leaf_latency_us: float = Field(ge=0, le=MAX_US)
    spine_oversubscription: float = Field(ge=1, le=1024)  # fabrics are built 1:1 to 4:1
    ll_kernel_overhead_us: float = Field(default=0.0, ge=0, le=MAX_US)
    direct_alltoall_efficiency: float = Field(default=1.0, gt=0, le=1)
    nccl_sms: int = Field(default=0, ge=0, le=4096)  # SMs NCCL's ring collectives hold (data-parallel sync)
    # the host CPU: seconds of CPU per kernel launched eagerly, per CUDA graph launched (0: free)
    host_launch_us: float = Field(default=0.0, ge=0, le=1e4)
    graph_launch_us: float = Field(default=0.0, ge=0, le=1e4)
    # GB/s one SM copies in DeepEP's normal kernels, so comm_sms bound their rate; null: unbounded
    deepep_gb_per_s_per_sm: Optional[float] = Field(default=None, gt=0, le=MAX_LINK_GB_PER_S)
    calibration: Optional[str] = None  # a shipped calibration name or a .json path; None = roofline


class AttentionSection(_Section):
    kind: Literal["mla", "gqa"]
    num_heads: int = Field(gt=0, le=MAX_HEADS)
    num_kv_heads: int = Field(default=0, ge=0, le=MAX_HEADS)
    head_dim: int = Field(default=0, ge=0, le=MAX_HEADS)
    q_lora_rank: int = Field(default=0, ge=0, le=MAX_WIDTH)  # DeepSeek-V3: 1536
    kv_lora_rank: int = Field(default=0, ge=0, le=MAX_WIDTH)  # DeepSeek-V3: 512
    qk_nope_head_dim: int = Field(default=0, ge=0, le=MAX_HEADS)
    qk_rope_head_dim: int = Field(default=0, ge=0, le=MAX_HEADS)
    v_head_dim: int = Field(default=0, ge=0, le=MAX_HEADS)
    sliding_window: int = Field(default=0, ge=0, le=MAX_TOKENS)
    full_attention_interval: int = Field(default=1, gt=0, le=MAX_LAYERS)


class ModelSection(_Section):
    preset: Optional[str] = "deepseek-v3"  # null with hf_config
    hf_config: Optional[str] = None  # a Hugging Face config.json (or a shipped one's name) instead of a preset
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    moe_intermediate_size: int = Field(gt=0, le=MAX_WIDTH)
    num_experts: int = Field(gt=0, le=MAX_EXPERTS)
    top_k: int = Field(gt=0, le=1024)  # PEER: 16 heads x 16 experts = 256 per token; Mixtral 2, DeepSeek-V3 8
    num_shared_experts: int = Field(ge=0, le=1024)
    num_layers: int = Field(gt=0, le=MAX_LAYERS)
    num_dense_layers: int = Field(ge=0, le=MAX_LAYERS)
    dense_intermediate_size: int = Field(gt=0, le=MAX_WIDTH)
    vocab_size: int = Field(gt=0, le=1 << 22)  # 4M: 16x Gemma's 256k, the largest published
    # Group-limited routing as the router has it (HF n_group / topk_group; DeepSeek-V3: 8 and 4): the
    # experts form equal groups and a token's top_k lie in at most num_groups_per_token of them. A fact
    # of the model; the simulation routes by routing.max_nodes_per_token (DeepSeek deploys one group per node).
    num_expert_groups: int = Field(default=1, gt=0, le=MAX_EXPERTS)
    num_groups_per_token: int = Field(default=1, gt=0, le=MAX_EXPERTS)
    attention: AttentionSection


class ParallelSection(_Section):
    ep_size: int = Field(gt=0, le=MAX_NODES * MAX_GPUS_PER_NODE)
    tp_size: int = Field(default=1, gt=0, le=MAX_GPUS_PER_NODE)  # a TP group lives inside a node
    pp_size: int = Field(default=1, gt=0, le=MAX_LAYERS)  # at least one layer per stage
    vpp_size: int = Field(default=1, gt=0, le=MAX_LAYERS)  # model chunks per PP rank (interleaved schedule)
    expert_tp_size: int | Literal["auto"] = 1  # TP inside an expert; auto: seed 4.1's split
    pp_schedule: Literal["1f1b", "interleaved", "gpipe", "dualpipe"] = "1f1b"


class WorkloadSection(_Section):
    mode: Literal["train", "prefill", "decode"] = "train"
    scope: Literal["model", "moe_layer"] = "model"
    # tokens per GPU per micro-batch: real ones are 1k-64k; bounded like a sequence (MAX_TOKENS)
    tokens_per_gpu: int = Field(default=4096, gt=0, le=MAX_TOKENS)
    micro_batches: int = Field(default=2, gt=0, le=1 << 16)  # DeepSeek-V3's DualPipe step: 120
    seq_len: int = Field(default=4096, gt=0, le=MAX_TOKENS)
    gemm_dtype: Literal["bf16", "fp8", "fp32"] = "bf16"  # fp32: CPUs, with an fp32 calibration
    # true: the first layer's stage also runs the token embedding, the last layer's the LM head and
    # cross-entropy over the vocabulary (a whole model); false: decoder layers only (a stage cut
    # out of a bigger model, as the reference scenarios)
    embedding_and_head: bool = False
    # a pipeline step of many micro-batches from two shorter ones (simulator/extension.py): auto
    # when the whole step would be slow to simulate, always, or never
    extend_micro_batches: Literal["auto", "always", "never"] = "auto"
    # a whole model's step from two with fewer MoE layers (simulator/extension.py; an estimate, not
    # exact, so never unless asked)
    extend_layers: Literal["never", "always"] = "never"
    # consecutive steps of fresh tokens, for per-expert load monitoring and adaptive gating (seed 2.3)
    steps: int = Field(default=1, gt=0, le=1000)
    # Serving (simulator/scenario/serving.py). decode: each GPU holds batch_per_gpu sequences whose
    # KV caches are context_len tokens long (fixed, or drawn uniformly on [1, 2 x context_len - 1]
    # per sequence: requests at different points of their generation); a step decodes one token of
    # each (1 + mtp_draft_tokens with multi-token prediction, of which accepted_tokens_per_step are
    # kept on average). SGLang's decode runs up to a few hundred sequences per GPU (LMSYS: 256).
    batch_per_gpu: int = Field(default=128, gt=0, le=1 << 16)
    context_len: int = Field(default=4096, gt=0, le=MAX_TOKENS)
    context_len_distribution: Literal["fixed", "uniform"] = "fixed"
    kv_cache_dtype: Literal["bf16", "fp8"] = "bf16"  # FlashMLA's dense decode kernel reads a BF16 cache
    # DeepSeek-V3 predicts one extra token (report 2.2) and accepts it 85-90 % of the time (report 5.4.3)
    mtp_draft_tokens: int = Field(default=0, ge=0, le=16)
    accepted_tokens_per_step: float = Field(default=1.0, ge=1, le=17)
    # two-batch overlap (SGLang TBO, DeepSeek's serving schedule): the GPU's batch runs as two
    # micro-batches, the attention / shared experts of one beside the dispatch / combine of the other
    two_batch_overlap: bool = False
    # prefill serving: each forward pass takes this many tokens per GPU of longer prompts (SGLang's
    # --chunked-prefill-size); null: whole prompts (seq_len) in one pass
    chunked_prefill_tokens: Optional[int] = Field(default=None, gt=0, le=MAX_TOKENS)


class RoutingSection(_Section):
    distribution: Literal["uniform", "balanced", "zipf", "dirichlet", "trace"] = "uniform"
    # Measured router skew fits alpha ~ 1 (skewed-zipf.yaml: 1.2); at 4 the top expert already takes
    # 92 % of the tokens (1 / zeta(4)). The sampler draws distinct experts by rejection, so a
    # steeper law makes it draw ~1/p of the k-th expert's mass per token: budget.py estimates those draws.
    zipf_alpha: float = Field(default=1.0, gt=0, le=4)
    # per-layer skew: MoE layer i's Zipf exponent is zipf_alpha_per_layer[i mod its length] (a
    # different strength per layer; the hot set differs per layer anyway, seeded by the layer);
    # empty: zipf_alpha for every layer
    zipf_alpha_per_layer: tuple[Annotated[float, Field(gt=0, le=4)], ...] = Field(default=(), strict=False,
                                                                                 max_length=MAX_LAYERS)
    seed: int = Field(default=0, ge=0, le=2**64 - 1)  # numpy seeds are 64-bit words
    # or `model`: the model's group limit where the EP group has one node per expert group (load.py)
    max_nodes_per_token: Optional[int] = Field(default=None, gt=0, le=MAX_NODES)
    adaptive_alpha: float = Field(default=0.0, ge=0, lt=1)  # seed 2.3's balancing factor, in [0, 1)
    # dirichlet: each layer's expert probabilities drawn from Dirichlet(concentration x 1): large is
    # near-uniform, 0.1 concentrates most tokens on a few experts
    dirichlet_concentration: float = Field(default=1.0, gt=0, le=1e6)
    # temporal drift: each step a fraction of the experts trade places in the router's law (the hot set moves)
    drift: float = Field(default=0.0, ge=0, le=1)
    # expert capacity (GShard / Megatron's moe_expert_capacity_factor): each GPU keeps at most
    # ceil(capacity_factor x tokens x top_k / E) copies per expert and drops the rest (position
    # policy: later tokens first); null = dropless
    capacity_factor: Optional[float] = Field(default=None, gt=0, le=1e3)
    # seed 2.1's threshold form: keep the experts whose softmax gate is >= threshold, at most top_k
    # (simulator/workload/gating.py); null = plain top-k
    threshold: Optional[float] = Field(default=None, gt=0, le=1)
    # distribution: trace replays this file (simulator/workload/routing_trace.py: CSV, NPZ, Parquet)
    trace: Optional[str] = Field(default=None, min_length=1, max_length=4096)


class PlacementSection(_Section):
    strategy: Literal["round_robin", "topology_aware", "eplb"] = "round_robin"
    redundant_experts: int = Field(default=0, ge=0)
    # eplb with workload.steps > 1: re-solve the placement from the loads observed over the last K
    # steps, every K steps, and migrate the moved experts' weights over the network (simulator/rebalance.py)
    rebalance_every_steps: Optional[int] = Field(default=None, gt=0, le=1000)


class NetworkSection(_Section):
    all_to_all: Literal[tuple(ALL_TO_ALL)] = "hierarchical"
    dispatch_dtype: Literal["fp8", "bf16"] = "fp8"
    combine_dtype: Literal["fp8", "bf16"] = "bf16"
    comm_sms: int = Field(default=20, ge=0)
    # the all-reduces' algorithm (gradients without ZeRO-1, TP without sequence parallel, DualPipe's
    # mirror sums): NCCL's ring, or its double binary tree over nodes with a chain inside each node
    # (same bytes per port, latency logarithmic in the nodes: simulator/engine/rings.py), or auto:
    # per all-reduce whichever finishes sooner alone on the network, as NCCL's tuner chooses
    allreduce_algorithm: Literal["ring", "tree", "auto"] = "ring"


RECOMPUTE_MODULES = ("core_attn", "layernorm", "mla_up_proj", "moe_act")


class TrainingSection(_Section):
    """How gradients and parameters are synchronised (Megatron-Core DDP and distributed optimizer)."""
    # full: each layer keeps only its input and re-runs its forward in the backward; selective:
    # the modules of recompute_modules are re-run in the backward and their outputs not kept
    recompute: Literal["none", "selective", "full"] = "none"
    # Megatron-Core's --recompute-modules (default core_attn, which FlashAttention already
    # recomputes); DeepSeek-V3 (report 3.2.3, 3.3.2) re-runs layernorm, mla_up_proj and moe_act
    recompute_modules: tuple[Literal[RECOMPUTE_MODULES], ...] = Field(default=("core_attn",), strict=False)
    # Adam's two moments: fp32, or bf16 as DeepSeek-V3 keeps them (report 3.3.2; Megatron's
    # --exp-avg-dtype / --exp-avg-sq-dtype with the precision-aware optimizer)
    adam_moments_dtype: Literal["fp32", "bf16"] = "fp32"
    # gradient clipping by global norm (Megatron's default clip_grad 1.0): one read of the local
    # gradient shard per step before the optimizer
    grad_clipping: bool = True
    distributed_optimizer: bool = False  # ZeRO-1: optimizer state sharded over DP, grads reduce-scattered
    grad_overlap: bool = True  # bucketed grad reduction (and ZeRO-1 param all-gather) overlapped with compute
    # Megatron sets accumulate_allreduce_grads_in_fp32 for BF16 training: grads are reduced in FP32
    grad_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # parameters per gradient bucket; null: Megatron-Core's default max(40M, 1M x DP size)
    grad_bucket_params: Optional[int] = Field(default=None, gt=0, le=10**13)  # 10T parameters: above any model
    # A batch as Megatron states it: global batch (sequences per step) over dense DP replicas of
    # micro_batch_size sequences; null keeps workload.micro_batches and tokens_per_gpu as given.
    global_batch_size: Optional[int] = Field(default=None, gt=0, le=1 << 24)  # DeepSeek-V3: 15,360 sequences
    micro_batch_size: int = Field(default=1, gt=0, le=1 << 16)
    # CUDA graphs: each op replays as one captured graph (one graph launch on the host instead of a
    # launch per kernel); host syncs (a counts-on-host dispatcher) are not captured
    cuda_graphs: bool = False


class PipelineSection(_Section):
    overlap: Literal["none", "three_stream"] = "three_stream"
    chunks: int = Field(default=2, gt=0, le=1 << 16)  # also <= tokens_per_gpu (rules.py)
    # lockstep: micro-batches run forward, then backward, side by side; dualpipe: the forward of
    # micro-batch m overlaps the backward of m-1 (DeepSeek-V3's DualPipe steady state, Megatron-Core's
    # 1F1B all-to-all overlap); sequential: each micro-batch's forward then its backward, one at a
    # time (gradient accumulation, Megatron-Core's forward_backward_no_pipelining); auto: dualpipe
    # where a single stage trains with overlapping streams, sequential where it trains without,
    # lockstep otherwise (serving's two-batch overlap, PP). With PP, dualpipe pairs each steady-state
    # 1F1B forward with the backward after it in one slot (Megatron-Core's EP all-to-all overlap,
    # overlap_moe_expert_parallel_comm); auto leaves it off there, as Megatron's default does
    schedule: Literal["auto", "lockstep", "dualpipe", "sequential"] = "auto"


SECTIONS = {
    "parallel": ParallelSection, "training": TrainingSection, "workload": WorkloadSection, "routing": RoutingSection,
    "placement": PlacementSection, "network": NetworkSection, "pipeline": PipelineSection,
}
TOP_LEVEL_KEYS = ("name", "hardware", "model", *SECTIONS)

# Values the schema knows but this version does not simulate yet: (key, value) -> what is supported.
NOT_YET: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Scenario:
    name: str
    cluster: ClusterSpec
    model: ModelSpec
    parallel: ParallelSection
    training: TrainingSection
    workload: WorkloadSection
    routing: RoutingSection
    placement: PlacementSection
    network: NetworkSection
    pipeline: PipelineSection
    hardware_preset: str
    model_preset: str
    resolved: dict  # the fully merged YAML-level scenario (for hashing and reports)
    calibration_path: Optional[Path] = None  # the checked calibration file the compute model reads

    def __post_init__(self):
        check_calibrated_peaks(self)

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @cached_property
    def expert_tp(self) -> int:
        """GPUs each expert is split over: parallel.expert_tp_size, or seed 4.1's split for auto."""
        if self.parallel.expert_tp_size != "auto":
            return self.parallel.expert_tp_size
        from simulator.scenario.memory import auto_expert_tp  # memory reads this schema
        return auto_expert_tp(self)["expert_tp_size"]

    @cached_property
    def ranks(self) -> RankLayout:
        """Every GPU's coordinates and groups, built once (after the layout rules have passed)."""
        return RankLayout(self.num_gpus, self.cluster.gpus_per_node, tp_size=self.parallel.tp_size,
                          pp_size=self.parallel.pp_size, ep_size=self.parallel.ep_size,
                          expert_tp_size=self.expert_tp)

    @property
    def backward(self) -> bool:
        """Whether a step runs the backward, gradient sync and optimizer: training over the whole
        model. `scope: moe_layer` is one MoE layer's forward in every mode (CONTRACT.md)."""
        return self.workload.mode == "train" and self.workload.scope == "model"

    @property
    def dp_size(self) -> int:
        """Replicas of the expert layout (expert DP): the number of EP groups while TP = PP = 1."""
        return self.ranks.expert_dp_size


# A calibration times every kernel from its own measured or published rates, so on a calibrated
# preset an override of a peak would move MFU (its denominator) but not the step: mfu 7.27 with
# peak_bf16_tflops lowered (issue 16); an override of the roofline's other rates would reach only
# the kernels outside a measured fit's range, or none under a published one. Such an override is
# rejected rather than applied to half the numbers.
CALIBRATED_PEAKS = ("peak_bf16_tflops", "peak_fp8_tflops")
# (kernel_launch_us is not among them: the collectives' launch cost reads it too, simulator/wire.py)
CALIBRATED_RATES = ("matmul_efficiency", "memory_efficiency", "hbm_tb_per_s")


def check_calibrated_peaks(s: Scenario) -> None:
    if s.calibration_path is None:
        return
    from hardware.presets import PRESET_DIR, load_yaml_mapping, preset_path
    from simulator.errors import ScenarioError
    preset = load_yaml_mapping(preset_path(s.hardware_preset, PRESET_DIR))
    for key in (*CALIBRATED_PEAKS, *CALIBRATED_RATES):
        value = s.resolved["hardware"][key]
        if key in preset and value != preset[key]:
            effect = ("a different peak would change MFU but not the step" if key in CALIBRATED_PEAKS else
                      "its rates replace this one (a measured fit's roofline fallback alone would read it)")
            raise ScenarioError(
                f"hardware.{key}", value,
                f"the calibration {s.calibration_path.name} times the kernels, so {effect}; rule: with "
                f"hardware.calibration set, {key} keeps the preset's value; for other rates set "
                f"hardware.calibration: null (the roofline of the given fields) or give a calibration of that GPU")
