"""The data-parallel side of a training layout: DP groups, gradient buckets, which collectives, and
the optimizer step's cost."""
from __future__ import annotations

import numpy as np

from simulator.engine.program import Program
from simulator.scenario import Scenario
from simulator.scenario.memory import MASTER_BYTES, WEIGHT_BYTES, optimizer_shards, vocab_params_held
from simulator.wire import ELEMENT_BYTES

# FP8 GEMMs' weights, cast once a step from the updated BF16 weights and cached across the
# micro-batches (Transformer Engine's first-micro-batch cast; DeepSeek-V3's 128x128 weight blocks,
# report 3.3): read BF16 (2 B), write FP8 (1 B) with an FP32 scale per 128 x 128 block, and the
# transposed FP8 copy Hopper's FP8 GEMMs need for the input gradient (read 1 B, write 1 B; a 128 x 128
# block keeps its scale). ASSUMED: the two passes are separate memory-bound kernels.
WEIGHT_CAST_BYTES = 2 + 1 + 4 / (128 * 128) + 1 + 1


def adam_bytes_per_param(s: Scenario) -> int:
    """Bytes Adam moves per parameter (Megatron's fused multi-tensor Adam, memory-bound): read the
    main grad, the FP32 master weight and both moments, write master weight and moments and the
    BF16 model weight: 30 B with FP32 grads and moments, 22 B with BF16 moments."""
    moments = 2 * ELEMENT_BYTES[s.training.adam_moments_dtype]
    return ELEMENT_BYTES[s.training.grad_reduce_dtype] + 2 * (MASTER_BYTES + moments) + WEIGHT_BYTES


class DataParallel:
    """The data-parallel side of a training layout: DP groups, bucket sizes, which collectives."""

    def __init__(self, s: Scenario):
        ranks = s.ranks
        self.distributed = s.training.distributed_optimizer
        self.groups = {"dp": ranks.dp_groups, "edp": ranks.expert_dp_groups}
        self.index = {}
        for name, groups in self.groups.items():
            where = np.empty((s.num_gpus, 2), dtype=np.int64)  # GPU -> (group, rank in group)
            for g, members in enumerate(groups):
                where[members, 0], where[members, 1] = g, np.arange(len(members))
            self.index[name] = where
        sizes = {"dense": ranks.dp_size, "expert": ranks.expert_dp_size}
        # Megatron-Core's default bucket: max(40M, 1M x DP size) parameters
        self.bucket_params = {family: s.training.grad_bucket_params or max(40_000_000, 1_000_000 * n)
                              for family, n in sizes.items()}
        self.shards = optimizer_shards(s)
        prefix = {"dense": "", "expert": "expert_"}
        verb = "grad_reducescatter" if self.distributed else "grad_allreduce"
        self.reduce_kind = {family: p + verb for family, p in prefix.items()}
        self.gather_kind = {family: p + "param_allgather" for family, p in prefix.items()}
        self.gathers_before_forward = (self.distributed and s.training.grad_overlap
                                       and s.pipeline.overlap == "three_stream")
        self.comm_sms = s.cluster.nccl_sms
        self.adam_bytes = adam_bytes_per_param(s)
        # global-norm clipping reads every gradient once more (the norm's all-reduce of one scalar: not simulated)
        self.clip_bytes = ELEMENT_BYTES[s.training.grad_reduce_dtype] if s.training.grad_clipping else 0
        self.s = s

    def group_of(self, group: str, gpu: int) -> tuple[int, int, np.ndarray]:
        g, rank = self.index[group][gpu]
        return int(g), int(rank), self.groups[group][g]

    def shard_params(self, program: Program) -> float:
        """The parameters this GPU updates: its shard of each family with ZeRO-1, else all it holds."""
        return sum(b.num_params / self.shards[b.family] for b in program.buckets)

    def weight_cast_s(self, compute, program: Program) -> float:
        """FP8 training: the cast of every GEMM weight this GPU holds (all of them, not its ZeRO-1
        shard: each GPU casts what it computes with), once a step (WEIGHT_CAST_BYTES); 0 in BF16."""
        if self.s.workload.gemm_dtype != "fp8":
            return 0.0
        # the embedding and LM head stay BF16 in FP8 training (DeepSeek-V3 report 3.3.1; Transformer
        # Engine runs FP8 in its Linear layers only): the weights cast are the held ones less those
        layers = {layer for b in program.buckets for layer in b.layers}
        params = sum(b.num_params for b in program.buckets) - vocab_params_held(self.s, layers)
        return compute.memory_s(params * WEIGHT_CAST_BYTES)

    def optimizer_s(self, compute, program: Program) -> float:
        """Gradient clipping's norm and Adam over the parameters this GPU updates."""
        params = self.shard_params(program)
        return compute.memory_s(params * self.clip_bytes) + compute.memory_s(params * self.adam_bytes)
