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
from pathlib import Path

import numpy as np

from hardware.atomic import write_atomic
from hardware.topology import Topology
from simulator.engine import RunRecord
from simulator.engine.gpu import COMPUTE, DP_COMM, PP_COMM, RECEIVE, SEND, TP_COMM

STREAM_TID = {COMPUTE: 1, RECEIVE: 2, SEND: 3, DP_COMM: 4, PP_COMM: 5, TP_COMM: 6}
STREAM_NAME = {COMPUTE: "compute stream", RECEIVE: "receive stream (dispatch)", SEND: "send stream (combine)",
               DP_COMM: "data-parallel stream (gradients, parameters)", PP_COMM: "pipeline stream (sends)",
               TP_COMM: "tensor-parallel stream (sequence-parallel gather / scatter)"}
DEFAULT_MAX_GPUS = 64
# Above this many slices the default is to skip the trace (~150 bytes per slice: ~30 MB).
DEFAULT_EVENT_LIMIT = 200_000
US_PER_S = 1e6


def sampled_gpus(num_gpus: int, max_gpus: int) -> list[int]:
    """All GPUs, or `max_gpus` of them evenly spread over the cluster (first and last included)."""
    if num_gpus <= max_gpus:
        return list(range(num_gpus))
    return sorted({int(round(x)) for x in np.linspace(0, num_gpus - 1, max_gpus)})


def estimate_slices(result: RunRecord, max_gpus: int = DEFAULT_MAX_GPUS) -> int:
    return sum(len(result.intervals[g]) for g in sampled_gpus(result.num_gpus, max_gpus))


def _us(t_s: float) -> float:
    """Microseconds, rounded to 0.1 ns: enough for the viewers, and a much smaller file."""
    return round(float(t_s) * US_PER_S, 4)


def utilisation_steps(result: RunRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'nvlink'|'ib': (times_s, fraction of the class's out-port line rate from each time on)}."""
    topo = Topology(result.scenario.cluster)
    peak = result.ports.peak_bytes_per_s
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


def trace_document(result: RunRecord, max_gpus: int = DEFAULT_MAX_GPUS) -> dict:
    """The trace as a JSON-ready dict ({"traceEvents": [...], "displayTimeUnit", "otherData"})."""
    s = result.scenario
    n = result.num_gpus
    gpus = sampled_gpus(n, max_gpus)
    gpn, ranks = s.cluster.gpus_per_node, s.ranks
    events: list[dict] = []
    for order, g in enumerate(gpus):
        where = f"node {g // gpn}, EP group {ranks.ep_group_of(g)}, rank {ranks.ep_rank[g]}"
        events.append({"ph": "M", "name": "process_name", "pid": g, "tid": 0, "args": {"name": f"GPU {g} ({where})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": g, "tid": 0, "args": {"sort_index": order}})
        for stream, tid in STREAM_TID.items():
            events.append({"ph": "M", "name": "thread_name", "pid": g, "tid": tid, "args": {"name": STREAM_NAME[stream]}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": g, "tid": tid, "args": {"sort_index": tid}})
        for iv in result.intervals[g]:
            events.append({"ph": "X", "name": iv.op.label, "cat": "compute" if iv.stream == COMPUTE else "comm",
                           "pid": g, "tid": STREAM_TID[iv.stream], "ts": _us(iv.start_s),
                           "dur": round(_us(iv.end_s) - _us(iv.start_s), 4), "args": iv.op._asdict()})
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


def trace_text(result: RunRecord, max_gpus: int = DEFAULT_MAX_GPUS) -> str:
    return json.dumps(trace_document(result, max_gpus), separators=(",", ":")) + "\n"


def write_trace(path: Path, result: RunRecord, max_gpus: int = DEFAULT_MAX_GPUS) -> Path:
    """trace.json on its own; a run writes it in its set of files (simulator.results.write_run_files)."""
    path = Path(path)
    write_atomic(path, trace_text(result, max_gpus))
    return path
