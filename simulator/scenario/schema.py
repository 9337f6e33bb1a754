"""The scenario's schema: one frozen pydantic section per YAML section, and the Scenario they build."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from hardware.spec import ClusterSpec
from simulator.model import ModelSpec
from simulator.ranks import RankLayout
from simulator.wire import ALL_TO_ALL

Pos = Field(gt=0)
Frac = Field(gt=0, le=1)
NonNeg = Field(ge=0)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class HardwareSection(_Section):
    preset: str = "h100-seed"
    description: str = ""
    nodes: int = Pos
    gpu_name: str
    gpus_per_node: int = Pos
    peak_bf16_tflops: float = Pos
    peak_fp8_tflops: float = Pos
    hbm_gb: float = Pos
    hbm_tb_per_s: float = Pos
    num_sms: int = Pos
    matmul_efficiency: float = Frac
    memory_efficiency: float = Frac
    kernel_launch_us: float = NonNeg
    nvlink_gb_per_s: float = Pos
    nvlink_efficiency: float = Frac
    nvlink_latency_us: float = NonNeg
    ib_gbit_per_s: float = Pos
    ib_efficiency: float = Frac
    ib_latency_us: float = NonNeg
    ib_cross_leaf_latency_us: float = NonNeg
    spine_oversubscription: float = Field(ge=1)
    ll_kernel_overhead_us: float = Field(default=0.0, ge=0)
    direct_alltoall_efficiency: float = Field(default=1.0, gt=0, le=1)
    nccl_sms: int = Field(default=0, ge=0)  # SMs NCCL's ring collectives hold (data-parallel sync)
    calibration: Optional[str] = None  # a shipped calibration name or a .json path; None = roofline


class AttentionSection(_Section):
    kind: Literal["mla", "gqa"]
    num_heads: int = Pos
    num_kv_heads: int = Field(default=0, ge=0)
    head_dim: int = Field(default=0, ge=0)
    q_lora_rank: int = Field(default=0, ge=0)
    kv_lora_rank: int = Field(default=0, ge=0)
    qk_nope_head_dim: int = Field(default=0, ge=0)
    qk_rope_head_dim: int = Field(default=0, ge=0)
    v_head_dim: int = Field(default=0, ge=0)
    sliding_window: int = Field(default=0, ge=0)
    full_attention_interval: int = Field(default=1, gt=0)


class ModelSection(_Section):
    preset: str = "deepseek-v3"
    hidden_size: int = Pos
    moe_intermediate_size: int = Pos
    num_experts: int = Pos
    top_k: int = Pos
    num_shared_experts: int = NonNeg
    num_layers: int = Pos
    num_dense_layers: int = NonNeg
    dense_intermediate_size: int = Pos
    vocab_size: int = Pos
    attention: AttentionSection


class ParallelSection(_Section):
    ep_size: int = Pos
    tp_size: int = Field(default=1, gt=0)
    pp_size: int = Field(default=1, gt=0)
    vpp_size: int = Field(default=1, gt=0)  # model chunks per PP rank (interleaved schedule)
    expert_tp_size: int | Literal["auto"] = 1  # TP inside an expert; auto: seed 4.1's split
    pp_schedule: Literal["1f1b", "interleaved", "gpipe", "dualpipe"] = "1f1b"


class WorkloadSection(_Section):
    mode: Literal["train", "prefill", "decode"] = "train"
    scope: Literal["model", "moe_layer"] = "model"
    tokens_per_gpu: int = Field(default=4096, gt=0)
    micro_batches: int = Field(default=2, gt=0)
    seq_len: int = Field(default=4096, gt=0)
    gemm_dtype: Literal["bf16", "fp8", "fp32"] = "bf16"  # fp32: CPUs, with an fp32 calibration
    # true: the first layer's stage also runs the token embedding, the last layer's the LM head and
    # cross-entropy over the vocabulary (a whole model); false: decoder layers only (a stage cut
    # out of a bigger model, as the reference scenarios)
    embedding_and_head: bool = False
    # a pipeline step of many micro-batches from two shorter ones (simulator/extension.py): auto
    # when the whole step would be slow to simulate, always, or never
    extend_micro_batches: Literal["auto", "always", "never"] = "auto"


class RoutingSection(_Section):
    distribution: Literal["uniform", "balanced", "zipf", "trace"] = "uniform"
    zipf_alpha: float = Field(default=1.0, gt=0)
    seed: int = Field(default=0, ge=0)
    max_nodes_per_token: Optional[int] = Field(default=None, gt=0)
    adaptive_alpha: float = Field(default=0.0, ge=0)


class PlacementSection(_Section):
    strategy: Literal["round_robin", "topology_aware", "eplb"] = "round_robin"
    redundant_experts: int = Field(default=0, ge=0)


class NetworkSection(_Section):
    all_to_all: Literal[tuple(ALL_TO_ALL)] = "hierarchical"
    dispatch_dtype: Literal["fp8", "bf16"] = "fp8"
    combine_dtype: Literal["fp8", "bf16"] = "bf16"
    comm_sms: int = Field(default=20, ge=0)


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
    distributed_optimizer: bool = False  # ZeRO-1: optimizer state sharded over DP, grads reduce-scattered
    grad_overlap: bool = True  # bucketed grad reduction (and ZeRO-1 param all-gather) overlapped with compute
    # Megatron sets accumulate_allreduce_grads_in_fp32 for BF16 training: grads are reduced in FP32
    grad_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # parameters per gradient bucket; null: Megatron-Core's default max(40M, 1M x DP size)
    grad_bucket_params: Optional[int] = Field(default=None, gt=0)
    # A batch as Megatron states it: global batch (sequences per step) over dense DP replicas of
    # micro_batch_size sequences; null keeps workload.micro_batches and tokens_per_gpu as given.
    global_batch_size: Optional[int] = Field(default=None, gt=0)
    micro_batch_size: int = Field(default=1, gt=0)


class PipelineSection(_Section):
    overlap: Literal["none", "three_stream"] = "three_stream"
    chunks: int = Field(default=2, gt=0)
    # lockstep: micro-batches run forward, then backward, side by side; dualpipe: the forward of
    # micro-batch m overlaps the backward of m-1 (DeepSeek-V3's DualPipe steady state).
    schedule: Literal["lockstep", "dualpipe"] = "lockstep"


SECTIONS = {
    "parallel": ParallelSection, "training": TrainingSection, "workload": WorkloadSection, "routing": RoutingSection,
    "placement": PlacementSection, "network": NetworkSection, "pipeline": PipelineSection,
}
TOP_LEVEL_KEYS = ("name", "hardware", "model", *SECTIONS)

# Values the schema knows but this version does not simulate yet: (key, value) -> what is supported.
NOT_YET = {
    ("workload.mode", "decode"): "supported today: train, prefill",
    ("routing.distribution", "trace"): "supported today: uniform, balanced, zipf",
    ("placement.strategy", "topology_aware"): "supported today: round_robin",
    ("placement.strategy", "eplb"): "supported today: round_robin",
}


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
    def dp_size(self) -> int:
        """Replicas of the expert layout (expert DP): the number of EP groups while TP = PP = 1."""
        return self.ranks.expert_dp_size
