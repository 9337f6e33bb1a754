"""The data-parallel side of a training layout: DP groups, gradient buckets, which collectives, and
the optimizer step's cost."""
from __future__ import annotations

import numpy as np

from simulator.engine.program import Program
from simulator.scenario import Scenario
from simulator.scenario.memory import MASTER_BYTES, WEIGHT_BYTES, optimizer_shards
from simulator.wire import ELEMENT_BYTES


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

    def group_of(self, group: str, gpu: int) -> tuple[int, int, np.ndarray]:
        g, rank = self.index[group][gpu]
        return int(g), int(rank), self.groups[group][g]

    def shard_params(self, program: Program) -> float:
        """The parameters this GPU updates: its shard of each family with ZeRO-1, else all it holds."""
        return sum(b.num_params / self.shards[b.family] for b in program.buckets)

    def optimizer_s(self, compute, program: Program) -> float:
        """Gradient clipping's norm and Adam over the parameters this GPU updates."""
        params = self.shard_params(program)
        return compute.memory_s(params * self.clip_bytes) + compute.memory_s(params * self.adam_bytes)
