"""Cluster topology: NVSwitch nodes, one NIC per GPU on a rail-optimised IB fabric, optional spine.

Every directed port that can limit bandwidth gets an index, so a flow's path is a list of port
indices and the network model can share port capacity between flows:

    [0, G)          NVLink out of GPU g (into the NVSwitch)
    [G, 2G)         NVLink in of GPU g
    [2G, 3G)        NIC out of GPU g
    [3G, 4G)        NIC in of GPU g
    [4G, 4G+R)      spine uplinks of rail r's leaf   (only when the spine is oversubscribed)
    [4G+R, 4G+2R)   spine downlinks into rail r's leaf

GPU g sits on node g // gpus_per_node with local rank (= rail) g % gpus_per_node. Two GPUs of the
same local rank share a leaf switch; other pairs cross the spine.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hardware.spec import ClusterSpec

PORT_CLASSES = ("nvlink", "ib", "spine")


@dataclass(frozen=True)
class Topology:
    spec: ClusterSpec

    @property
    def num_gpus(self) -> int:
        return self.spec.num_gpus

    @property
    def has_spine(self) -> bool:
        # A non-blocking spine carries every rail's NIC traffic at line rate: it can never be
        # the bottleneck, so it gets no ports (and costs no work in the fair-share solver).
        return self.spec.spine_oversubscription > 1.0

    @property
    def num_ports(self) -> int:
        rails = self.spec.gpus_per_node if self.has_spine else 0
        return 4 * self.num_gpus + 2 * rails

    def node_of(self, gpu: np.ndarray | int):
        return np.asarray(gpu) // self.spec.gpus_per_node

    def rail_of(self, gpu: np.ndarray | int):
        return np.asarray(gpu) % self.spec.gpus_per_node

    def nvl_out(self, gpu):
        return np.asarray(gpu)

    def nvl_in(self, gpu):
        return self.num_gpus + np.asarray(gpu)

    def nic_out(self, gpu):
        return 2 * self.num_gpus + np.asarray(gpu)

    def nic_in(self, gpu):
        return 3 * self.num_gpus + np.asarray(gpu)

    def spine_up(self, rail):
        return 4 * self.num_gpus + np.asarray(rail)

    def spine_down(self, rail):
        return 4 * self.num_gpus + self.spec.gpus_per_node + np.asarray(rail)

    @cached_property
    def _opposite(self) -> np.ndarray:
        g, r = self.num_gpus, self.spec.gpus_per_node
        gpu = np.arange(g)
        opposite = np.empty(self.num_ports, dtype=np.int64)
        opposite[self.nvl_out(gpu)], opposite[self.nvl_in(gpu)] = self.nvl_in(gpu), self.nvl_out(gpu)
        opposite[self.nic_out(gpu)], opposite[self.nic_in(gpu)] = self.nic_in(gpu), self.nic_out(gpu)
        if self.has_spine:
            rail = np.arange(r)
            opposite[self.spine_up(rail)], opposite[self.spine_down(rail)] = self.spine_down(rail), self.spine_up(rail)
        return opposite

    def opposite_port(self, ports: np.ndarray) -> np.ndarray:
        """Each port's other direction (out <-> in, spine up <-> down): a combine's paths are its
        dispatch's, mirrored."""
        return self._opposite[np.asarray(ports)]

    @cached_property
    def _port_gpu(self) -> np.ndarray:
        g = self.num_gpus
        owner = np.full(self.num_ports, -1, dtype=np.int64)
        owner[: 4 * g] = np.tile(np.arange(g), 4)
        return owner

    def port_gpu(self) -> np.ndarray:
        """The GPU each NVLink / NIC port belongs to; -1 for spine ports."""
        return self._port_gpu

    def port_class(self) -> np.ndarray:
        """Index into PORT_CLASSES for every port."""
        g = self.num_gpus
        cls = np.empty(self.num_ports, dtype=np.int8)
        cls[: 2 * g] = 0
        cls[2 * g: 4 * g] = 1
        cls[4 * g:] = 2
        return cls

    def is_gpu_egress(self, ports: np.ndarray) -> np.ndarray:
        """True for ports that carry bytes out of a GPU (NVLink out, NIC out)."""
        g = self.num_gpus
        return (ports < g) | ((ports >= 2 * g) & (ports < 3 * g))

    def port_peak_bytes_per_s(self) -> np.ndarray:
        """Line rate of every port (what utilisation is measured against)."""
        g = self.num_gpus
        peak = np.empty(self.num_ports)
        peak[: 2 * g] = self.spec.nvlink.bandwidth_bytes_per_s
        peak[2 * g: 4 * g] = self.spec.ib.bandwidth_bytes_per_s
        if self.has_spine:
            peak[4 * g:] = (self.spec.num_nodes * self.spec.ib.bandwidth_bytes_per_s
                            / self.spec.spine_oversubscription)
        return peak

    def port_capacity_bytes_per_s(self) -> np.ndarray:
        """Achievable rate of every port (line rate x the link class's efficiency)."""
        g = self.num_gpus
        cap = self.port_peak_bytes_per_s()
        cap[: 2 * g] *= self.spec.nvlink.efficiency
        cap[2 * g:] *= self.spec.ib.efficiency
        return cap

    def pair_latency_s(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """One-hop latency between GPU pairs: NVLink inside a node, IB (same leaf or across) outside."""
        same_node = self.node_of(src) == self.node_of(dst)
        same_rail = self.rail_of(src) == self.rail_of(dst)
        ib = np.where(same_rail, self.spec.ib.latency_s, self.spec.ib_cross_rail_latency_s)
        return np.where(same_node, self.spec.nvlink.latency_s, ib)

    def bandwidth_matrix(self, gpus: np.ndarray | None = None) -> np.ndarray:
        """B_ij of seed 1.2: achievable bytes/s of the bottleneck port class between GPUs i and j."""
        gpus = np.arange(self.num_gpus) if gpus is None else np.asarray(gpus)
        src, dst = np.meshgrid(gpus, gpus, indexing="ij")
        same_node = self.node_of(src) == self.node_of(dst)
        return np.where(same_node, self.spec.nvlink.achievable_bytes_per_s,
                        self.spec.ib.achievable_bytes_per_s)

    def latency_matrix(self, gpus: np.ndarray | None = None) -> np.ndarray:
        """L_ij of seed 1.2, seconds; zero on the diagonal."""
        gpus = np.arange(self.num_gpus) if gpus is None else np.asarray(gpus)
        src, dst = np.meshgrid(gpus, gpus, indexing="ij")
        lat = self.pair_latency_s(src, dst)
        return np.where(src == dst, 0.0, lat)
