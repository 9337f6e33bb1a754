"""All-to-all dispatch and combine over the topology (alltoallv with per-GPU-pair sizes).

One flow per token owner: in dispatch the owner scatters its tokens to the GPUs holding their
experts; in combine it gathers the results back along the mirrored paths. A flow's parts progress
together, as DeepEP's channels do (a channel walks its tokens in order and stalls when any
receiver's buffer is full). Algorithms (CONTRACT network.all_to_all):

- direct: once per distinct destination GPU over its own links: NVLink inside a node, the GPU's
  NIC outside (through the spine when the rails differ).
- hierarchical (DeepEP normal): once per distinct destination node over IB to the GPU with the
  owner's local rank there, then NVLink-forwarded once per distinct destination GPU in that node.
  Every copy, a GPU's own included, passes the NVLink-buffer stage at the NVLink port's rate.
- low_latency (DeepEP LL): one message per (token, expert) pair straight to the expert's GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import simpy

from hardware.topology import Topology
from simulator.network import FlowBatch, Network
from simulator.traffic import ChunkTraffic

LL_HEADER_BYTES = 16  # DeepEP LL FP8 message: hidden + hidden/128 x 4 scale bytes + 16


def token_bytes(dtype: str, hidden_size: int, algorithm: str) -> float:
    """Bytes one token's hidden vector costs on the wire."""
    if dtype == "bf16":
        return 2.0 * hidden_size
    scales = hidden_size / 128 * 4
    return hidden_size + scales + (LL_HEADER_BYTES if algorithm == "low_latency" else 0)


@dataclass(frozen=True)
class Paths:
    """A collective's flows (dispatch direction) and its (owner, peer) pairs."""
    entry_flow: np.ndarray
    entry_port: np.ndarray
    entry_bytes: np.ndarray
    pair_owner: np.ndarray  # local indices
    pair_peer: np.ndarray
    pair_latency_s: np.ndarray


def build_paths(algorithm: str, traffic: ChunkTraffic, num_bytes: float, group: np.ndarray,
                topo: Topology) -> Paths:
    """Port loads of every owner's flow, dispatch direction. `group` maps local -> global GPU."""
    p = len(group)
    gpn = topo.spec.gpus_per_node
    counts = traffic.pair_copies if algorithm == "low_latency" else traffic.pair_tokens
    pair = counts.astype(np.float64) * num_bytes
    if algorithm != "hierarchical":
        np.fill_diagonal(pair, 0.0)  # a GPU's tokens for its own experts cross no port
    # DeepEP's normal kernels address a GPU's own receive buffer like any peer's: its own tokens
    # pass through the same NVLink-buffer stage, and the achievable rate the README quotes
    # (~160 GB/s on H800) counts them. So hierarchical keeps the diagonal on the NVLink ports.
    local = np.arange(p)
    node = local // gpn if p > gpn else np.zeros(p, dtype=np.int64)
    rail = topo.rail_of(group)
    same_node = node[:, None] == node[None, :]
    owners, peers = np.nonzero(pair)
    pb = pair[owners, peers]
    g_own, g_peer = group[owners], group[peers]
    intra = same_node[owners, peers]

    flows, ports, nbytes = [], [], []

    def put(f, port, b):
        flows.append(np.asarray(f)), ports.append(np.asarray(port)), nbytes.append(np.asarray(b, dtype=np.float64))

    intra_out = np.bincount(owners[intra], pb[intra], minlength=p)
    has = intra_out > 0
    put(local[has], topo.nvl_out(group[has]), intra_out[has])
    if algorithm == "hierarchical":
        fwd = ~intra  # arrives at the forwarder over IB, then passes its NVLink buffer stage
        put(owners[intra | fwd], topo.nvl_in(g_peer[intra | fwd]), pb[intra | fwd])
        num_nodes = traffic.node_tokens.shape[1]
        nb = traffic.node_tokens.astype(np.float64) * num_bytes
        nb[local, node] = 0.0  # the owner's own node is reached over NVLink
        o_n, n_n = np.nonzero(nb)
        forwarder = n_n * gpn + rail[o_n] % gpn if p > gpn else o_n
        rdma = np.bincount(o_n, nb[o_n, n_n], minlength=p)
        has = rdma > 0
        put(local[has], topo.nic_out(group[has]), rdma[has])
        put(o_n, topo.nic_in(group[forwarder]), nb[o_n, n_n])
        fwd_out = np.bincount(owners[fwd] * num_nodes + node[peers[fwd]], pb[fwd], minlength=p * num_nodes)
        of, nf = np.nonzero(fwd_out.reshape(p, num_nodes))
        put(of, topo.nvl_out(group[nf * gpn + rail[of] % gpn]), fwd_out.reshape(p, num_nodes)[of, nf])
        latency = np.where(intra, topo.spec.nvlink.latency_s,
                           topo.spec.ib.latency_s + np.where(fwd, topo.spec.nvlink.latency_s, 0.0))
    else:
        put(owners[intra], topo.nvl_in(g_peer[intra]), pb[intra])
        inter = ~intra
        nic_out = np.bincount(owners[inter], pb[inter], minlength=p)
        has = nic_out > 0
        put(local[has], topo.nic_out(group[has]), nic_out[has])
        put(owners[inter], topo.nic_in(g_peer[inter]), pb[inter])
        if topo.has_spine:
            cross = inter & (rail[owners] != rail[peers])
            up = np.bincount(owners[cross], pb[cross], minlength=p)
            has = up > 0
            put(local[has], topo.spine_up(rail[has]), up[has])
            down = np.bincount(owners[cross] * gpn + rail[peers[cross]], pb[cross], minlength=p * gpn).reshape(p, gpn)
            o_d, r_d = np.nonzero(down)
            put(o_d, topo.spine_down(r_d), down[o_d, r_d])
        latency = topo.pair_latency_s(g_own, g_peer)
    return Paths(np.concatenate(flows).astype(np.int64), np.concatenate(ports).astype(np.int64),
                 np.concatenate(nbytes), owners, peers, latency)


