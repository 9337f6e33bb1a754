"""The run lifecycle: elaborate (layout, hardware, routing, traffic) -> simulate (SimPy) -> RunRecord."""
from __future__ import annotations

import gc
from contextlib import contextmanager

import numpy as np
import simpy

from hardware.calibrated import compute_model
from hardware.compute import BACKWARD_FACTOR
from hardware.topology import Topology
from simulator.engine.collective import COLLECTIVES, Collective, CollectiveId
from simulator.engine.data_parallel import DataParallel
from simulator.engine.gpu import GPU, PP_COMM
from simulator.engine.host import Host, host_modelled, kernel_launches
from simulator.engine.network import Network
from simulator.engine.paths import build_paths, mirrored
from simulator.engine.program import (
    BACKWARD,
    FORWARD,
    RECOMPUTE,
    TP_KERNELS,
    Op,
    OpId,
    Program,
    build_program,
    experts_on,
)
from simulator.engine.record import ChunkCounts, CollectiveRecord, PortRecord, RunRecord
from simulator.engine.rings import p2p_paths, ring_paths
from simulator.engine.update import UpdateProcesses
from simulator.scenario import Scenario
from simulator.stages import FWD, num_stages, rank_of_stage, virtual_stage
from simulator.wire import ELEMENT_BYTES, algorithm, token_bytes
from simulator.workload.build import build_workload
from simulator.workload.costs import (
    dense_kernels,
    expert_bwd_extras,
    ffn_bwd_kernels,
    ffn_split,
    op_seconds,
    routed_permute,
)
from simulator.workload.serving import context_spread

PROGRESS_EVENTS = 20_000  # events between two progress reports (a few per second of simulation)


