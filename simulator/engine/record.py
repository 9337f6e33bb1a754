"""What a run produced, as plain data: no SimPy objects, no live engine graph.

metrics, reports, traces and the validation harness read only this record.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine.collective import CollectiveId
from simulator.engine.gpu import Interval
from simulator.scenario import Scenario


@dataclass(frozen=True)
class CollectiveRecord:
    """One collective of one EP group. Arrays are indexed by EP rank (gpus[i] is its GPU)."""
    id: CollectiveId
    gpus: np.ndarray
    arrived_s: np.ndarray  # when each GPU joined
    start_s: float  # the last GPU joined (the collective's barrier)
    send_done_s: np.ndarray  # each GPU's last byte sent
    recv_done_s: np.ndarray  # each GPU's last byte received
    done_s: np.ndarray  # each GPU's part complete (sent and received)
    bytes_out: float  # bytes through GPU egress ports, all GPUs: every hop of a forwarded copy counts
    bytes_nvlink: float
    bytes_ib: float
    nvlink_bytes_per_gpu: np.ndarray  # egress bytes per GPU
    ib_bytes_per_gpu: np.ndarray
    payload_bytes: float = 0.0  # bytes delivered, all GPUs, each copy once (simulator/engine/paths.py)

    @property
    def kind(self) -> str:
        return self.id.kind


@dataclass(frozen=True)
class ChunkCounts:
    """Token counts of one (EP group, MoE layer, micro-batch, chunk), by EP rank and by expert."""
    recv_copies: np.ndarray  # [P] (token, expert) pairs each GPU's experts process
    recv_tokens: np.ndarray  # [P] distinct tokens each GPU receives (once per destination GPU)
    node_pairs: np.ndarray  # [P] (token, destination node) pairs each GPU sends, its own node included
    expert_tokens: np.ndarray  # [S] tokens routed to each physical expert slot (= experts without replicas)
    expert_compute_s: np.ndarray  # [P] forward seconds of each GPU's routed experts


@dataclass(frozen=True)
class PortRecord:
    """Every directed port of the topology (hardware/topology.py numbers them)."""
    port_class: np.ndarray  # index into hardware.topology.PORT_CLASSES
    peak_bytes_per_s: np.ndarray  # line rate
    capacity_bytes_per_s: np.ndarray  # achievable rate
    num_bytes: np.ndarray  # bytes carried
    busy_s: np.ndarray  # time it carried traffic


@dataclass(frozen=True)
class RunRecord:
    scenario: Scenario
    step_time_s: float
    intervals: list[list[Interval]]  # per GPU, in the order they ended
    collectives: dict[CollectiveId, CollectiveRecord]  # in the order they were first reached
    counts: dict[tuple[int, int, int, int], ChunkCounts]  # (ep group, moe layer, mb, chunk)
    ports: PortRecord
    expert_gpu: np.ndarray  # physical expert slot -> EP rank
    num_chunks: int
    tokens_per_batch_limit: int
    rounds: int
    compute_model: dict  # the compute model's description (provenance)
    has_spine: bool
    num_events: int
    network_solves: int
    task_spans: list[list[tuple[float, float]]] | None = None  # PP: per GPU, each task's (start, end)
    # op name -> {kernel class: fraction of the op's time} (simulator/workload/costs.py KERNEL_CLASSES)
    kernel_classes: dict[str, dict[str, float]] | None = None
    # expert_load.csv: per step, EP group, MoE layer and expert, its tokens and Load_e (simulator/steps.py)
    expert_load_rows: list[dict] | None = None
    # (ep group, moe layer) -> Placement: which logical expert each physical slot of ChunkCounts.expert_tokens holds
    placements: dict | None = None
    dropped_copies: int = 0  # routed (token, expert) copies dropped over expert capacity
    placement_reports: dict | None = None  # topology_aware: (ep group, moe layer) -> the solver's report
    ungated_copies: int = 0  # routing.threshold / trace: (token, expert) places left without an expert
    host: dict | None = None  # the host thread's launches and CPU time (simulator/engine/host.py); None: free

    @property
    def num_gpus(self) -> int:
        return len(self.intervals)
