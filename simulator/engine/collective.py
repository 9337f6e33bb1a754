"""EP collectives: the kinds a step runs (one table), and one collective's barrier, flows and timing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import simpy

from simulator.engine.gpu import DP_COMM, PP_COMM, RECEIVE, SEND, TP_COMM
from simulator.engine.network import FlowBatch, Network
from simulator.engine.paths import Paths
from simulator.engine.program import BACKWARD, FORWARD, RECOMPUTE


@dataclass(frozen=True)
class CollectiveKind:
    name: str
    op: str  # "alltoall" | "allreduce" | "reducescatter" | "allgather"
    group: str  # the ranks it spans: "ep", "tp", "etp", "dp" (dense data parallel), "edp" (expert DP), ...
    stream: str  # the GPU stream it occupies
    owner_sends: bool  # all-to-all: the token owner scatters (dispatch direction) or gathers (combine)
    dtype_key: str  # "<section>.<field>" of the scenario naming its wire dtype, or the dtype itself
    phase: str
    carries: str

    def wire_dtype(self, s) -> str:
        if "." not in self.dtype_key:
            return self.dtype_key
        section, key = self.dtype_key.split(".")
        return getattr(getattr(s, section), key)


# Dispatch runs on the receive stream (tokens arriving for this GPU's experts) and combine on the
# send stream (results leaving them), so the two can overlap on the network. Gradients travelling
# towards the experts use the dispatch kernel and its dtype (DeepSeek's trace shows FP8 backward
# dispatch); those travelling back use the combine kernel and dtype. Data-parallel collectives
# run on their own NCCL stream (Megatron launches them asynchronously, bucket by bucket).
COLLECTIVES = {kind.name: kind for kind in (
    CollectiveKind("dispatch", "alltoall", "ep", RECEIVE, True, "network.dispatch_dtype", FORWARD,
                   "tokens, owner -> GPUs of their experts"),
    CollectiveKind("dispatch_bwd", "alltoall", "ep", RECEIVE, True, "network.dispatch_dtype", BACKWARD,
                   "output gradients, owner -> GPUs of their experts"),
    CollectiveKind("combine", "alltoall", "ep", SEND, False, "network.combine_dtype", FORWARD,
                   "expert outputs, experts -> token owner"),
    CollectiveKind("combine_bwd", "alltoall", "ep", SEND, False, "network.combine_dtype", BACKWARD,
                   "input gradients, experts -> token owner"),
    CollectiveKind("dispatch_recompute", "alltoall", "ep", RECEIVE, True, "network.dispatch_dtype", RECOMPUTE,
                   "tokens again, for a layer re-run in the backward (full recompute)"),
    CollectiveKind("combine_recompute", "alltoall", "ep", SEND, False, "network.combine_dtype", RECOMPUTE,
                   "expert outputs again, for a layer re-run in the backward (full recompute)"),
    CollectiveKind("grad_allreduce", "allreduce", "dp", DP_COMM, True, "training.grad_reduce_dtype", BACKWARD,
                   "gradients of dense parameters (attention, router, shared experts, dense FFN)"),
    CollectiveKind("grad_reducescatter", "reducescatter", "dp", DP_COMM, True, "training.grad_reduce_dtype",
                   BACKWARD, "gradients of dense parameters, each DP rank keeping its optimizer shard"),
    CollectiveKind("param_allgather", "allgather", "dp", DP_COMM, True, "bf16", FORWARD,
                   "updated dense parameters from their optimizer shards"),
    CollectiveKind("expert_grad_allreduce", "allreduce", "edp", DP_COMM, True, "training.grad_reduce_dtype",
                   BACKWARD, "gradients of routed-expert parameters"),
    CollectiveKind("expert_grad_reducescatter", "reducescatter", "edp", DP_COMM, True,
                   "training.grad_reduce_dtype", BACKWARD, "gradients of routed-expert parameters, sharded"),
    CollectiveKind("expert_param_allgather", "allgather", "edp", DP_COMM, True, "bf16", FORWARD,
                   "updated routed-expert parameters from their optimizer shards"),
    # Redundant experts in training (placement.redundant_experts with eplb): the copies of one
    # logical expert inside an EP group are data-parallel replicas, their gradients summed among
    # the GPUs holding them before the expert-DP reduction (FlexMoE, Nie et al., SIGMOD 2023)
    CollectiveKind("expert_replica_grad_allreduce", "allreduce", "replicas", DP_COMM, True,
                   "training.grad_reduce_dtype", BACKWARD,
                   "gradients of a replicated expert, among the GPUs of its EP group holding a copy"),
    # DualPipe keeps two copies of every stage (on ranks r and p-1-r): their gradients are summed
    # between the two before the update (deepseek-ai/DualPipe examples/example_dualpipe.py)
    CollectiveKind("mirror_grad_allreduce", "allreduce", "mirror", DP_COMM, True, "training.grad_reduce_dtype",
                   BACKWARD, "gradients of both model chunks, between a DualPipe rank and its mirror"),
    # Sequence parallelism: each layer's TP-split kernels gather their input over the TP group
    # before and reduce-scatter their output after (NVLink inside a node); on their own stream.
    CollectiveKind("tp_allgather", "allgather", "tp", TP_COMM, True, "bf16", FORWARD,
                   "sequence-parallel activations (or, backward, their gradients) into the whole sequence"),
    CollectiveKind("tp_reducescatter", "reducescatter", "tp", TP_COMM, True, "bf16", FORWARD,
                   "partial sums of a row-parallel kernel back to sequence shards"),
    # Expert TP: the rows an expert-TP group received, gathered to all its GPUs before the experts
    # and their partial outputs reduce-scattered after (NVLink inside a node); on the TP stream.
    CollectiveKind("etp_allgather", "allgather", "etp", TP_COMM, True, "bf16", FORWARD,
                   "routed rows (backward: their output gradients) received by an expert-TP group, to every member"),
    CollectiveKind("etp_reducescatter", "reducescatter", "etp", TP_COMM, True, "bf16", FORWARD,
                   "partial expert outputs (backward: input gradients), summed back to the GPU that received each row"),
    # A pipeline transfer is one flow; the record shows it twice, as the sender's pp_send and the
    # receiver's pp_recv (CollectiveId.chunk: 0 activations forward, 1 gradients backward).
    CollectiveKind("pp_send", "p2p", "pp", PP_COMM, True, "bf16", FORWARD,
                   "activations to the next stage (forward), gradients to the previous (backward)"),
    CollectiveKind("pp_recv", "p2p", "pp", PP_COMM, True, "bf16", FORWARD,
                   "the same transfers, seen from the receiving stage"),
)}


class CollectiveId(NamedTuple):
    kind: str
    group: int  # index among the groups of its kind's rank group
    index: int  # all-to-all: the MoE layer; data parallel: the bucket; p2p: the sender's virtual stage;
    #             tensor parallel: (layer, kernel, phase) as (layer x kernels + kernel) x 3 + phase code
    micro_batch: int  # -1 where it is not tied to one
    chunk: int  # -1 where it is not tied to one; p2p: 0 forward, 1 backward


class Collective:
    """One dispatch or combine of one EP group: a barrier, then one flow per token owner.

    GPU i's part is done when its own flow has finished and every flow it is a peer of has
    finished, plus the path latency on the receiving side. `owner_is_sender` is True for dispatch (owner scatters)
    and False for combine (owner gathers).
    """

    def __init__(self, env: simpy.Environment, network: Network, group: np.ndarray, build, owner_is_sender: bool,
                 setup_s: float, protocol_efficiency: float = 1.0, keep_paths: bool = False,
                 rate_cap: float = float("inf")):
        """keep_paths: keep the flows' paths after launch for inspection (tests); else the network
        holds them only while their flows run (at EP 1024 the kept paths were most of the memory)."""
        self.env, self.network, self.group = env, network, group  # group: EP rank -> global GPU
        self.keep_paths = keep_paths
        self._paths: Paths | None = None
        self._build = build  # () -> Paths in the direction of the flows, built at start
        self.owner_is_sender = owner_is_sender
        self.setup_s = setup_s
        self.protocol_efficiency = protocol_efficiency
        self.rate_cap = rate_cap  # each flow's own rate cap (the SMs its kernel holds)
        p = len(group)
        self.arrived_s = np.full(p, np.nan)
        self.start_s = np.nan
        self.owner_done_s = np.full(p, np.nan)
        self.peer_done_s = np.full(p, np.nan)
        self.bytes_out = 0.0
        self.bytes_nvlink = 0.0
        self.bytes_ib = 0.0
        self.payload_bytes = 0.0
        self.nvlink_bytes_per_gpu = np.zeros(p)  # egress bytes by EP rank
        self.ib_bytes_per_gpu = np.zeros(p)
        self._done = [env.event() for _ in range(p)]
        self._scheduled = np.zeros(p, dtype=bool)
        self._num_arrived = 0

    def arrive(self, i: int) -> simpy.Event:
        """GPU i joins; the returned event fires when GPU i's part is complete."""
        if not np.isnan(self.arrived_s[i]):
            raise RuntimeError(f"GPU {self.group[i]} joined the same collective twice (two ops share its id)")
        self.arrived_s[i] = self.env.now
        self._num_arrived += 1
        if self._num_arrived == len(self.group):
            self.start_s = self.env.now
            self.env.timeout(self.setup_s).callbacks.append(lambda _ev: self._launch())
        return self._done[i]

    def _launch(self) -> None:
        paths: Paths = self._build()
        self._build = None  # built once; its closure (the traffic) is not needed again
        if self.keep_paths:
            self._paths = paths
        p = len(self.group)
        ports = paths.entry_port
        cls = self.network.topology.port_class()[ports]
        outgoing = self.network.topology.is_gpu_egress(ports)
        self.bytes_out = float(paths.entry_bytes[outgoing].sum())
        self.bytes_nvlink = float(paths.entry_bytes[(cls == 0) & outgoing].sum())
        self.bytes_ib = float(paths.entry_bytes[(cls == 1) & outgoing].sum())
        self.payload_bytes = paths.payload_bytes
        topo = self.network.topology
        rank_of = np.full(topo.num_gpus, -1, dtype=np.int64)
        rank_of[self.group] = np.arange(p)
        egress_rank = rank_of[topo.port_gpu()[ports]]
        for cls_index, per_gpu in ((0, self.nvlink_bytes_per_gpu), (1, self.ib_bytes_per_gpu)):
            sel = (cls == cls_index) & outgoing
            per_gpu += np.bincount(egress_rank[sel], paths.entry_bytes[sel], minlength=p)
        # the (owner, peer) pairs grouped by owner, so a finished flow finds its pairs by slicing;
        # the paths themselves are the network's until their flows end, then nobody's
        order = np.argsort(paths.pair_owner, kind="stable")
        self._pair_peer, self._pair_latency_s = paths.pair_peer[order], paths.pair_latency_s[order]
        self._pair_start = np.searchsorted(paths.pair_owner[order], np.arange(p + 1))
        self._peer_pending = np.bincount(paths.pair_peer, minlength=p)
        self._peer_latest = np.full(p, self.env.now)
        has_flow = np.zeros(p, dtype=bool)
        has_flow[paths.entry_flow] = True
        self.owner_done_s[~has_flow] = self.env.now
        self.peer_done_s[self._peer_pending == 0] = self.env.now
        self._owner_latency = np.zeros(p)
        np.maximum.at(self._owner_latency, paths.pair_owner, paths.pair_latency_s)
        for i in np.nonzero(~has_flow | (self._peer_pending == 0))[0]:
            self._maybe_done(int(i))
        self.network.add(FlowBatch(paths.entry_flow, paths.entry_port, paths.entry_bytes, p, self._flows_done,
                                   self.protocol_efficiency, self.rate_cap))

    def _flows_done(self, owners: np.ndarray, now: float) -> None:
        # The last byte is received one path latency after it is sent: on the peers in dispatch
        # (owner scatters), on the owner in combine (owner gathers).
        self.owner_done_s[owners] = now + (0.0 if self.owner_is_sender else self._owner_latency[owners])
        sel = owner_slices(self._pair_start, owners)
        peers = self._pair_peer[sel]
        np.maximum.at(self._peer_latest, peers, now + (self._pair_latency_s[sel] if self.owner_is_sender else 0.0))
        self._peer_pending -= np.bincount(peers, minlength=len(self.group))
        newly_peer = np.unique(peers[self._peer_pending[peers] == 0])
        self.peer_done_s[newly_peer] = self._peer_latest[newly_peer]
        for i in np.union1d(owners, newly_peer):
            self._maybe_done(int(i))

    def _maybe_done(self, i: int) -> None:
        if np.isnan(self.owner_done_s[i]) or np.isnan(self.peer_done_s[i]) or self._scheduled[i]:
            return
        self._scheduled[i] = True
        at = max(self.owner_done_s[i], self.peer_done_s[i])
        ev = self._done[i]
        self.env.timeout(max(0.0, at - self.env.now)).callbacks.append(lambda _e: ev.succeed())

    @property
    def send_done_s(self) -> np.ndarray:
        return self.owner_done_s if self.owner_is_sender else self.peer_done_s

    @property
    def recv_done_s(self) -> np.ndarray:
        return self.peer_done_s if self.owner_is_sender else self.owner_done_s


def owner_slices(start: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Indices of the pairs of `owners` in pairs grouped by owner (owner i's are start[i]:start[i+1])."""
    first, count = start[owners], start[owners + 1] - start[owners]
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(first - np.cumsum(count) + count, count) + np.arange(total)
