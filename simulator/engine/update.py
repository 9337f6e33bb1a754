"""The update of a training step as processes of the run: gradient buckets reduced as their layers'
backward completes, DualPipe's mirror all-reduce, the optimizer step, and ZeRO-1's parameter
all-gather (the data-parallel facts they use are simulator/engine/data_parallel.py's)."""
from __future__ import annotations

import numpy as np

from simulator.engine.collective import COLLECTIVES, CollectiveId
from simulator.engine.gpu import DP_COMM
from simulator.engine.program import UPDATE, Bucket, OpId, Program
from simulator.wire import ELEMENT_BYTES


class UpdateProcesses:
    """Mixed into simulator.engine.run.Run: the update's processes read the run's GPUs, programs,
    rings and per-layer gradient events."""

    def dp_collective(self, kind_name: str, gpu: int, bucket: Bucket):
        """This GPU's part of a bucket's data-parallel collective on its DP stream (the bucket
        moves through the same ports as the all-to-all); nothing where the group is one GPU."""
        kind = COLLECTIVES[kind_name]
        group, rank, members = self.dp.group_of(kind.group, gpu)
        if len(members) == 1:
            return
        coll = self.ring(CollectiveId(kind_name, group, bucket.index, -1, -1), members,
                         lambda: bucket.num_params * ELEMENT_BYTES[kind.wire_dtype(self.s)])
        op = OpId(bucket.first_layer, kind_name, UPDATE, -1, -1)
        yield from self.gpus[gpu].communicate(DP_COMM, None, lambda: coll.arrive(rank), self.dp.comm_sms, op)

    def mirror_allreduce(self, gpu: int, program: Program):
        """DualPipe: sum the gradients of the two copies of each stage between rank r and rank
        p-1-r (a ring of two): the rank's whole gradients, or with ZeRO-1 the shard it updates,
        which its DP reduce-scatter has already summed over the replicas."""
        p = self.s.parallel.pp_size
        group, rank = self.pp_where[gpu]
        mirror = int(self.ranks.pp_groups[group][p - 1 - rank])
        pair = np.array(sorted((gpu, mirror)))
        kind = COLLECTIVES["mirror_grad_allreduce"]
        coll = self.ring(CollectiveId(kind.name, int(group), int(min(rank, p - 1 - rank)), -1, -1), pair,
                         lambda: self.dp.shard_params(program) * ELEMENT_BYTES[kind.wire_dtype(self.s)])
        op = OpId(-1, "mirror_grad_allreduce", UPDATE, -1, -1)
        index = int(np.nonzero(pair == gpu)[0][0])
        yield from self.gpus[gpu].communicate(DP_COMM, None, lambda: coll.arrive(index), self.dp.comm_sms, op)

    def replica_sets(self, group: int, moe_layer: int) -> list[tuple[int, np.ndarray]]:
        """(logical expert, the EP ranks holding a copy) for each expert of the layer's placement
        held by more than one GPU of EP group `group`, by expert id (every GPU meets them in that
        order). Copies on one GPU are summed in place."""
        key = (group, moe_layer)
        if key not in self._replicas:
            place = self.workload.placements[key]
            sets = []
            for expert in np.nonzero(place.replicas() > 1)[0]:
                holders = np.unique(place.slot_gpu[place.slot_expert == expert])
                if len(holders) > 1:
                    sets.append((int(expert), holders))
            self._replicas[key] = sets
        return self._replicas[key]

    def replica_allreduce(self, gpu: int, bucket: Bucket):
        """Redundant experts in training: before an expert bucket's expert-DP reduction, sum the
        gradients of each replicated expert of its layers among the GPUs of this GPU's EP group
        that hold a copy (a ring of them; one expert's gradient each)."""
        kind = COLLECTIVES["expert_replica_grad_allreduce"]
        group, rank = self.ranks.ep_group_of(gpu), int(self.ranks.ep_rank[gpu])
        gpus = self.ranks.ep_groups[group]
        m = self.s.model
        num_bytes = m.expert_params * ELEMENT_BYTES[kind.wire_dtype(self.s)]
        for layer in bucket.layers:
            for expert, holders in self.replica_sets(group, layer - m.num_dense_layers):
                where = np.nonzero(holders == rank)[0]
                if not len(where):
                    continue
                coll = self.ring(CollectiveId(kind.name, group, layer * m.num_experts + expert, -1, -1),
                                 gpus[holders], lambda: num_bytes)
                op = OpId(layer, kind.name, UPDATE, -1, -1)
                index = int(where[0])
                yield from self.gpus[gpu].communicate(DP_COMM, None, lambda: coll.arrive(index), self.dp.comm_sms, op)

    def gather_params(self, gpu: int):
        """ZeRO-1: all-gather each bucket's updated parameters, in forward order; each layer's
        first forward waits for its bucket."""
        buckets = list(reversed(self.programs[gpu].buckets))
        last = {layer: i for i, bucket in enumerate(buckets) for layer in bucket.layers}
        for i, bucket in enumerate(buckets):
            yield from self.dp_collective(self.dp.gather_kind[bucket.family], gpu, bucket)
            for layer in bucket.layers:
                if last[layer] == i:  # every bucket holding the layer's parameters has arrived
                    self.param_event(gpu, layer).succeed()

    def run_update(self, gpu: int, chains):
        """Gradient buckets as their layers' backward completes (with grad_overlap; else after the
        whole backward), the optimizer step over this GPU's shard, and (ZeRO-1) the parameter
        all-gather: before the next forward when overlapped (simulated at the start of this
        step, its steady-state equivalent), else after the optimizer."""
        program = self.programs[gpu]
        if self.dp.gathers_before_forward:
            self.env.process(self.gather_params(gpu))
        if not self.grad_overlap:
            yield self.env.all_of(chains)
        for bucket in program.buckets:
            yield self.env.all_of([self._layer_grads(gpu, layer)[1] for layer in bucket.layers])
            if bucket.family == "expert" and self.s.placement.redundant_experts:
                yield from self.replica_allreduce(gpu, bucket)
            yield from self.dp_collective(self.dp.reduce_kind[bucket.family], gpu, bucket)
        yield self.env.all_of(chains)
        if self.s.parallel.pp_schedule == "dualpipe" and self.pp:
            yield from self.mirror_allreduce(gpu, program)
        yield from self.gpus[gpu].compute(self.dp.optimizer_s(self.compute_model, program),
                                          OpId(-1, "optimizer", UPDATE, -1, -1))
        # FP8: the updated weights cast for the next step's GEMMs (Transformer Engine casts them in the
        # first micro-batch's forward, after ZeRO-1's gather: the same GPU time, placed here)
        yield from self.gpus[gpu].compute(self.dp.weight_cast_s(self.compute_model, program),
                                          OpId(-1, "weight_cast", UPDATE, -1, -1))
        if self.dp.distributed and not self.dp.gathers_before_forward:
            yield from self.gather_params(gpu)
