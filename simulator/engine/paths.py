"""A collective's flows over the topology's ports (alltoallv with per-GPU-pair sizes).

One flow per token owner: in dispatch the owner scatters its tokens to the GPUs holding their
experts; in combine it gathers the results back along the mirrored paths. A flow's parts progress
together, as DeepEP's channels do (a channel walks its tokens in order and stalls when any
receiver's buffer is full). What each algorithm sends is in simulator.wire.ALL_TO_ALL; the two
routes below are how those bytes cross the ports.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hardware.topology import Topology
from simulator.ranks import EPGroup
from simulator.wire import AllToAll
from simulator.workload.traffic import ChunkTraffic


@dataclass(frozen=True)
class Paths:
    """A collective's flows (dispatch direction) and its (owner, peer) pairs."""
    entry_flow: np.ndarray
    entry_port: np.ndarray
    entry_bytes: np.ndarray
    pair_owner: np.ndarray  # EP ranks
    pair_peer: np.ndarray
    pair_latency_s: np.ndarray
    # bytes delivered to the members, each copy once however many ports it crosses (the
    # all-to-all's token copies to other GPUs; a ring's buffer per member, nccl-tests' algbw size;
    # a transfer's bytes); entry_bytes at the GPU egress ports count every hop
    payload_bytes: float = 0.0


class _Entries:
    """(flow, port, bytes) entries collected route by route."""

    def __init__(self):
        self.flows, self.ports, self.nbytes = [], [], []

    def put(self, flow, port, num_bytes) -> None:
        self.flows.append(np.asarray(flow))
        self.ports.append(np.asarray(port))
        self.nbytes.append(np.asarray(num_bytes, dtype=np.float64))

    def put_per_owner(self, owners: np.ndarray, num_bytes: np.ndarray, num_ranks: int, port_of) -> None:
        """One entry per owner that sends anything: the sum of its bytes, through port_of(ranks)."""
        total = np.bincount(owners, num_bytes, minlength=num_ranks)
        has = np.nonzero(total > 0)[0]
        self.put(has, port_of(has), total[has])

    def paths(self, owners, peers, latency_s, payload_bytes: float) -> Paths:
        return Paths(np.concatenate(self.flows).astype(np.int64), np.concatenate(self.ports).astype(np.int64),
                     np.concatenate(self.nbytes), owners, peers, latency_s, payload_bytes)


def _start(owners: np.ndarray, peers: np.ndarray, pb: np.ndarray, group: EPGroup, topo: Topology):
    """The entries every route begins with: each owner's NVLink out-port carrying what it sends
    inside its node; and which pairs are inside a node."""
    intra = group.node[owners] == group.node[peers]
    e = _Entries()
    e.put_per_owner(owners[intra], pb[intra], group.size, lambda r: topo.nvl_out(group.gpus[r]))
    return e, intra


def _payload(owners: np.ndarray, peers: np.ndarray, pb: np.ndarray) -> float:
    """Bytes of the copies that reach another GPU (low-latency's own copies cross ports but stay home)."""
    return float(pb[owners != peers].sum())


def direct_route(owners: np.ndarray, peers: np.ndarray, pb: np.ndarray, traffic: ChunkTraffic, num_bytes: float,
                 group: EPGroup, topo: Topology) -> Paths:
    """Each copy over its own links: NVLink inside a node; NIC out, (spine,) NIC in outside."""
    p, gpn, gpus, rail = group.size, topo.spec.gpus_per_node, group.gpus, group.rail
    e, intra = _start(owners, peers, pb, group, topo)
    e.put(owners[intra], topo.nvl_in(gpus[peers[intra]]), pb[intra])
    inter = ~intra
    e.put_per_owner(owners[inter], pb[inter], p, lambda r: topo.nic_out(gpus[r]))
    e.put(owners[inter], topo.nic_in(gpus[peers[inter]]), pb[inter])
    if topo.has_spine:
        cross = inter & (rail[owners] != rail[peers])
        e.put_per_owner(owners[cross], pb[cross], p, lambda r: topo.spine_up(rail[r]))
        down = np.bincount(owners[cross] * gpn + rail[peers[cross]], pb[cross], minlength=p * gpn).reshape(p, gpn)
        o_d, r_d = np.nonzero(down)
        e.put(o_d, topo.spine_down(r_d), down[o_d, r_d])
    return e.paths(owners, peers, topo.pair_latency_s(gpus[owners], gpus[peers]), _payload(owners, peers, pb))


def hierarchical_route(owners: np.ndarray, peers: np.ndarray, pb: np.ndarray, traffic: ChunkTraffic,
                       num_bytes: float, group: EPGroup, topo: Topology) -> Paths:
    """DeepEP normal: once per destination node over IB to the owner's rail there (the forwarder),
    then over NVLink once per destination GPU; inside the owner's node over NVLink directly."""
    p, gpus, rail = group.size, group.gpus, group.rail
    local = np.arange(p)
    e, intra = _start(owners, peers, pb, group, topo)
    fwd = ~intra  # arrives at the forwarder over IB, then passes its NVLink buffer stage
    e.put(owners, topo.nvl_in(gpus[peers]), pb)  # every copy enters its GPU over NVLink
    num_nodes = traffic.node_tokens.shape[1]
    nb = traffic.node_tokens.astype(np.float64) * num_bytes
    nb[local, group.node] = 0.0  # the owner's own node is reached over NVLink
    o_n, n_n = np.nonzero(nb)
    forwarder = group.member_at[n_n, rail[o_n]]
    if (forwarder < 0).any():
        raise ValueError("hierarchical all-to-all needs a GPU of the owner's rail on every destination node")
    e.put_per_owner(o_n, nb[o_n, n_n], p, lambda r: topo.nic_out(gpus[r]))
    e.put(o_n, topo.nic_in(gpus[forwarder]), nb[o_n, n_n])
    fwd_out = np.bincount(owners[fwd] * num_nodes + group.node[peers[fwd]], pb[fwd],
                          minlength=p * num_nodes).reshape(p, num_nodes)
    of, nf = np.nonzero(fwd_out)
    e.put(of, topo.nvl_out(gpus[group.member_at[nf, rail[of]]]), fwd_out[of, nf])
    latency = np.where(intra, topo.spec.nvlink.latency_s,
                       topo.spec.ib.latency_s + np.where(fwd, topo.spec.nvlink.latency_s, 0.0))
    return e.paths(owners, peers, latency, _payload(owners, peers, pb))


ROUTES = {"direct": direct_route, "hierarchical": hierarchical_route}


def build_paths(a2a: AllToAll, traffic: ChunkTraffic, num_bytes: float, group: EPGroup, topo: Topology) -> Paths:
    """Port loads of every owner's flow, dispatch direction."""
    owners, peers, counts = traffic.pairs(copies=a2a.per_expert_copy)  # row-major (owner, peer) pairs
    pb = counts.astype(np.float64) * num_bytes
    carry = pb != 0
    if not a2a.own_copies_cross_ports:
        carry &= owners != peers  # a GPU's tokens for its own experts cross no port
    return ROUTES[a2a.route](owners[carry], peers[carry], pb[carry], traffic, num_bytes, group, topo)


def mirrored(paths: Paths, topo: Topology) -> Paths:
    """The same flows in the combine direction: every port replaced by its opposite."""
    return replace(paths, entry_port=topo.opposite_port(paths.entry_port))
