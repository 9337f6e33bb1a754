"""The host: one CPU thread per GPU that issues the GPU's kernels in program order.

Eager PyTorch spends CPU time on every kernel it launches (the op's Python and dispatcher work and
cudaLaunchKernel: `hardware.host_launch_us` per kernel), and a GPU cannot start a kernel the host
has not issued yet; so a step of many small kernels is host-bound, and the GPU idles in the gaps.
Otherwise the host runs ahead of the GPU (launches are asynchronous) except where it must wait for
the GPU to get somewhere:

- a token dispatcher that needs the received counts on the host before the all-to-all can be
  issued (`AllToAll.host_sync`): Megatron-Core's alltoall dispatcher copies the per-expert counts
  to the host and synchronises; DeepEP's normal dispatch makes the CPU wait for its notify kernel's
  counts. Each forward dispatch: the host waits until its chain's GPU work before it has finished;
- a pipeline stage's input: Megatron synchronises the device after its batched p2p
  (`batch_p2p_sync`), so the host issues a micro-batch's ops only once its input has arrived.

With CUDA graphs (`training.cuda_graphs`) an op's kernels replay as one captured graph, one graph
launch (`hardware.graph_launch_us`) instead of a launch per kernel; the host syncs above cannot be
captured and stay (the dispatch is issued eagerly).

An op's kernels are issued one after another: it may start once its first kernel is issued and end
no earlier than its last kernel's issue plus one kernel's share of its GPU time. Kernel counts are
the compute model's own (`kernel_launches`: one launch per kernel it times; a grouped GEMM is one
launch; a backward runs BACKWARD_FACTOR x its forward's launches); a collective is one launch.
Not issued through the host: the update (gradient buckets, optimizer, parameter all-gather).
"""
from __future__ import annotations

import numpy as np
import simpy

from hardware.compute import ATTENTION_CORE_BACKWARD_FACTOR, BACKWARD_FACTOR, GradientGemms, ffn_bwd_parts
from simulator.engine.program import FORWARD, Op
from simulator.workload.costs import dense_kernels, ffn_split, routed_permute

COLLECTIVE_LAUNCHES = 1.0  # one comm kernel per call (its host-side preparation is not modelled)
# Kernels the host may have issued ahead of the GPU before a launch blocks: CUDA's launch queue
# holds about 1024 pending launches (ASSUMED: NVIDIA documents no number; forum measurements
# report launches blocking past ~1024 queued kernels)
LAUNCH_QUEUE = 1024


class LaunchCount(GradientGemms):
    """The compute model's interface, counting kernels instead of timing them: every kernel the
    compute model would time with one launch counts 1 (0 when it has no work)."""

    def gemm_s(self, m, n, k) -> float:
        return 1.0 if m > 0 else 0.0

    def grouped_gemm_s(self, ms, n, k) -> float:
        return 1.0 if (np.asarray(ms) > 0).any() else 0.0

    def wgrad_s(self, ks, rows, cols) -> float:
        return 1.0 if (np.asarray(ks) > 0).any() else 0.0

    def memory_s(self, num_bytes) -> float:
        return 1.0 if num_bytes > 0 else 0.0

    def attention_core_s(self, flop, num_bytes) -> float:
        return 1.0 if flop > 0 else 0.0

    def attention_core_bwd_s(self, flop, num_bytes) -> float:
        return ATTENTION_CORE_BACKWARD_FACTOR * self.attention_core_s(flop, num_bytes)

    def decode_attention_s(self, kind, flop, num_bytes) -> float:
        return self.attention_core_s(flop, num_bytes)

    def expert_ffn_s(self, tokens_per_expert, hidden_size, intermediate_size, permute: bool = True) -> float:
        return float(sum(ffn_split(self, tokens_per_expert, hidden_size, intermediate_size, permute).values()))

    def expert_ffn_bwd_s(self, tokens_per_expert, hidden_size, intermediate_size, permute: bool = True) -> float:
        parts = ffn_bwd_parts(self, tokens_per_expert, hidden_size, intermediate_size, permute)
        return 0.0 if parts is None else float(sum(parts))


