"""Fluid network: flows share port capacity max-min fairly; rates change only when flows start or end.

Flows are added in batches (one batch per collective). After any change at the current instant the
rates are solved once (changes at the same instant are batched by a zero-delay update), and one
timer is set for the next completion. A solve covers only the flows connected, through shared
ports, to a port whose flows changed (fairshare.resolve_reached): the collectives of other EP
groups, pipeline stages or replicas on other ports keep their rates. Flows within COALESCE of their
elapsed time from finishing complete together: this bounds the number of re-solves per
collective, and ends such a flow early by at most COALESCE of its duration.

Every update admits a batch or finishes a flow (the timer is set for the next completion), so
updates are bounded by batches + flows admitted; past twice that (time that no longer advances at a
huge clock, a NaN rate) the network raises SolverStalled naming the collectives in flight.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import simpy

from hardware.topology import Topology
from simulator.engine.fairshare import SolverStalled, resolve_reached
from simulator.engine.fairshare_kernel import component_labels, drop_flows

COALESCE = 1e-3
UPDATE_SLACK = 16  # updates allowed beyond 2 x (batches + flows): a margin, never needed


@dataclass
class FlowBatch:
    """Flows of one collective: flow i has entries (port, bytes) in the CSR-like arrays below."""
    entry_flow: np.ndarray  # int, flow index in 0..num_flows-1
    entry_port: np.ndarray  # int, global port index
    entry_bytes: np.ndarray  # float, bytes this flow puts through that port
    num_flows: int
    on_done: Callable[[np.ndarray, float], None]  # (finished flow indices, time) -> None
    # Useful bytes per byte of port capacity the protocol uses (NCCL all-to-all < 1): the flows load
    # their ports 1/efficiency times their own rate; bytes carried are still the useful bytes.
    protocol_efficiency: float = 1.0
    # Each flow's own rate cap in its measure's bytes per second (the SMs its kernel holds, DeepEP
    # normal: simulator/wire.py); inf: none
    rate_cap: float = np.inf
    flow_size: np.ndarray = field(init=False)  # the flow's own measure: its largest per-port bytes

    def __post_init__(self):
        self.flow_size = np.zeros(self.num_flows)
        np.maximum.at(self.flow_size, self.entry_flow, self.entry_bytes)


class Network:
    """Per-direction ports of a topology, shared by every active flow."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.capacity = topology.port_capacity_bytes_per_s()
        n = topology.num_ports
        self.port_bytes = np.zeros(n)
        self.port_busy_s = np.zeros(n)
        self.num_solves = 0
        self.num_updates = 0
        self.num_flows_admitted = 0
        self._batches: list[FlowBatch | None] = []  # None once all its flows have finished
        self._flows_left: list[int] = []  # per batch, its admitted flows still running
        self._pending: list[FlowBatch] = []
        # active flow state, concatenated over batches
        self._remaining = np.zeros(0)
        self._rate = np.zeros(0)
        self._cap = np.zeros(0)  # per active flow, its own rate cap (inf: none)
        self._started = np.zeros(0)
        self._batch_of = np.zeros(0, dtype=np.int64)
        self._local = np.zeros(0, dtype=np.int64)
        self._e_flow = np.zeros(0, dtype=np.int64)
        self._e_port = np.zeros(0, dtype=np.int64)
        self._e_weight = np.zeros(0)
        # Components of the flow-port graph (fairshare.resolve_reached): a label per active flow and
        # per port, exact after every admission and every finished collective, and in between a
        # coarser partition (a flow that ends may split its component; the labels keep it whole)
        self._label = np.zeros(0, dtype=np.int64)
        self._port_label = np.full(n, -1, dtype=np.int64)
        self._dirty = np.zeros(n, dtype=bool)  # ports whose flows started or ended since the last solve
        # active entries per port: every active flow has a positive rate once solved, so a port is
        # busy exactly while it has one (the bincount of their loads would say the same, per entry)
        self._port_entries = np.zeros(n, dtype=np.int64)
        self.num_flows_solved = 0
        self._last_s = 0.0
        self._generation = 0
        self._update_scheduled = False

    # -- public -----------------------------------------------------------------------------
    def add(self, batch: FlowBatch) -> None:
        """Start a batch of flows now. Zero-flow batches complete at once."""
        if not (batch.entry_bytes > 0).any():
            batch.on_done(np.zeros(0, dtype=np.int64), self.env.now)
            return
        np.add.at(self.port_bytes, batch.entry_port, batch.entry_bytes)
        self._pending.append(batch)
        self._schedule_update(0.0)

    # -- internals ----------------------------------------------------------------------------
    def _schedule_update(self, delay_s: float) -> None:
        if delay_s == 0.0:
            if self._update_scheduled:
                return
            self._update_scheduled = True
        self._generation += 1
        gen = self._generation
        ev = self.env.timeout(delay_s)
        ev.callbacks.append(lambda _ev: self._update(gen))

    def _advance(self, now: float) -> None:
        dt = now - self._last_s
        if dt > 0 and len(self._rate):
            self._remaining -= self._rate * dt
            self.port_busy_s[self._port_entries > 0] += dt
        self._last_s = now

    def _update(self, gen: int) -> None:
        if gen != self._generation:
            return  # a newer update superseded this timer
        self._update_scheduled = False
        self.num_updates += 1
        if self.num_updates > self.update_bound:
            self._stalled()
        now = self.env.now
        self._advance(now)
        finished = self._remaining <= COALESCE * (now - self._started) * np.maximum(self._rate, 0) + 1e-6
        if finished.any():
            self._finish(finished, now)
        if self._pending:
            self._admit(now)
        if len(self._remaining):
            touched = self._port_label[self._dirty]
            reached = np.isin(self._label, touched[touched >= 0])
            try:
                self.num_flows_solved += resolve_reached(self._e_flow, self._e_port, self._e_weight, self.capacity,
                                                         self._rate, self._cap, reached)
            except SolverStalled as exc:
                raise SolverStalled(f"{exc}; in flight: {self._describe_active()}", self._active()) from None
            self._dirty[:] = False
            self.num_solves += 1
            self._schedule_update(float(np.min(self._remaining / self._rate)))

    @property
    def update_bound(self) -> int:
        """Updates the batches and flows admitted so far can need, with a factor 2 and UPDATE_SLACK."""
        return 2 * (len(self._batches) + len(self._pending) + self.num_flows_admitted) + UPDATE_SLACK

    def _active(self) -> tuple[FlowBatch, ...]:
        return tuple(self._batches[b] for b in np.unique(self._batch_of)) + tuple(self._pending)

    def _describe_active(self) -> str:
        active = self._active()
        return f"{len(active)} collective(s), the first of GPUs {describe_gpus(active[0]) if active else '-'}"

    def _stalled(self) -> None:
        raise SolverStalled(f"the network made {self.num_updates} rate updates at t = {self.env.now!r} s for "
                            f"{len(self._batches)} collectives and {self.num_flows_admitted} flows (bound "
                            f"{self.update_bound}); in flight: {self._describe_active()}", self._active())

    def _finish(self, finished: np.ndarray, now: float) -> None:
        # the finished flows' ports are dirty (the others through them speed up)
        self._e_flow, self._e_port, self._e_weight = drop_flows(finished, self._e_flow, self._e_port, self._e_weight,
                                                                self._dirty, self._port_entries)
        done_batches = self._batch_of[finished]
        done_local = self._local[finished]
        keep = ~finished
        self._remaining = self._remaining[keep]
        self._rate = self._rate[keep]
        self._cap = self._cap[keep]
        self._started = self._started[keep]
        self._batch_of = self._batch_of[keep]
        self._local = self._local[keep]
        self._label = self._label[keep]
        ended = False
        for b in np.unique(done_batches):
            batch = self._batches[b]
            mine = done_local[done_batches == b]
            self._flows_left[b] -= len(mine)
            if self._flows_left[b] == 0:
                self._batches[b] = None  # its entry arrays are the largest thing a finished collective held
                ended = True
            batch.on_done(mine, now)
        if ended:  # a whole collective left: the components it joined may now be apart
            self._relabel()

    def _relabel(self) -> None:
        self._label, self._port_label = component_labels(self._e_flow, self._e_port, len(self._remaining),
                                                         len(self.capacity))

    def _admit(self, now: float) -> None:
        offset = len(self._remaining)
        flows, ports, weights, remaining, batch_of, local, caps = [], [], [], [], [], [], []
        for batch in self._pending:
            b = len(self._batches)
            self._batches.append(batch)
            # Flows that carry no bytes are never admitted: their owner knows they are done.
            present = np.nonzero(batch.flow_size > 0)[0]
            self._flows_left.append(len(present))
            index = np.full(batch.num_flows, -1)
            index[present] = np.arange(len(present)) + offset
            keep = batch.entry_bytes > 0
            flows.append(index[batch.entry_flow[keep]])
            ports.append(batch.entry_port[keep])
            weights.append(batch.entry_bytes[keep] / batch.flow_size[batch.entry_flow[keep]]
                           / batch.protocol_efficiency)
            remaining.append(batch.flow_size[present])
            caps.append(np.full(len(present), batch.rate_cap))
            batch_of.append(np.full(len(present), b))
            local.append(present)
            offset += len(present)
        self._pending = []
        self.num_flows_admitted += offset - len(self._remaining)
        self._e_flow = np.concatenate([self._e_flow, *flows])
        self._e_port = np.concatenate([self._e_port, *ports])
        self._e_weight = np.concatenate([self._e_weight, *weights])
        self._remaining = np.concatenate([self._remaining, *remaining])
        self._cap = np.concatenate([self._cap, *caps])
        admitted = sum(len(r) for r in remaining)
        self._started = np.concatenate([self._started, np.full(admitted, now)])
        self._rate = np.concatenate([self._rate, np.zeros(admitted)])  # solved next, with their ports' flows
        for p in ports:
            self._dirty[p] = True
            self._port_entries += np.bincount(p, minlength=len(self.capacity))
        self._relabel()  # the new flows may join components
        self._batch_of = np.concatenate([self._batch_of, *batch_of])
        self._local = np.concatenate([self._local, *local])


def describe_gpus(batch: FlowBatch) -> str:
    """The GPUs of the collective a batch belongs to, when its callback's owner says (Collective.group)."""
    group = getattr(getattr(batch.on_done, "__self__", None), "group", None)
    return "?" if group is None else f"{int(group[0])}..{int(group[-1])} ({len(group)})"