class Run(UpdateProcesses):
    def __init__(self, scenario: Scenario, gate_scale: dict | None = None, step: int = 0,
                 placements: dict | None = None, keep_routing: bool = False, keep_paths: bool = False):
        """gate_scale, step: the adaptive gate's expert scales and the step index (workload.steps);
        placements, keep_routing: build_workload's placements_in and keep_routing; keep_paths: every
        collective keeps its paths after launch (Collective._paths, for tests)."""
        s = scenario
        self.s = s
        self.ranks = s.ranks
        self.env = simpy.Environment()
        self.topology = Topology(s.cluster)
        self.network = Network(self.env, self.topology)
        self.compute_model = compute_model(s.cluster.gpu, s.workload.gemm_dtype, s.calibration_path)
        overlap = s.pipeline.overlap == "three_stream"
        self.gpus = [GPU(self.env, g, s.cluster.gpu.num_sms, overlap) for g in range(s.num_gpus)]
        self.workload = build_workload(s, self.compute_model, gate_scale, step, placements, keep_routing)
        # per chunk size: each op's kernels by class (kernel_classes reads them) and their sum
        self.dense_kernels = [dense_kernels(s, self.compute_model, n) for n in self.workload.chunk_tokens]
        self.dense = [op_seconds(kernels) for kernels in self.dense_kernels]
        self.attention_scale = context_spread(s)  # decode: (GPU, micro-batch) -> its KV over the mean's
        self.ep_groups = [self.ranks.ep_group(i) for i in range(self.ranks.num_ep_groups)]
        self.group_of = [self.ranks.ep_group_of(g) for g in range(s.num_gpus)]  # GPU -> EP group
        self._replicas: dict = {}  # (EP group, MoE layer) -> its replicated experts' holders (replica_sets)
        self.ep_rank = self.ranks.ep_rank.tolist()  # GPU -> its rank in that group
        self.train = s.backward
        self.dp = DataParallel(s) if self.train else None
        self._programs: dict = {}
        self.programs = [self._program(g) for g in range(s.num_gpus)]
        # gradient sync overlaps the backward only where streams overlap at all
        self.grad_overlap = self.train and s.training.grad_overlap and s.pipeline.overlap == "three_stream"
        self.layer_grads: dict = {}  # (gpu, layer) -> [chains still to finish its backward, event]
        self.params_ready: dict = {}  # (gpu, layer) -> event: its ZeRO-1 all-gather has delivered
        self.pp = s.parallel.pp_size > 1
        self.arrivals: dict = {}  # PP: (gpu, phase, mb, virtual stage) -> event: its input has arrived
        self.task_spans: list[list[tuple[float, float]]] = [[] for _ in range(s.num_gpus)]
        pp_where = np.empty((s.num_gpus, 2), dtype=np.int64)
        for g, members in enumerate(self.ranks.pp_groups):
            pp_where[members, 0], pp_where[members, 1] = g, np.arange(len(members))
        self.pp_where = pp_where
        self.dualpipe = s.pipeline.schedule == "dualpipe"
        self.sequential = s.pipeline.schedule == "sequential"
        self.forward_done: dict = {}  # dualpipe: (gpu, mb, chunk) -> event, set when that forward ends
        self.collectives: dict[CollectiveId, Collective] = {}
        self.all_to_all = algorithm(s.network.all_to_all)
        self.comm_sms = s.network.comm_sms if self.all_to_all.holds_sms else 0
        self.setup_s = self.all_to_all.setup_s(s.cluster, self.ep_groups[0].spans_nodes)
        self.num_events = 0
        self.keep_paths = keep_paths
        self._op_ids: dict = {}  # (op, micro-batch, chunk) -> its OpId (op_id)
        self.host = Host(self.env, s, kernel_launches(s, self.workload.chunk_tokens[0]), self.all_to_all.host_sync) \
            if host_modelled(s) else None

    def _program(self, gpu: int) -> Program:
        """The GPU's program; GPUs at the same position (PP stage, holding experts or not) share one."""
        key = (int(self.ranks.pp_rank[gpu]),
               experts_on(self.s.model.num_experts, self.s.parallel.ep_size, int(self.ranks.ep_rank[gpu])))
        if key not in self._programs:
            buckets = self.dp.bucket_params if self.dp else None
            self._programs[key] = build_program(self.s, self.workload.num_chunks, gpu, buckets)
        return self._programs[key]

    def _order_key(self, program: Program, phase: int, k: int, mb: int, chunk: int) -> tuple:
        """Where the k-th op of a chain's phase (0 forward, 1 backward) stands in the program order.

        lockstep: op by op, and inside an op the chains in (micro-batch, chunk) order.
        dualpipe: forward of micro-batch m paired with backward of m-1 (DeepSeek's DualPipe steady
        state); inside a pair, op by op, forward before backward.
        sequential: micro-batch by micro-batch, its forward then its backward.
        Every op's predecessors in its own chain sort before it, so no stream waits on a later one.
        """
        if self.dualpipe:
            return (mb + phase, k, phase, chunk)
        if self.sequential:
            return (mb, phase, k, chunk)
        return (phase * len(program.phases[0]) + k, 0, mb, chunk)

    def stream_order(self, program: Program) -> dict:
        """Order key of every collective -> its position on its stream (the same on every GPU of
        one program, as a real program enqueues them)."""
        if program.tasks:
            return self._task_stream_order(program)
        order = {}
        for stream in {kind.stream for kind in COLLECTIVES.values()}:
            keys = sorted(self._order_key(program, phase, k, mb, c)
                          for phase, ops in enumerate(program.phases)
                          for k, op in enumerate(ops) if op.collective and COLLECTIVES[kind_of(op)].stream == stream
                          for mb, c in program.chains)
            order.update({key: n for n, key in enumerate(keys)})
        return order

    def _task_stream_order(self, program: Program) -> dict:
        """PP: collectives in slot order; inside a slot op by op (a pair's forward and backward
        interleaved), chunks in order."""
        order = {}
        for stream in {kind.stream for kind in COLLECTIVES.values()}:
            keys = sorted((t, k, position, c) for t, slot in enumerate(program.slots)
                          for position, task in enumerate(slot)
                          for k, op in enumerate(program.chunk_phases[task.chunk][task.phase != FWD])
                          if op.collective and COLLECTIVES[kind_of(op)].stream == stream
                          for c in range(self.workload.num_chunks))
            order.update({key: n for n, key in enumerate(keys)})
        return order

    # -- pipeline stages ------------------------------------------------------------------------
    def _event(self, table: dict, key) -> simpy.Event:
        """The event `table` keeps under `key`, created on first use by whichever side comes first."""
        if key not in table:
            table[key] = self.env.event()
        return table[key]

    def arrival(self, gpu: int, phase: str, mb: int, stage: int) -> simpy.Event:
        return self._event(self.arrivals, (gpu, phase, mb, stage))

    def run_stage(self, gpu: GPU):
        """PP: this rank's tasks in its schedule's order, a slot at a time (DualPipe pairs a
        forward with a backward in one slot). A task waits for its input from the neighbouring
        stage, runs its chunks' chains through its model chunk, and sends its output on
        asynchronously (the pipeline stream), as Megatron's and DualPipe's p2p do."""
        program = self.programs[gpu.index]
        par = self.s.parallel
        name, p = par.pp_schedule, par.pp_size
        last_stage = num_stages(name, p, par.vpp_size) - 1
        for t, slot in enumerate(program.slots):
            chains = []
            for position, task in enumerate(slot):
                stage = virtual_stage(name, p, program.pp_rank, task.chunk)
                if (task.phase == FWD and stage > 0) or (task.phase != FWD and stage < last_stage):
                    yield self.arrival(gpu.index, task.phase, task.micro_batch, stage)
            start = self.env.now
            if self.host is not None:
                self.host.start_slot(gpu.index, t)
            for position, task in enumerate(slot):
                chains += [self.env.process(self.run_task_chain(gpu, program, (t, position), task, c))
                           for c in range(self.workload.num_chunks)]
            yield self.env.all_of(chains)
            self.task_spans[gpu.index].append((start, self.env.now))
            for task in slot:
                stage = virtual_stage(name, p, program.pp_rank, task.chunk)
                if task.phase == FWD and stage < last_stage:
                    self.env.process(self.pp_send(gpu.index, task, stage, stage + 1))
                elif task.phase != FWD and stage > 0:
                    self.env.process(self.pp_send(gpu.index, task, stage, stage - 1))

    def run_task_chain(self, gpu: GPU, program: Program, slot: tuple[int, int], task, chunk: int):
        ops = program.chunk_phases[task.chunk][task.phase != FWD]
        phase = int(task.phase != FWD)
        first = program.first_of_layer(0, task.chunk) if not phase and self.dp is not None \
            and self.dp.gathers_before_forward else None
        last = program.last_of_layer(1, task.chunk) if phase and program.buckets else None
        for k, op in enumerate(ops):
            if first is not None and first[k]:
                yield self.param_event(gpu.index, op.layer)
            yield from self.run_op(gpu, task.micro_batch, chunk, op, (slot[0], k, slot[1], chunk))
            if last is not None and last[k]:
                self._layer_backward_done(gpu.index, op.layer)

    def pp_send(self, gpu: int, task, stage: int, to_stage: int):
        """One micro-batch's activations (forward) or input gradients (backward) to the GPU of the
        same position on the neighbouring stage, in BF16."""
        par = self.s.parallel
        group, _ = self.pp_where[gpu]
        dst = int(self.ranks.pp_groups[group][rank_of_stage(par.pp_schedule, par.pp_size, to_stage, task.chunk)])
        num_bytes = self.s.workload.tokens_per_gpu * self.s.model.hidden_size * ELEMENT_BYTES["bf16"]
        cid = CollectiveId("pp_send", int(group), stage, task.micro_batch, int(task.phase != FWD))
        members = np.array([gpu, dst])
        coll = Collective(self.env, self.network, members, lambda: p2p_paths(gpu, dst, num_bytes, self.topology),
                          True, self.s.cluster.gpu.kernel_launch_s, keep_paths=self.keep_paths)
        self.collectives[cid] = coll
        arrived = self.arrival(dst, task.phase, task.micro_batch, to_stage)  # micro-batch ids differ by path
        op = OpId(-1, "pp_send", task.phase, task.micro_batch, -1)

        def both_join():
            coll.arrive(1).callbacks.append(lambda _e: arrived.succeed())  # the receive is posted ahead
            return coll.arrive(0)

        yield from self.gpus[gpu].communicate(PP_COMM, None, both_join, 0, op)

    # -- collectives --------------------------------------------------------------------------
    def collective(self, cid: CollectiveId) -> Collective:
        coll = self.collectives.get(cid)
        if coll is None:
            s = self.s
            group = self.ep_groups[cid.group]
            traffic = self.workload.traffic[cid.group, cid.index, cid.micro_batch, cid.chunk]
            kind = COLLECTIVES[cid.kind]
            num_bytes = token_bytes(kind.wire_dtype(s), s.model.hidden_size, s.network.all_to_all)

            def build():
                paths = build_paths(self.all_to_all, traffic, num_bytes, group, self.topology)
                return paths if kind.owner_sends else mirrored(paths, self.topology)

            coll = Collective(self.env, self.network, group.gpus, build, kind.owner_sends, self.setup_s,
                              self.all_to_all.efficiency(s.cluster), keep_paths=self.keep_paths,
                              rate_cap=self.all_to_all.rate_cap(s.cluster, self.comm_sms))
            self.collectives[cid] = coll
        return coll

    def ring(self, cid: CollectiveId, members: np.ndarray, num_bytes) -> Collective:
        """The ring collective `cid` (its kind's all-reduce, reduce-scatter or all-gather) over
        `members`, created when its first member reaches it; num_bytes() sizes it then."""
        coll = self.collectives.get(cid)
        if coll is None:
            op, size = COLLECTIVES[cid.kind].op, num_bytes()
            algorithm = self.s.network.allreduce_algorithm
            coll = Collective(self.env, self.network, members,
                              lambda: ring_paths(op, members, size, self.topology, algorithm),
                              True, self.s.cluster.gpu.kernel_launch_s, keep_paths=self.keep_paths)
            self.collectives[cid] = coll
        return coll

    def tp_collective(self, cid: CollectiveId) -> Collective:
        """A sequence-parallel all-gather / reduce-scatter of a chunk's activations (BF16, the
        whole sequence's tensor) over the TP group."""
        t = self.s.parallel.tp_size
        return self.ring(cid, np.arange(cid.group * t, (cid.group + 1) * t),
                         lambda: self.workload.chunk_tokens[cid.chunk] * t * self.s.model.hidden_size * ELEMENT_BYTES["bf16"])

    def etp_collective(self, cid: CollectiveId) -> Collective:
        """An expert-TP all-gather / reduce-scatter over the consecutive GPUs of one expert-TP
        group: the BF16 rows (hidden-size vectors) its members received for their experts, as one
        ring over the group's total (members received unequal shares: a ring of equal shares of
        the same total, an approximation named in provenance)."""
        e = self.s.expert_tp
        members = np.arange(cid.group * e, (cid.group + 1) * e)
        layer = cid.index // len(PHASE_CODE)

        def num_bytes():
            rows = 0
            for gpu in members:
                t = self.workload.traffic[self.group_of[gpu], layer, cid.micro_batch, cid.chunk]
                rows += int(t.expert_tokens[self.workload.expert_gpu == self.ep_rank[gpu]].sum())
            return rows * self.s.model.hidden_size * ELEMENT_BYTES["bf16"]

        return self.ring(cid, members, num_bytes)

    # -- processes ----------------------------------------------------------------------------
    def work_s(self, op: Op, group: int, local: int, mb: int, chunk: int) -> float:
        """Seconds of a kernel at full SM rate."""
        if op.op == "experts":
            key = (group, op.moe_layer, mb, chunk)
            if op.backward:
                return float(self.workload.expert_bwd_s[key][local])
            fwd = float(self.workload.expert_work_s[key][local])
        else:
            dense = self.dense[chunk]
            if op.op == "attention" and self.s.model.is_sliding(op.layer):
                op = op._replace(op="attention_window")
            if op.backward and op.name in dense:
                return dense[op.name]
            fwd = dense[op.op]
            if self.attention_scale and op.op in ("attention", "attention_window"):
                gpu = int(self.ranks.ep_groups[group][local])
                fwd += (self.attention_scale[gpu, mb] - 1.0) * self.dense_kernels[chunk][op.op].get("attention", 0.0)
        return fwd * (BACKWARD_FACTOR if op.backward else 1.0)

    def run_chain(self, gpu: GPU, mb: int, chunk: int):
        """Run one chain's ops on `gpu`; consumes the simulated time of its kernels and collectives.
        In training, the chain reports each layer whose backward it has finished (gradients
        accumulate over every chain; the layer's bucket may go once all have)."""
        program = self.programs[gpu.index]
        wait_params = self.dp is not None and self.dp.gathers_before_forward
        for phase, ops in enumerate(program.phases):
            if self.dualpipe and phase == 0 and mb > 0:
                yield self._forward_done(gpu.index, mb - 1, chunk)
            first = program.first_of_layer(0) if phase == 0 and wait_params else None
            last = program.last_of_layer(1) if phase == 1 and program.buckets else None
            for k, op in enumerate(ops):
                if first is not None and first[k]:
                    yield self.param_event(gpu.index, op.layer)
                yield from self.run_op(gpu, mb, chunk, op, self._order_key(program, phase, k, mb, chunk))
                if last is not None and last[k]:
                    self._layer_backward_done(gpu.index, op.layer)
            if self.dualpipe and phase == 0:
                self._forward_done(gpu.index, mb, chunk).succeed()

    def _layer_grads(self, gpu: int, layer: int) -> list:
        key = (gpu, layer)
        if key not in self.layer_grads:
            self.layer_grads[key] = [self._backward_visits(self.programs[gpu], layer), self.env.event()]
        return self.layer_grads[key]

    def _backward_visits(self, program: Program, layer: int) -> int:
        """Chains that run the layer's backward on this GPU: every (micro-batch, chunk) while PP = 1;
        with PP the backward tasks of the model chunk holding it (DualPipe: its direction's half)."""
        if not program.slots:
            return len(program.chains)
        holds = [any(op.layer == layer for op in bwd) for _, bwd in program.chunk_phases]
        return sum(holds[t.chunk] for t in program.tasks if t.phase != FWD) * self.workload.num_chunks

    def _layer_backward_done(self, gpu: int, layer: int) -> None:
        entry = self._layer_grads(gpu, layer)
        entry[0] -= 1
        if entry[0] == 0:
            entry[1].succeed()

    def param_event(self, gpu: int, layer: int) -> simpy.Event:
        return self._event(self.params_ready, (gpu, layer))

    def _forward_done(self, gpu: int, mb: int, chunk: int) -> simpy.Event:
        return self._event(self.forward_done, (gpu, mb, chunk))

    def op_id(self, op: Op, mb: int, chunk: int) -> OpId:
        """op.at(mb, chunk), one object shared by every GPU that runs it: the intervals of a large
        run hold millions of them."""
        key = (op, mb, chunk)
        oid = self._op_ids.get(key)
        if oid is None:
            oid = self._op_ids[key] = op.at(mb, chunk)
        return oid

    def run_op(self, gpu: GPU, mb: int, chunk: int, op: Op, order_key: tuple):
        group, local = self.group_of[gpu.index], self.ep_rank[gpu.index]
        host = self.host
        if host is not None:  # the op starts once the host has issued its first kernel
            host.reach(gpu.index, order_key, op)
            issued_s, kernels = yield from host.wait_issued(gpu.index, order_key)
        if not op.collective:
            work = self.work_s(op, group, local, mb, chunk)
            yield from gpu.compute(work, self.op_id(op, mb, chunk),
                                   issued_s + work / kernels if host is not None else None)
            return
        if host is not None and issued_s > self.env.now:  # a collective's kernel is issued whole
            yield self.env.timeout(issued_s - self.env.now)
        kind = kind_of(op)
        if COLLECTIVES[kind].group == "tp":
            t = self.s.parallel.tp_size
            index = (op.layer * len(TP_KERNELS) + TP_KERNELS.index(op.wraps)) * len(PHASE_CODE) + PHASE_CODE[op.phase]
            coll = self.tp_collective(CollectiveId(kind, gpu.index // t, index, mb, chunk))
            join, sms = lambda c=coll: c.arrive(gpu.index % t), self.s.cluster.nccl_sms
        elif COLLECTIVES[kind].group == "etp":
            e = self.s.expert_tp
            index = op.moe_layer * len(PHASE_CODE) + PHASE_CODE[op.phase]
            coll = self.etp_collective(CollectiveId(kind, gpu.index // e, index, mb, chunk))
            join, sms = lambda c=coll: c.arrive(gpu.index % e), self.s.cluster.nccl_sms
        else:
            coll = self.collective(CollectiveId(kind, group, op.moe_layer, mb, chunk))
            join, sms = lambda c=coll: c.arrive(local), self.comm_sms
        seq = self.stream_seq[gpu.index].get(order_key) if self.stream_seq else None
        comm = self.env.process(gpu.communicate(COLLECTIVES[kind].stream, seq, join, sms, self.op_id(op, mb, chunk)))
        if op.overlapped:
            side = op.side_kernel()
            yield from gpu.compute(self.work_s(side, group, local, mb, chunk), self.op_id(side, mb, chunk))
        yield comm

    def host_order(self, program: Program) -> list:
        """(order key, op, PP slot) of every op of every chain, in the order the host issues them:
        the streams' order (simulator/engine/host.py); chain after chain without overlap."""
        if program.slots:
            return sorted((((t, k, position, c), op, t) for t, slot in enumerate(program.slots)
                           for position, task in enumerate(slot)
                           for k, op in enumerate(program.chunk_phases[task.chunk][task.phase != FWD])
                           for c in range(self.workload.num_chunks)), key=lambda e: e[0])
        chains = {chain: i for i, chain in enumerate(program.chains)}
        entries = [(self._order_key(program, phase, k, mb, c), op, None, (chains[mb, c], phase, k))
                   for phase, ops in enumerate(program.phases) for k, op in enumerate(ops) for mb, c in program.chains]
        serial = self.s.pipeline.overlap != "three_stream"
        entries.sort(key=(lambda e: e[3]) if serial else (lambda e: e[0]))
        return [e[:3] for e in entries]

    def run_gpu_serial(self, gpu: GPU):
        """overlap: none: the chains of a GPU run one after another."""
        for mb, chunk in self.programs[gpu.index].chains:
            yield from self.run_chain(gpu, mb, chunk)

    def simulate(self, progress=None) -> RunRecord:
        """Run every GPU's program to its end; progress(n) is told every PROGRESS_EVENTS events."""
        three_stream = self.s.pipeline.overlap == "three_stream"
        orders = {id(p): self.stream_order(p) for p in self._programs.values()} if three_stream else {}
        self.stream_seq = [orders[id(p)] for p in self.programs] if three_stream else None
        processes = []
        for gpu in self.gpus:
            if self.pp:
                chains = [self.env.process(self.run_stage(gpu))]
            elif not three_stream:
                chains = [self.env.process(self.run_gpu_serial(gpu))]
            else:
                chains = [self.env.process(self.run_chain(gpu, mb, chunk))
                          for mb, chunk in self.programs[gpu.index].chains]
            processes += [(gpu.index, p) for p in chains]
            if self.host is not None:
                self.env.process(self.host.run(gpu.index, self.host_order(self.programs[gpu.index])))
            if self.train:
                processes.append((gpu.index, self.env.process(self.run_update(gpu.index, chains))))
        with few_collections():
            while True:
                try:
                    self.env.step()
                except simpy.core.EmptySchedule:
                    break
                self.num_events += 1
                if progress is not None and self.num_events % PROGRESS_EVENTS == 0:
                    progress(PROGRESS_EVENTS)
        if progress is not None:
            progress(self.num_events % PROGRESS_EVENTS)
        stuck = [gpu for gpu, p in processes if not p.triggered]
        if stuck:  # an engine bug, never a property of the input: say so rather than report a short step
            raise RuntimeError(f"simulation ended with GPU {stuck[0]}'s program unfinished ({len(stuck)} processes)")
        return self.record()

    def record(self) -> RunRecord:
        """The plain record of what happened (no SimPy objects)."""
        step = float(max((iv.end_s for g in self.gpus for iv in g.intervals), default=0.0))
        w = self.workload
        counts = {key: ChunkCounts(recv_copies=t.recv_copies, recv_tokens=t.recv_tokens,
                                   node_pairs=t.node_tokens.sum(axis=1), expert_tokens=t.expert_tokens,
                                   expert_compute_s=w.expert_work_s[key])
                  for key, t in w.traffic.items()}
        collectives = {}
        for cid, c in self.collectives.items():
            if cid.kind == "pp_send":  # one transfer, seen by its sender and by its receiver
                collectives.update(_p2p_records(cid, c))
                continue
            collectives[cid] = CollectiveRecord(
                id=cid, gpus=c.group, arrived_s=c.arrived_s, start_s=c.start_s, send_done_s=c.send_done_s,
                recv_done_s=c.recv_done_s, done_s=np.maximum(c.owner_done_s, c.peer_done_s), bytes_out=c.bytes_out,
                bytes_nvlink=c.bytes_nvlink, bytes_ib=c.bytes_ib, nvlink_bytes_per_gpu=c.nvlink_bytes_per_gpu,
                ib_bytes_per_gpu=c.ib_bytes_per_gpu, payload_bytes=c.payload_bytes)
        topo = self.topology
        ports = PortRecord(topo.port_class(), topo.port_peak_bytes_per_s(), self.network.capacity,
                           self.network.port_bytes, self.network.port_busy_s)
        return RunRecord(self.s, step, [g.intervals for g in self.gpus], collectives, counts, ports,
                         w.expert_gpu, w.num_chunks, w.tokens_per_batch_limit, w.rounds,
                         self.compute_model.describe(), topo.has_spine, self.num_events, self.network.num_solves,
                         self.task_spans if self.pp else None, self.kernel_classes(), placements=w.placements,
                         dropped_copies=w.dropped_copies, placement_reports=w.placement_reports or None,
                         ungated_copies=w.ungated_copies, host=self.host.record() if self.host else None)

    def kernel_classes(self) -> dict[str, dict[str, float]]:
        """Per op name, the fraction of its time each kernel class takes: the dense ops' own split
        (first chunk's tokens), the routed experts' at the mean rows per expert, the update's."""
        s, w = self.s, self.workload
        out = {}
        for op, parts in self.dense_kernels[0].items():
            total = sum(parts.values())
            if total > 0:
                out[op] = {cls: v / total for cls, v in parts.items()}
        rows = [t.expert_tokens for t in w.traffic.values()]
        mean_rows = np.mean(rows, axis=0) if rows else np.zeros(1)
        experts = ffn_split(self.compute_model, mean_rows[mean_rows > 0], s.model.hidden_size,
                            s.model.moe_intermediate_size // s.expert_tp, permute=routed_permute(s))
        total = sum(experts.values())
        if total > 0:
            out["experts"] = {cls: v / total for cls, v in experts.items()}
            width = s.model.moe_intermediate_size // s.expert_tp
            experts_bwd = ffn_bwd_kernels(self.compute_model, mean_rows[mean_rows > 0], s.model.hidden_size, width,
                                          permute=routed_permute(s))
            for cls, v in expert_bwd_extras(s, self.compute_model, float(mean_rows.sum()), width).items():
                experts_bwd[cls] = experts_bwd.get(cls, 0.0) + v
            total_bwd = sum(experts_bwd.values())
            out["experts_bwd"] = ({cls: v / total_bwd for cls, v in experts_bwd.items()} if total_bwd > 0
                                  else out["experts"])
        out["optimizer"] = {"optimizer": 1.0}
        out["weight_cast"] = {"quantisation": 1.0}
        return out


PHASE_CODE = {FORWARD: 0, BACKWARD: 1, RECOMPUTE: 2}
GC_THRESHOLDS = (100_000, 20, 10)  # while simulating: the run allocates millions of short-lived events


@contextmanager
def few_collections():
    """Garbage collection tuned for a simulation: what exists before it (the elaborated workload,
    programs, SimPy's graph) is frozen out of the collector's scans, and the young generation
    collects per 100,000 allocations instead of 700 (the older ones still collect, every 2 M and 20 M,
    so cyclic garbage stays bounded). A full collection walked every live record, which grew with
    the run: the simulate phase's CPU time at EP 64 x 30 layers 7.5 s without, 6.0 s with (peak
    memory 138 MB and 129 MB). Restored after."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def kind_of(op: Op) -> str:
    """The collective kind an op runs: the EP kinds have backward twins (dispatch_bwd), the TP
    ones run the same kinds both ways."""
    return op.name if op.name in COLLECTIVES else op.op


def _p2p_records(cid: CollectiveId, c: Collective) -> dict:
    """A pipeline transfer as the sender's pp_send and the receiver's pp_recv; bytes are the
    transfer's on both (sent, received)."""
    out = {}
    for kind, i in (("pp_send", 0), ("pp_recv", 1)):
        rid = cid._replace(kind=kind)
        one = slice(i, i + 1)
        out[rid] = CollectiveRecord(
            id=rid, gpus=c.group[one], arrived_s=c.arrived_s[one], start_s=c.start_s, send_done_s=c.send_done_s[one],
            # the sender's time runs to its last byte sent, the receiver's to its last byte received
            recv_done_s=(c.send_done_s if kind == "pp_send" else c.recv_done_s)[one],
            done_s=np.maximum(c.owner_done_s, c.peer_done_s)[one],
            bytes_out=c.bytes_out, bytes_nvlink=c.bytes_nvlink, bytes_ib=c.bytes_ib,
            nvlink_bytes_per_gpu=np.array([c.bytes_nvlink]), ib_bytes_per_gpu=np.array([c.bytes_ib]),
            payload_bytes=c.payload_bytes)
    return out


def simulate(scenario: Scenario) -> RunRecord:
    return Run(scenario).simulate()