def kernel_launches(s, num_tokens: int) -> dict[str, float]:
    """Kernels per op name (backward and recompute names included) for a chunk of num_tokens."""
    counter = LaunchCount()
    out = {op: float(sum(parts.values())) for op, parts in dense_kernels(s, counter, num_tokens).items()}
    m = s.model
    rows = np.ones(max(1, m.num_experts // s.parallel.ep_size))
    out["experts"] = counter.expert_ffn_s(rows, m.hidden_size, m.moe_intermediate_size, permute=routed_permute(s))
    out["experts_bwd"] = BACKWARD_FACTOR * out["experts"]
    return out


def host_modelled(s) -> bool:
    """Whether issuing kernels costs the host anything (else the engine runs without a host)."""
    return s.cluster.host_launch_s > 0 or (s.training.cuda_graphs and s.cluster.graph_launch_s > 0)


class Host:
    """Every GPU's host thread: when each op of each chain is issued (simulated time), computed by
    one process per GPU that walks the GPU's ops in program order."""

    def __init__(self, env: simpy.Environment, s, launches: dict[str, float], host_sync: bool):
        self.env = env
        self.launch_s = s.cluster.host_launch_s
        self.graph_s = s.cluster.graph_launch_s
        self.graphs = s.training.cuda_graphs
        self.launches = launches
        self.host_sync = host_sync
        self.issued: list[dict] = [{} for _ in range(s.num_gpus)]  # key -> (first kernel issued, all issued, kernels)
        self.waiting: list[dict] = [{} for _ in range(s.num_gpus)]  # key -> event a chain waits on
        self.reached: list[dict] = [{} for _ in range(s.num_gpus)]  # key -> event: the chain has got there
        self.slot_started: list[dict] = [{} for _ in range(s.num_gpus)]  # PP slot -> event
        self.pending = np.zeros(s.num_gpus)  # kernels issued and not yet started
        self.drained: dict = {}  # GPU -> event: its launch queue has room again
        self.kernels_issued = np.zeros(s.num_gpus)  # kernel launches (a graph launch counts 1)
        self.busy_s = np.zeros(s.num_gpus)  # CPU time spent issuing
        self.sync_wait_s = np.zeros(s.num_gpus)  # time the host waited for the GPU

    def kernels(self, op: Op) -> float:
        if op.collective:
            n = COLLECTIVE_LAUNCHES
            if op.overlapped:
                n += self.kernels(op.side_kernel())
            return n
        if op.name in self.launches:
            return self.launches[op.name]
        return self.launches.get(op.op, 1.0) * (BACKWARD_FACTOR if op.backward else 1.0)

    def syncs(self, op: Op) -> bool:
        return self.host_sync and op.collective and op.op == "dispatch" and op.phase == FORWARD

    def _event(self, table: dict, key) -> simpy.Event:
        ev = table.get(key)
        if ev is None:
            ev = table[key] = self.env.event()
        return ev

    # -- the host's side ----------------------------------------------------------------------
    def run(self, gpu: int, order: list):
        """order: (key, op, slot) in program order; slot: the PP slot whose input the op needs
        (None without PP)."""
        h = 0.0
        slot_seen = None
        for key, op, slot in order:
            if slot is not None and slot != slot_seen:
                slot_seen = slot
                h = yield from self._wait(gpu, h, self._event(self.slot_started[gpu], slot))
                del self.slot_started[gpu][slot]
            syncs = self.syncs(op)
            if syncs:
                h = yield from self._wait(gpu, h, self._event(self.reached[gpu], key), sync=True)
                del self.reached[gpu][key]
            if self.pending[gpu] >= LAUNCH_QUEUE:  # the launch queue is full: wait for the GPU to take some
                h = yield from self._wait(gpu, h, self._event(self.drained, gpu))
            if self.graphs and not syncs:
                cost, n = self.graph_s, 1.0
            else:
                kernels = self.kernels(op)
                cost, n = kernels * self.launch_s, max(kernels, 1.0)
            first, h = h + cost / n, h + cost
            self.busy_s[gpu] += cost
            self.kernels_issued[gpu] += n
            self.pending[gpu] += n
            self.issued[gpu][key] = (first, h, n)
            ev = self.waiting[gpu].pop(key, None)
            if ev is not None:
                self.env.timeout(max(0.0, first - self.env.now)).callbacks.append(lambda _e, ev=ev: ev.succeed())

    def _wait(self, gpu: int, h: float, ev: simpy.Event, sync: bool = False):
        """The host, busy until h, waits for the GPU event; returns when it may issue again."""
        if not ev.triggered:
            if h > self.env.now:
                yield self.env.timeout(h - self.env.now)
            t0 = self.env.now
            yield ev
            if sync:
                self.sync_wait_s[gpu] += self.env.now - t0
        return max(h, self.env.now)

    def record(self) -> dict:
        """Per GPU means (and the busiest GPU's CPU time) for the summary's `host` block."""
        return {"launches_per_gpu": float(self.kernels_issued.mean()), "busy_s": float(self.busy_s.mean()),
                "busy_max_s": float(self.busy_s.max()), "sync_wait_s": float(self.sync_wait_s.mean())}

    # -- the GPU's side -----------------------------------------------------------------------
    def reach(self, gpu: int, key, op: Op) -> None:
        """A chain got to `op` (every op before it in its chain has finished on the GPU)."""
        if self.syncs(op):
            self._event(self.reached[gpu], key).succeed()

    def start_slot(self, gpu: int, slot) -> None:
        self._event(self.slot_started[gpu], slot).succeed()

    def wait_issued(self, gpu: int, key):
        """Until the op's first kernel is issued; returns (all issued at, kernels)."""
        if key not in self.issued[gpu]:
            yield self._event(self.waiting[gpu], key)
        elif self.issued[gpu][key][0] > self.env.now:
            yield self.env.timeout(self.issued[gpu][key][0] - self.env.now)
        _, issued_s, n = self.issued[gpu].pop(key)
        self.pending[gpu] -= n
        if self.pending[gpu] < LAUNCH_QUEUE and gpu in self.drained:
            self.drained.pop(gpu).succeed()
        return issued_s, n
