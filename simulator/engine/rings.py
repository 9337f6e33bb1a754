"""Ring collectives over a group of GPUs (all-reduce, reduce-scatter, all-gather) as one flow, and
point-to-point transfers between pipeline stages.

NCCL's rings on a multi-node group: with k group members per node, NCCL runs its channels over
k rings that leave each node through different members' NICs, so in a bandwidth-optimal ring
schedule each member sends, of a buffer of S bytes (nccl-tests' bus-bandwidth accounting):

    all-reduce:                 2 (k - 1) / k x S over NVLink   +   2 (N - 1) / N x S / k over its NIC
    reduce-scatter, all-gather:   (k - 1) / k x S               +     (N - 1) / N x S / k

for N nodes; the two add up to 2 (n - 1) / n x S (resp. (n - 1) / n x S) with n = k N GPUs. An
intra-node hop goes to the next member on the same node, an inter-node hop to the member of the
same position on the next node (through the spine when the rails differ).

NCCL's tree all-reduce (`network.allreduce_algorithm: tree`; NCCL 2.4's double binary trees,
S. Jeaugey, "Massively Scale Your Deep Learning Training with NCCL 2.4", NVIDIA developer blog,
2019): inside a node a chain through its k members, between nodes two binary trees over the N
nodes, each carrying half the buffer, in which every node is interior in one tree and a leaf in the
other. Reducing up and broadcasting down, an interior node sends S/2 up and 2 x S/2 down in its
tree, a leaf S/2 up in the other: 2 S per node over its NICs, which NCCL's channels spread over the
members (2 S / k each, against the ring's 2 (N - 1) / N x S / k), and the chain's k - 1 links carry
S each way, 2 (k - 1) / k x S per member over NVLink as in the ring. Its latency is two passes of
the chain's k - 1 NVLink hops and the trees' depth, ceil(log2 N) IB hops, instead of the ring's
N - 1: the same bandwidth, logarithmic latency. NCCL implements trees for all-reduce only;
reduce-scatter and all-gather stay rings. `auto` picks per all-reduce, as NCCL's tuner does by
its own cost model, whichever of the two would finish sooner alone on the network.

A ring (or a pipelined tree) moves in lock-step: every member forwards what it received a moment
ago, so it progresses at the rate of its slowest link. epsim therefore makes the whole ring ONE
flow whose entries are all its members' ports; max-min sharing then slows the ring wherever any of
its links is contended (by another ring or by the all-to-all). The latency term is the ring's hop
latencies, one pass for reduce-scatter and all-gather, two for all-reduce: (k - 1) NVLink hops and
(N - 1) IB hops a pass.
"""
from __future__ import annotations

import math

import numpy as np

from hardware.topology import Topology
from simulator.engine.paths import Paths

PASSES = {"allreduce": 2, "reducescatter": 1, "allgather": 1}


