"""Frozen hardware specs in SI units, built from preset fields (YAML units) at the edge."""
from __future__ import annotations

from dataclasses import dataclass

from hardware.units import GB, GIB, TB, TFLOP, US, gbit_per_s_to_bytes_per_s


@dataclass(frozen=True, slots=True)
class GPUSpec:
    name: str
    peak_bf16_flop_per_s: float
    peak_fp8_flop_per_s: float
    hbm_bytes: float
    hbm_bytes_per_s: float
    num_sms: int
    matmul_efficiency: float  # achieved fraction of peak for large GEMMs
    memory_efficiency: float  # achieved fraction of HBM bandwidth for streaming kernels
    kernel_launch_s: float

    def peak_flop_per_s(self, dtype: str) -> float:
        if dtype == "bf16":
            return self.peak_bf16_flop_per_s
        if dtype == "fp8":
            return self.peak_fp8_flop_per_s
        raise KeyError(f"unknown compute dtype {dtype!r}; valid: bf16, fp8")


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of one link class. `bandwidth_bytes_per_s` is the line rate (the 'peak' that
    utilisation is measured against); `efficiency` scales it to what collectives achieve."""
    bandwidth_bytes_per_s: float
    efficiency: float
    latency_s: float

    @property
    def achievable_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.efficiency


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    gpu: GPUSpec
    num_nodes: int
    gpus_per_node: int
    nvlink: LinkSpec  # per GPU NVSwitch port, per direction
    ib: LinkSpec  # per GPU NIC, per direction, rail-optimised fabric
    ib_cross_rail_latency_s: float  # a path through the spine (other rail or other leaf)
    spine_oversubscription: float  # 1 = non-blocking spine
    # Software-stack terms of this system, each fitted on one named validation case (see presets):
    ll_kernel_overhead_s: float = 0.0  # per DeepEP low-latency call, beyond bandwidth and latency
    direct_alltoall_efficiency: float = 1.0  # NCCL all-to-all rate / the link's achievable rate
    nccl_sms: int = 0  # SMs NCCL's ring collectives (gradient and parameter sync) hold while running
    # The host CPU (simulator/engine/host.py): CPU time to issue one kernel eagerly, and one CUDA graph
    host_launch_s: float = 0.0
    graph_launch_s: float = 0.0
    # bytes per second one SM copies in DeepEP's normal kernels (inf: the SMs never bound the rate)
    deepep_bytes_per_s_per_sm: float = float("inf")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


def cluster_from_fields(name: str, num_nodes: int, fields: dict) -> ClusterSpec:
    """Convert validated preset fields (GB/s, TFLOPS, us, Gbit/s; HBM in GiB) to an SI ClusterSpec."""
    gpu = GPUSpec(
        name=fields["gpu_name"],
        peak_bf16_flop_per_s=fields["peak_bf16_tflops"] * TFLOP,
        peak_fp8_flop_per_s=fields["peak_fp8_tflops"] * TFLOP,
        hbm_bytes=fields["hbm_gb"] * GIB,
        hbm_bytes_per_s=fields["hbm_tb_per_s"] * TB,
        num_sms=fields["num_sms"],
        matmul_efficiency=fields["matmul_efficiency"],
        memory_efficiency=fields["memory_efficiency"],
        kernel_launch_s=fields["kernel_launch_us"] * US,
    )
    return ClusterSpec(
        name=name,
        gpu=gpu,
        num_nodes=num_nodes,
        gpus_per_node=fields["gpus_per_node"],
        nvlink=LinkSpec(fields["nvlink_gb_per_s"] * GB, fields["nvlink_efficiency"],
                        fields["nvlink_latency_us"] * US),
        ib=LinkSpec(gbit_per_s_to_bytes_per_s(fields["ib_gbit_per_s"]), fields["ib_efficiency"],
                    fields["ib_latency_us"] * US),
        ib_cross_rail_latency_s=fields["ib_cross_leaf_latency_us"] * US,
        spine_oversubscription=fields["spine_oversubscription"],
        ll_kernel_overhead_s=fields["ll_kernel_overhead_us"] * US,
        direct_alltoall_efficiency=fields["direct_alltoall_efficiency"],
        nccl_sms=fields["nccl_sms"],
        host_launch_s=fields["host_launch_us"] * US,
        graph_launch_s=fields["graph_launch_us"] * US,
        deepep_bytes_per_s_per_sm=(fields["deepep_gb_per_s_per_sm"] * GB if fields["deepep_gb_per_s_per_sm"]
                                   else float("inf")),
    )
