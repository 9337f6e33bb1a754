"""Where a run's wall time goes, by phase, for benchmarks/scale.py: exclusive perf_counter
accumulators wrapped around the functions of each phase for the duration of one measured run.

The engine carries no timing code: `measured_phases()` swaps timed wrappers in for the phase
functions while its block runs and restores them after, so runs outside the benchmark pay nothing.
A wrapper's time is exclusive of the wrapped calls it makes itself (a network update's fair-share
solve counts as a solve, not as bookkeeping). The wrappers cost about a microsecond per call; the
phases they wrap are numpy calls of tens of microseconds or more.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

PHASES = ("routing", "traffic", "solves", "bookkeeping")


def _targets():
    """(phase, owner, attribute name): the functions whose time is each phase's."""
    from simulator.engine import collective, network, run
    from simulator.workload import build, placement, routing

    return [
        ("routing", routing.Router, "route"),
        ("routing", placement.Placement, "slots_of"),
        ("routing", build, "drop_over_capacity"),
        ("traffic", build, "micro_batch_traffic"),
        ("solves", network, "resolve_reached"),
        ("bookkeeping", network.Network, "add"),
        ("bookkeeping", network.Network, "_update"),
        ("bookkeeping", collective.Collective, "_launch"),
        ("bookkeeping", collective.Collective, "_flows_done"),
        ("bookkeeping", run, "build_paths"),
        ("bookkeeping", run, "mirrored"),
    ]


@contextmanager
def measured_phases():
    """Yields {phase: seconds}, filled as the block runs, and "build_wall": the wall time of the
    workload builds. Micro-batches route and count on several threads (simulator/workload/build.py),
    so routing and traffic are seconds summed over those threads, and may add up to more than the
    build's wall time."""
    totals = dict.fromkeys(PHASES, 0.0)
    totals["build_wall"] = 0.0
    lock = threading.Lock()
    local = threading.local()  # per thread, per open call: the time its timed callees took

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            stack = local.__dict__.setdefault("stack", [0.0])
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = stack.pop()
                with lock:
                    totals[phase] += elapsed - inner
                stack[-1] += elapsed
        return wrapper

    def walled(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals["build_wall"] += time.perf_counter() - t0
        return wrapper

    from simulator.engine import run

    saved = [(run, "build_workload", run.__dict__["build_workload"])]
    run.build_workload = walled(saved[0][2])
    for phase, owner, name in _targets():
        original = owner.__dict__[name]
        saved.append((owner, name, original))
        setattr(owner, name, timed(phase, original))
    try:
        yield totals
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