def ring_layout(gpus: np.ndarray, topo: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(intra-node successor, inter-node successor, members on its node k, nodes N) of each member.

    A group with unequal members per node (the holders of a replicated expert) keeps the same
    accounting with its own node's k: a member's inter-node successor is the next node's member
    at its position modulo that node's count, and a node with fewer members spreads the same
    inter-node bytes over fewer NICs, so the ring moves at its sparsest node's rate."""
    gpus = np.asarray(gpus)
    node = topo.node_of(gpus)
    nodes, node_index = np.unique(node, return_inverse=True)
    num_nodes = len(nodes)
    counts = np.bincount(node_index)
    order = np.lexsort((gpus, node_index))  # members by (node, GPU)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(len(gpus), dtype=np.int64)
    slot[order] = np.arange(len(gpus)) - first[node_index[order]]  # a member's position on its node
    at = np.empty(len(gpus), dtype=np.int64)  # member index at (node, position), node by node
    at[first[node_index] + slot] = np.arange(len(gpus))
    k = counts[node_index]
    intra = at[first[node_index] + (slot + 1) % k]
    after = (node_index + 1) % num_nodes
    inter = at[first[after] + slot % counts[after]]
    return intra, inter, k, num_nodes


def idle_time_s(paths: Paths, topo: Topology) -> float:
    """A one-flow collective's time alone on an idle network: its busiest port's bytes at that
    port's achievable rate (the max-min rate of a lone flow), plus its path latency."""
    if not len(paths.entry_port):
        return 0.0
    load = np.bincount(paths.entry_port, weights=paths.entry_bytes, minlength=topo.num_ports)
    return float((load / topo.port_capacity_bytes_per_s()).max() + paths.pair_latency_s.max())


def ring_paths(op: str, gpus: np.ndarray, num_bytes: float, topo: Topology, algorithm: str = "ring") -> Paths:
    """The ring collective `op` of a num_bytes buffer over `gpus`, as one flow (index 0); an
    all-reduce with algorithm "tree" as NCCL's double binary tree (module docstring); "auto" as
    NCCL's tuner chooses, by the time each would take (NCCL: its own latency and bandwidth model
    per algorithm; epsim: the same network's ports and latencies, idle_time_s), the tree where it
    finishes sooner (small buffers over many nodes), else the ring. NCCL's protocols (LL, LL128,
    Simple) are not modelled."""
    if algorithm == "auto":
        if op != "allreduce":  # NCCL has trees for all-reduce only
            return ring_paths(op, gpus, num_bytes, topo)
        ring, tree = ring_paths(op, gpus, num_bytes, topo), ring_paths(op, gpus, num_bytes, topo, "tree")
        return tree if idle_time_s(tree, topo) < idle_time_s(ring, topo) else ring
    passes = PASSES[op]
    tree = algorithm == "tree" and op == "allreduce"
    intra, inter, k, num_nodes = ring_layout(gpus, topo)
    n = len(gpus)
    members = np.arange(n)
    nvlink_bytes = passes * (k - 1) / k * num_bytes
    if tree:
        nic_bytes = passes * num_bytes / k if num_nodes > 1 else np.zeros(n)
    else:
        nic_bytes = passes * (num_nodes - 1) / num_nodes * num_bytes / k
    ports, nbytes = [], []
    on = np.nonzero(nvlink_bytes > 0)[0]
    if len(on):
        ports += [topo.nvl_out(gpus[on]), topo.nvl_in(gpus[intra[on]])]
        nbytes += [nvlink_bytes[on]] * 2
    if num_nodes > 1 and nic_bytes.max() > 0:
        ports += [topo.nic_out(gpus), topo.nic_in(gpus[inter])]
        nbytes += [nic_bytes] * 2
        if topo.has_spine:
            rail, next_rail = topo.rail_of(gpus), topo.rail_of(gpus[inter])
            cross = rail != next_rail
            if (k == k[0]).all():  # every member sends the same: crossings per rail x bytes
                up = np.bincount(rail[cross], minlength=topo.spec.gpus_per_node) * nic_bytes[0]
                down = np.bincount(next_rail[cross], minlength=topo.spec.gpus_per_node) * nic_bytes[0]
            else:
                up = np.bincount(rail[cross], weights=nic_bytes[cross], minlength=topo.spec.gpus_per_node)
                down = np.bincount(next_rail[cross], weights=nic_bytes[cross], minlength=topo.spec.gpus_per_node)
            for port_of, load in ((topo.spine_up, up), (topo.spine_down, down)):
                used = np.nonzero(load)[0]
                ports.append(port_of(used))
                nbytes.append(load[used])
    port = np.concatenate(ports).astype(np.int64) if ports else np.zeros(0, dtype=np.int64)
    entry_bytes = np.concatenate(nbytes) if nbytes else np.zeros(0)
    spec = topo.spec
    hop_ib = spec.ib.latency_s if (topo.rail_of(gpus) == topo.rail_of(gpus[inter])).all() \
        else spec.ib_cross_rail_latency_s
    ib_hops = math.ceil(math.log2(num_nodes)) if tree else num_nodes - 1  # a tree's depth, a ring's length
    latency = passes * ((int(k.max()) - 1) * spec.nvlink.latency_s + ib_hops * hop_ib)
    if not len(port):  # nothing to move (an expert-TP group whose GPUs hold no expert): no flow, no wait
        empty = np.zeros(0, dtype=np.int64)
        return Paths(empty, empty, np.zeros(0), empty, empty, np.zeros(0))
    return Paths(np.zeros(len(port), dtype=np.int64), port, entry_bytes,
                 np.zeros(n, dtype=np.int64), members, np.full(n, latency), payload_bytes=n * float(num_bytes))


def p2p_paths(src: int, dst: int, num_bytes: float, topo: Topology) -> Paths:
    """One transfer from GPU src to GPU dst (member 0 to member 1): over NVLink inside a node, the
    two NICs (and the spine across rails when it is oversubscribed) between nodes."""
    if topo.node_of(src) == topo.node_of(dst):
        ports = [topo.nvl_out(src), topo.nvl_in(dst)]
    else:
        ports = [topo.nic_out(src), topo.nic_in(dst)]
        if topo.has_spine and topo.rail_of(src) != topo.rail_of(dst):
            ports += [topo.spine_up(topo.rail_of(src)), topo.spine_down(topo.rail_of(dst))]
    latency = topo.pair_latency_s(np.array([src]), np.array([dst]))
    return Paths(np.zeros(len(ports), dtype=np.int64), np.array(ports, dtype=np.int64), np.full(len(ports), num_bytes),
                 np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), latency, payload_bytes=float(num_bytes))
