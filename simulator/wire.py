"""What crosses the wire: bytes per token by dtype, and the all-to-all algorithms as data.

This sits below both the workload (receive buffers are sized in wire bytes) and the engine (which
builds each algorithm's paths); it imports neither.

Algorithms (CONTRACT network.all_to_all):
- direct: once per distinct destination GPU over its own links: NVLink inside a node, the GPU's
  NIC outside (through the spine when the rails differ). NCCL all-to-all as Megatron uses it.
- hierarchical (DeepEP normal): once per distinct destination node over IB to the GPU with the
  owner's local rank there, then NVLink-forwarded once per distinct destination GPU in that node.
  Every copy, a GPU's own included, passes the NVLink-buffer stage at the NVLink port's rate.
- low_latency (DeepEP LL): one message per (token, expert) pair straight to the expert's GPU,
  holding no SMs and sending without a notify round; the rows arrive grouped by expert, so the
  experts run without permute / un-permute kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

from hardware.spec import ClusterSpec

FP8_SCALE_GROUP = 128  # DeepEP / DeepSeek FP8: one FP32 scale per 128 hidden values
FP8_SCALE_BYTES = 4
WIRE_DTYPES = ("fp8", "bf16")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2}  # a value of an unscaled dtype: gradients, activations, parameters


@dataclass(frozen=True)
class AllToAll:
    """How one all-to-all algorithm moves tokens; the engine reads these facts, nothing else."""
    name: str
    route: str  # path builder: "direct" (own links) or "hierarchical" (IB to the same rail, then NVLink)
    per_expert_copy: bool  # one message per (token, expert) pair; False: one per distinct destination GPU
    own_copies_cross_ports: bool  # a GPU's tokens for its own experts pass its NVLink ports
    notify_round: bool  # a count exchange (one path latency) precedes the first byte
    notify_crosses_rails: bool  # ... and, across nodes, it goes through the spine
    holds_sms: bool  # the kernels hold network.comm_sms SMs while in flight
    message_header_bytes: int  # per message, beyond the token's hidden vector
    efficiency_field: str | None  # ClusterSpec field: useful bytes per byte of port capacity
    call_overhead_field: str | None  # ClusterSpec field: per-call software overhead, seconds
    # the host must know the received counts before it can issue the forward dispatch, and waits
    # for the GPU to produce them (simulator/engine/host.py)
    host_sync: bool = False
    # ClusterSpec field: bytes per second one SM of the kernel copies; each token owner's flow is
    # capped at comm_sms x that (its busiest port's rate); None: the SMs do not bound the rate
    sm_rate_field: str | None = None
    # the routed experts permute the received rows by expert before their GEMMs and un-permute them
    # before the combine; False where the kernels deliver the rows grouped by local expert and the
    # combine reduces each token's copies with their weights itself
    permutes: bool = True

    def rate_cap(self, cluster: ClusterSpec, comm_sms: int) -> float:
        """Each flow's own rate cap, bytes per second (inf: none)."""
        per_sm = getattr(cluster, self.sm_rate_field) if self.sm_rate_field else float("inf")
        return comm_sms * per_sm if per_sm != float("inf") else float("inf")  # never 0 x inf

    def efficiency(self, cluster: ClusterSpec) -> float:
        return getattr(cluster, self.efficiency_field) if self.efficiency_field else 1.0

    def setup_s(self, cluster: ClusterSpec, spans_nodes: bool) -> float:
        """From the last GPU joining to the first byte: the comm kernel's launch, plus the notify
        round that exchanges per-destination counts (one path latency), or, without one, the
        system's fitted per-call overhead (hardware.ll_kernel_overhead_us for DeepEP LL)."""
        launch = cluster.gpu.kernel_launch_s
        if not self.notify_round:
            return launch + (getattr(cluster, self.call_overhead_field) if self.call_overhead_field else 0.0)
        if spans_nodes:
            return launch + (cluster.ib_cross_rail_latency_s if self.notify_crosses_rails else cluster.ib.latency_s)
        return launch + cluster.nvlink.latency_s


ALL_TO_ALL = {
    # NCCL all-to-all as Megatron-Core's alltoall token dispatcher drives it: the permuted tokens,
    # one copy per (token, expert) pair, no dedupe per destination GPU
    "direct": AllToAll("direct", route="direct", per_expert_copy=True, own_copies_cross_ports=False,
                       notify_round=True, notify_crosses_rails=True, holds_sms=True, message_header_bytes=0,
                       efficiency_field="direct_alltoall_efficiency", call_overhead_field=None,
                       # Megatron-Core's alltoall dispatcher: the per-expert counts are all-gathered, copied
                       # to the host and synchronised on (token_dispatcher.py, d2h_event.synchronize())
                       host_sync=True),
    # DeepEP's normal kernels address a GPU's own receive buffer like any peer's: its own tokens
    # pass through the same NVLink-buffer stage, and the achievable rate the README quotes
    # (~160 GB/s on H800) counts them.
    "hierarchical": AllToAll("hierarchical", route="hierarchical", per_expert_copy=False,
                             own_copies_cross_ports=True, notify_round=True, notify_crosses_rails=False,
                             holds_sms=True, message_header_bytes=0, efficiency_field=None,
                             # DeepEP normal dispatch: the CPU waits for the notify kernel's receive counts
                             # to size the receive tensors (DeepEP README, 'CPU-GPU synchronisation')
                             call_overhead_field=None, host_sync=True,
                             sm_rate_field="deepep_bytes_per_s_per_sm"),
    # DeepEP LL FP8 message: hidden + hidden/128 x 4 scale bytes + 16 (7408 B for hidden 7168). Its
    # dispatch returns the rows as [num_local_experts, max tokens x ranks, hidden], the masked
    # grouped GEMM's layout, and its combine reduces each token's copies with their top-k weights
    # (deep_ep/buffer.py, low_latency_dispatch / low_latency_combine): no permute kernels
    "low_latency": AllToAll("low_latency", route="direct", per_expert_copy=True, own_copies_cross_ports=False,
                            notify_round=False, notify_crosses_rails=False, holds_sms=False,
                            message_header_bytes=16, efficiency_field=None,
                            call_overhead_field="ll_kernel_overhead_s", permutes=False),
}


def algorithm(name: str) -> AllToAll:
    try:
        return ALL_TO_ALL[name]
    except KeyError:
        raise KeyError(f"unknown all-to-all algorithm {name!r}; valid: {', '.join(ALL_TO_ALL)}") from None


def token_bytes(dtype: str, hidden_size: int, all_to_all: str) -> float:
    """Bytes one token's hidden vector costs on the wire: BF16 2 B per value; FP8 1 B per value
    plus its per-128 FP32 scales, plus the algorithm's per-message header. (DeepEP's LL BF16
    messages carry the 16 B header too, which is not counted here: 0.1 % of 2 x hidden.)"""
    header = algorithm(all_to_all).message_header_bytes
    if dtype == "bf16":
        return 2.0 * hidden_size
    if dtype != "fp8":
        raise KeyError(f"unknown wire dtype {dtype!r}; valid: {', '.join(WIRE_DTYPES)}")
    scales = hidden_size / FP8_SCALE_GROUP * FP8_SCALE_BYTES
    return hidden_size + scales + header
