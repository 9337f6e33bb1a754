"""The run lifecycle: elaborate (hardware, routing, traffic) -> simulate (SimPy) -> RunResult."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from hardware.calibrated import compute_model
from hardware.compute import RooflineCompute
from hardware.topology import Topology
from simulator.collective import Collective, build_paths, mirrored, token_bytes
from simulator.gpu import COMPUTE, GPU
from simulator.network import Network
from simulator.pipeline import OWNER_SENDS, STREAM_OF, Op, chain_ops
from simulator.scenario import Scenario
from simulator.workload import BACKWARD_FACTOR, Workload, build_workload, dense_work_s

# Wire dtype of each collective: gradients travelling towards the experts use the dispatch kernel
# and its dtype (DeepSeek's trace shows FP8 backward dispatch); the rest use the combine dtype.
DTYPE_OF = {"dispatch": "dispatch_dtype", "dispatch_bwd": "dispatch_dtype",
            "combine": "combine_dtype", "combine_bwd": "combine_dtype"}


@dataclass
class RunResult:
    scenario: Scenario
    step_time_s: float
    gpus: list[GPU]
    collectives: dict  # (kind, group, moe_layer, mb, chunk) -> Collective
    network: Network
    workload: Workload
    compute: RooflineCompute
    num_events: int


class Run:
    def __init__(self, scenario: Scenario):
        s = scenario
        self.s = s
        self.env = simpy.Environment()
        self.topology = Topology(s.cluster)
        self.network = Network(self.env, self.topology)
        self.compute_model = compute_model(s.cluster.gpu, s.workload.gemm_dtype, s.calibration_path)
        overlap = s.pipeline.overlap == "three_stream"
        self.gpus = [GPU(self.env, g, s.cluster.gpu.num_sms, overlap) for g in range(s.num_gpus)]
        self.workload = build_workload(s, self.compute_model)
        self.dense = [dense_work_s(s, self.compute_model, n) for n in self.workload.chunk_tokens]
        self.ops = chain_ops(s.workload.mode, s.workload.scope, s.model.num_layers, s.model.num_dense_layers,
                             s.model.num_shared_experts > 0)
        self.phases = ([op for op in self.ops if not op.backward], [op for op in self.ops if op.backward])
        self.dualpipe = s.pipeline.schedule == "dualpipe"
        self.forward_done: dict = {}  # dualpipe: (gpu, mb, chunk) -> event, set when that forward ends
        self.collectives: dict = {}
        self.stream_seq = self._stream_order() if s.pipeline.overlap == "three_stream" else {}
        self.comm_sms = 0 if s.network.all_to_all == "low_latency" else s.network.comm_sms
        self.setup_s = self._setup_latency_s()
        self.num_events = 0

    def _order_key(self, phase: int, k: int, mb: int, chunk: int) -> tuple:
        """Where the k-th op of a chain's phase (0 forward, 1 backward) stands in the program order.

        lockstep: op by op, and inside an op the chains in (micro-batch, chunk) order.
        dualpipe: forward of micro-batch m paired with backward of m-1 (DeepSeek's DualPipe steady
        state); inside a pair, op by op, forward before backward.
        Every op's predecessors in its own chain sort before it, so no stream waits on a later one.
        """
        if self.dualpipe:
            return (mb + phase, k, phase, chunk)
        return (phase * len(self.phases[0]) + k, 0, mb, chunk)

    def _stream_order(self) -> dict:
        """Order key of every collective -> its position on its stream (the same on every GPU)."""
        order = {}
        for stream in set(STREAM_OF.values()):
            keys = sorted(self._order_key(phase, k, mb, c)
                          for phase, ops in enumerate(self.phases)
                          for k, op in enumerate(ops) if op.kind == "comm" and STREAM_OF[op.name] == stream
                          for mb in range(self.s.workload.micro_batches) for c in range(self.workload.num_chunks))
            order.update({key: n for n, key in enumerate(keys)})
        return order

    def _setup_latency_s(self) -> float:
        """Time from the last GPU reaching a collective to its first byte: the comm kernel's launch,
        plus, for normal-mode kernels, the notify round that exchanges per-destination counts (one
        path latency). Low-latency kernels send without a notify round but pay the system's fitted
        per-call overhead (hardware.ll_kernel_overhead_us)."""
        spec = self.s.cluster
        launch = spec.gpu.kernel_launch_s
        if self.s.network.all_to_all == "low_latency":
            return launch + spec.ll_kernel_overhead_s
        if self.s.parallel.ep_size > spec.gpus_per_node:
            rail_latency = spec.ib_cross_rail_latency_s if self.s.network.all_to_all == "direct" else spec.ib.latency_s
            return launch + rail_latency
        return launch + spec.nvlink.latency_s

    # -- collectives --------------------------------------------------------------------------
    def collective(self, kind: str, group: int, moe_layer: int, mb: int, chunk: int) -> Collective:
        key = (kind, group, moe_layer, mb, chunk)
        coll = self.collectives.get(key)
        if coll is None:
            s = self.s
            p = s.parallel.ep_size
            gpus = np.arange(group * p, (group + 1) * p)
            traffic = self.workload.traffic[group, moe_layer, mb, chunk]
            num_bytes = token_bytes(getattr(s.network, DTYPE_OF[kind]), s.model.hidden_size, s.network.all_to_all)
            owner_sends = OWNER_SENDS[kind]

            def build():
                paths = build_paths(s.network.all_to_all, traffic, num_bytes, gpus, self.topology)
                return paths if owner_sends else mirrored(paths, self.topology)

            efficiency = s.cluster.direct_alltoall_efficiency if s.network.all_to_all == "direct" else 1.0
            coll = Collective(self.env, self.network, gpus, build, owner_sends, self.setup_s, efficiency)
            self.collectives[key] = coll
        return coll

    # -- processes ----------------------------------------------------------------------------
    def work_s(self, op: Op, group: int, local: int, mb: int, chunk: int) -> float:
        if op.name == "experts":
            fwd = float(self.workload.expert_work_s[group, op.moe_layer, mb, chunk][local])
        else:
            dense = self.dense[chunk]
            if op.backward and f"{op.name}_bwd" in dense:
                return dense[f"{op.name}_bwd"]
            fwd = dense[op.name]
        return fwd * (BACKWARD_FACTOR if op.backward else 1.0)

    def run_chain(self, gpu: GPU, group: int, local: int, mb: int, chunk: int):
        """Run one chain's ops on `gpu`; consumes the simulated time of its kernels and collectives."""
        for phase, ops in enumerate(self.phases):
            if self.dualpipe and phase == 0 and mb > 0:
                yield self._forward_done(gpu.index, mb - 1, chunk)
            for k, op in enumerate(ops):
                yield from self.run_op(gpu, group, local, mb, chunk, op, self._order_key(phase, k, mb, chunk))
            if self.dualpipe and phase == 0:
                self._forward_done(gpu.index, mb, chunk).succeed()

    def _forward_done(self, gpu: int, mb: int, chunk: int) -> simpy.Event:
        key = (gpu, mb, chunk)
        if key not in self.forward_done:
            self.forward_done[key] = self.env.event()
        return self.forward_done[key]

    def run_op(self, gpu: GPU, group: int, local: int, mb: int, chunk: int, op: Op, order_key: tuple):
        label = f"{op.label} mb{mb} c{chunk}"
        if op.kind == "compute":
            yield from gpu.compute(self.work_s(op, group, local, mb, chunk), label)
            return
        coll = self.collective(op.name, group, op.moe_layer, mb, chunk)
        seq = self.stream_seq.get(order_key)
        comm = self.env.process(gpu.communicate(STREAM_OF[op.name], seq, lambda c=coll: c.arrive(local),
                                                self.comm_sms, label))
        if op.overlapped:
            side = op._replace(kind="compute", name=op.overlapped)
            yield from gpu.compute(self.work_s(side, group, local, mb, chunk), f"{side.label} mb{mb} c{chunk}")
        yield comm

    def run_gpu_serial(self, gpu: GPU, group: int, local: int):
        """overlap: none: the chains of a GPU run one after another."""
        for mb in range(self.s.workload.micro_batches):
            for chunk in range(self.workload.num_chunks):
                yield from self.run_chain(gpu, group, local, mb, chunk)

    def simulate(self) -> RunResult:
        p = self.s.parallel.ep_size
        for gpu in self.gpus:
            group, local = divmod(gpu.index, p)
            if self.s.pipeline.overlap == "none":
                self.env.process(self.run_gpu_serial(gpu, group, local))
                continue
            for mb in range(self.s.workload.micro_batches):
                for chunk in range(self.workload.num_chunks):
                    self.env.process(self.run_chain(gpu, group, local, mb, chunk))
        while True:
            try:
                self.env.step()
            except simpy.core.EmptySchedule:
                break
            self.num_events += 1
        step = float(max((iv[2] for g in self.gpus for iv in g.intervals), default=0.0))
        return RunResult(self.s, step, self.gpus, self.collectives, self.network, self.workload,
                         self.compute_model, self.num_events)


def simulate(scenario: Scenario) -> RunResult:
    return Run(scenario).simulate()


__all__ = ["simulate", "Run", "RunResult", "COMPUTE"]