def mirrored(paths: Paths, topo: Topology) -> Paths:
    """The same flows in the combine direction: every port replaced by its opposite."""
    return replace(paths, entry_port=mirror_ports(paths.entry_port, topo))


def mirror_ports(ports: np.ndarray, topo: Topology) -> np.ndarray:
    """Map each port to its opposite direction (out <-> in, spine up <-> down) for combine."""
    g = topo.num_gpus
    out = ports.copy()
    for lo, hi, shift in ((0, g, g), (g, 2 * g, -g), (2 * g, 3 * g, g), (3 * g, 4 * g, -g)):
        sel = (ports >= lo) & (ports < hi)
        out[sel] += shift
    if topo.has_spine:
        r = topo.spec.gpus_per_node
        up = (ports >= 4 * g) & (ports < 4 * g + r)
        down = ports >= 4 * g + r
        out[up] += r
        out[down] -= r
    return out


class Collective:
    """One dispatch or combine of one EP group: a barrier, then one flow per token owner.

    GPU i's part is done when its own flow has finished and every flow it is a peer of has
    finished, plus the path latency on the receiving side. `owner_is_sender` is True for dispatch (owner scatters)
    and False for combine (owner gathers).
    """

    def __init__(self, env: simpy.Environment, network: Network, group: np.ndarray, build, owner_is_sender: bool,
                 setup_s: float, protocol_efficiency: float = 1.0):
        self.env, self.network, self.group = env, network, group
        self._build = build  # () -> Paths in the direction of the flows, built at start
        self.owner_is_sender = owner_is_sender
        self.setup_s = setup_s
        self.protocol_efficiency = protocol_efficiency
        p = len(group)
        self.arrived_s = np.full(p, np.nan)
        self.start_s = np.nan
        self.owner_done_s = np.full(p, np.nan)
        self.peer_done_s = np.full(p, np.nan)
        self.bytes_out = 0.0
        self.bytes_nvlink = 0.0
        self.bytes_ib = 0.0
        self._done = [env.event() for _ in range(p)]
        self._scheduled = np.zeros(p, dtype=bool)
        self._num_arrived = 0

    def arrive(self, i: int) -> simpy.Event:
        """GPU i joins; the returned event fires when GPU i's part is complete."""
        self.arrived_s[i] = self.env.now
        self._num_arrived += 1
        if self._num_arrived == len(self.group):
            self.start_s = self.env.now
            self.env.timeout(self.setup_s).callbacks.append(lambda _ev: self._launch())
        return self._done[i]

    def _launch(self) -> None:
        paths: Paths = self._build()
        self._paths = paths
        p = len(self.group)
        ports = paths.entry_port
        cls = self.network.topology.port_class()[ports]
        outgoing = self.network.topology.is_gpu_egress(ports)
        self.bytes_out = float(paths.entry_bytes[outgoing].sum())
        self.bytes_nvlink = float(paths.entry_bytes[(cls == 0) & outgoing].sum())
        self.bytes_ib = float(paths.entry_bytes[(cls == 1) & outgoing].sum())
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
                                   self.protocol_efficiency))

    def _flows_done(self, owners: np.ndarray, now: float) -> None:
        paths = self._paths
        # The last byte is received one path latency after it is sent: on the peers in dispatch
        # (owner scatters), on the owner in combine (owner gathers).
        self.owner_done_s[owners] = now + (0.0 if self.owner_is_sender else self._owner_latency[owners])
        sel = np.isin(paths.pair_owner, owners)
        peers = paths.pair_peer[sel]
        np.maximum.at(self._peer_latest, peers, now + (paths.pair_latency_s[sel] if self.owner_is_sender else 0.0))
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
