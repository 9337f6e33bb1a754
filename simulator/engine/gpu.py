"""A GPU: the seed's three CUDA streams (compute, send, receive), one for the data-parallel
collectives (NCCL's stream for gradient and parameter buckets) and one for pipeline sends, as
SimPy resources, and its SMs.

Communication kernels may hold SMs while they run (DeepEP normal mode ~20 of 132, NCCL ~16);
compute that overlaps them runs at (SMs - held) / SMs of its full rate. `overlap: none` makes the
streams one resource, so nothing overlaps.
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple

import simpy
from simpy.events import PENDING

from simulator.engine.program import OpId

COMPUTE, SEND, RECEIVE, DP_COMM, PP_COMM, TP_COMM = "compute", "send", "receive", "dp", "pp", "tp"


class Interval(NamedTuple):
    """One kernel, or this GPU's part of a collective, on one stream."""
    stream: str
    start_s: float
    end_s: float
    op: OpId


class Stream:
    """One stream: its ops run one at a time, in the order they ask for it. A free stream is taken
    without an event (simpy.Resource schedules one even then: a quarter of a compute op's events)."""
    __slots__ = ("env", "busy", "waiters")

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.busy = False
        self.waiters: deque = deque()

    def acquire(self) -> simpy.Event | None:
        """None: taken now; else the event that fires when it is this caller's turn."""
        if not self.busy:
            self.busy = True
            return None
        ev = self.env.event()
        self.waiters.append(ev)
        return ev

    def release(self) -> None:
        if self.waiters:
            self.waiters.popleft().succeed()  # handed straight to the next caller
        else:
            self.busy = False


class FirstOf(simpy.Event):
    """Succeeds once either of two events is processed: simpy's `a | b` in the same event order
    (scheduled from inside the first one's callbacks), without the Condition's value bookkeeping,
    which was a fifth of a compute op's cost; which of them was processed, the waiter reads off
    the events (`callbacks is None`), as `a | b`'s value lists them. Its callback is taken off the
    other."""

    def __init__(self, env: simpy.Environment, a: simpy.Event, b: simpy.Event):
        self.env, self.callbacks, self._value = env, [], PENDING
        self._a, self._b, self._fire_cb = a, b, self._fire
        a.callbacks.append(self._fire_cb)
        b.callbacks.append(self._fire_cb)

    def _fire(self, event: simpy.Event) -> None:
        if self._value is not PENDING:
            return
        other = self._b if event is self._a else self._a
        if other.callbacks is not None:
            other.callbacks.remove(self._fire_cb)
        self._ok, self._value = True, None
        self.env.schedule(self)


class GPU:
    def __init__(self, env: simpy.Environment, index: int, num_sms: int, overlap: bool):
        self.env = env
        self.index = index
        self.num_sms = num_sms
        compute = Stream(env)
        self.streams = {COMPUTE: compute,
                        SEND: Stream(env) if overlap else compute,
                        RECEIVE: Stream(env) if overlap else compute,
                        DP_COMM: Stream(env) if overlap else compute,
                        PP_COMM: Stream(env) if overlap else compute,
                        TP_COMM: Stream(env) if overlap else compute}
        self.sms_held = 0
        # Collectives enter each comm stream in one static order, the same on every GPU, as a real
        # program enqueues them; otherwise two GPUs could each hold a stream for a collective the
        # other has not reached, and deadlock.
        self._turn = {SEND: 0, RECEIVE: 0, TP_COMM: 0}
        self._turn_events: dict[tuple[str, int], simpy.Event] = {}
        self._rate_changed = env.event()
        self.intervals: list[Interval] = []  # every op this GPU ran, in the order they ended

    @property
    def compute_rate(self) -> float:
        return max(self.num_sms - self.sms_held, 1) / self.num_sms

    def _set_sms(self, delta: int) -> None:
        if delta == 0:
            return
        self.sms_held += delta
        changed, self._rate_changed = self._rate_changed, self.env.event()
        changed.succeed()

    def compute(self, work_s: float, op: OpId, not_before: float | None = None):
        """Run a kernel needing work_s seconds at full SM rate; takes longer while comm holds SMs.
        not_before: the op's last kernel is issued then (simulator/engine/host.py): the stream is not
        free before it, and the time past the op's own work is idle, not compute."""
        if work_s <= 0:
            return
        stream = self.streams[COMPUTE]
        turn = stream.acquire()
        if turn is not None:
            yield turn
        start = self.env.now
        remaining = work_s
        while True:
            rate = self.compute_rate
            t0 = self.env.now
            finish = self.env.timeout(remaining / rate)
            yield FirstOf(self.env, finish, self._rate_changed)
            if finish.callbacks is None:  # processed, even if the rate changed first that instant (as `a | b`)
                break
            remaining -= (self.env.now - t0) * rate
        self.intervals.append(Interval(COMPUTE, start, self.env.now, op))
        if not_before is not None and not_before > self.env.now:  # the stream idles for the host
            yield self.env.timeout(not_before - self.env.now)
        stream.release()

    def communicate(self, stream: str, seq: int | None, arrive, comm_sms: int, op: OpId):
        """Run this GPU's part of a collective on `stream` as its seq-th collective there (None: no
        order enforced); `arrive()` joins the collective and returns this GPU's done event."""
        if seq is not None and self._turn[stream] != seq:
            turn = self.env.event()
            self._turn_events[stream, seq] = turn
            yield turn
        lane = self.streams[stream]
        turn = lane.acquire()
        if turn is not None:
            yield turn
        start = self.env.now
        self._set_sms(comm_sms)
        yield arrive()
        self._set_sms(-comm_sms)
        self.intervals.append(Interval(stream, start, self.env.now, op))
        lane.release()
        if seq is not None:
            self._turn[stream] += 1
            nxt = self._turn_events.pop((stream, self._turn[stream]), None)
            if nxt is not None:
                nxt.succeed()
