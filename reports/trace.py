"""Chrome / Perfetto trace of one run (JSON trace-event format, loads in ui.perfetto.dev and
chrome://tracing).

One process per GPU (a sampled subset past `max_gpus`, listed in `otherData`), one thread per
stream (compute, receive = dispatch side, send = combine side), a complete ("X") slice per kernel
or collective named by layer, op, phase, micro-batch and chunk, and a `network` process with
counter tracks of NVLink and IB utilisation. Trace timestamps are microseconds.

The utilisation counters are derived from the collectives alone (the network keeps no per-port
time series): each collective's NVLink and IB bytes are spread evenly over its span, from its
start to the last GPU's last byte received, summed, and divided by the line rate of all
out-ports of that class. They show when each link class is busy and roughly how hard; the exact
per-port numbers are in summary.json.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from reports.files import write_atomic
from simulator.engine import RunResult

STREAM_TID = {"compute": 1, "receive": 2, "send": 3}
STREAM_NAME = {"compute": "compute stream", "receive": "receive stream (dispatch)",
               "send": "send stream (combine)"}
DEFAULT_MAX_GPUS = 64
# Above this many slices the default is to skip the trace (~150 bytes per slice: ~30 MB).
DEFAULT_EVENT_LIMIT = 200_000
LABEL = re.compile(r"L(?P<layer>\d+) (?P<op>\w+) mb(?P<mb>\d+) c(?P<chunk>\d+)")
US_PER_S = 1e6


def sampled_gpus(num_gpus: int, max_gpus: int) -> list[int]:
    """All GPUs, or `max_gpus` of them evenly spread over the cluster (first and last included)."""
    if num_gpus <= max_gpus:
        return list(range(num_gpus))
    return sorted({int(round(x)) for x in np.linspace(0, num_gpus - 1, max_gpus)})


def estimate_slices(result: RunResult, max_gpus: int = DEFAULT_MAX_GPUS) -> int:
    return sum(len(result.gpus[g].intervals) for g in sampled_gpus(len(result.gpus), max_gpus))


def _us(t_s: float) -> float:
    """Microseconds, rounded to 0.1 ns: enough for the viewers, and a much smaller file."""
    return round(float(t_s) * US_PER_S, 4)


def _slice_args(label: str) -> dict:
    m = LABEL.fullmatch(label)
    if not m:
        return {}
    op = m["op"]
    return {"layer": int(m["layer"]), "op": op.removesuffix("_bwd"),
            "phase": "backward" if op.endswith("_bwd") else "forward",
            "micro_batch": int(m["mb"]), "chunk": int(m["chunk"])}


def utilisation_steps(result: RunResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'nvlink'|'ib': (times_s, fraction of the class's out-port line rate from each time on)}."""
    topo = result.network.topology
    peak = topo.port_peak_bytes_per_s()
    capacity = {"nvlink": float(peak[topo.nvl_out(0)]) * topo.num_gpus,
                "ib": float(peak[topo.nic_out(0)]) * topo.num_gpus}
    edges: dict[str, list[tuple[float, float]]] = {"nvlink": [], "ib": []}
    for coll in result.collectives.values():
        if np.isnan(coll.start_s) or np.isnan(coll.recv_done_s).all():
            continue
        end_s = float(np.nanmax(coll.recv_done_s))
        span_s = end_s - float(coll.start_s)
        if span_s <= 0:
            continue
        for cls, num_bytes in (("nvlink", coll.bytes_nvlink), ("ib", coll.bytes_ib)):
            if num_bytes > 0:
                rate = num_bytes / span_s / capacity[cls]
                edges[cls] += [(float(coll.start_s), rate), (end_s, -rate)]
    out = {}
    for cls, ev in edges.items():
        if not ev:
            out[cls] = (np.array([0.0]), np.array([0.0]))
            continue
        ev.sort()
        times = np.array([t for t, _ in ev])
        level = np.cumsum([d for _, d in ev])
        keep = np.append(times[1:] != times[:-1], True)  # last value at each distinct time
        out[cls] = (times[keep], np.clip(level[keep], 0.0, None))
    return out


def trace_document(result: RunResult, max_gpus: int = DEFAULT_MAX_GPUS) -> dict:
    """The trace as a JSON-ready dict ({"traceEvents": [...], "displayTimeUnit", "otherData"})."""
    s = result.scenario
    n = len(result.gpus)
    gpus = sampled_gpus(n, max_gpus)
    gpn, p = s.cluster.gpus_per_node, s.parallel.ep_size
    events: list[dict] = []
    for order, g in enumerate(gpus):
        events.append({"ph": "M", "name": "process_name", "pid": g, "tid": 0,
                       "args": {"name": f"GPU {g} (node {g // gpn}, EP group {g // p}, rank {g % p})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": g, "tid": 0, "args": {"sort_index": order}})
        for stream, tid in STREAM_TID.items():
            events.append({"ph": "M", "name": "thread_name", "pid": g, "tid": tid, "args": {"name": STREAM_NAME[stream]}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": g, "tid": tid, "args": {"sort_index": tid}})
        for stream, start_s, end_s, label in result.gpus[g].intervals:
            events.append({"ph": "X", "name": label, "cat": "compute" if stream == "compute" else "comm",
                           "pid": g, "tid": STREAM_TID[stream], "ts": _us(start_s), "dur": round(_us(end_s) - _us(start_s), 4),
                           "args": _slice_args(label)})
    net = n  # a pid past every GPU's
    events.append({"ph": "M", "name": "process_name", "pid": net, "tid": 0, "args": {"name": "network (whole cluster)"}})
    events.append({"ph": "M", "name": "process_sort_index", "pid": net, "tid": 0, "args": {"sort_index": -1}})
    for cls, (times, level) in utilisation_steps(result).items():
        name = f"{'NVLink' if cls == 'nvlink' else 'IB'} utilisation (% of line rate)"
        events.append({"ph": "C", "name": name, "pid": net, "tid": 0, "ts": 0.0, "args": {cls: 0.0}})
        for t, v in zip(times, level):
            events.append({"ph": "C", "name": name, "pid": net, "tid": 0, "ts": _us(t),
                           "args": {cls: round(float(v) * 100, 3)}})
    other = {
        "scenario": s.name, "num_gpus": n, "step_time_s": result.step_time_s,
        "gpus_in_trace": gpus if len(gpus) < n else "all",
        "sampling": (f"{len(gpus)} of {n} GPUs, evenly spaced (max_gpus={max_gpus})" if len(gpus) < n
                     else "every GPU"),
        "counters": "NVLink/IB utilisation: each collective's bytes spread evenly over its span, "
                    "summed, / line rate of all out-ports of the class (approximate)",
        "time_unit": "microseconds",
    }
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_trace(path: Path, result: RunResult, max_gpus: int = DEFAULT_MAX_GPUS) -> Path:
    path = Path(path)
    write_atomic(path, json.dumps(trace_document(result, max_gpus), separators=(",", ":")) + "\n")
    return path
