"""Run the validation cases and compare each predicted metric with its published value.

A case is a scenario plus published metrics; every metric is computed the way its source counts it
(DeepEP's logical bandwidths count the local GPU / node; nccl-tests busbw = algbw x (n-1)/n).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from simulator.api import simulate_scenario
from simulator.engine import RunRecord
from simulator.engine.collective import COLLECTIVES
from simulator.engine.gpu import COMPUTE
from simulator.engine.program import UPDATE
from simulator.errors import ScenarioError
from simulator.metrics import union_length
from simulator.scenario import build_scenario

CASES_FILE = Path(__file__).parent / "cases.yaml"
BASELINE_FILE = Path(__file__).parent / "baseline.json"
FP8_LOGICAL_FACTOR = (1 + 4 / 128) / 2  # DeepEP counts FP8 bytes against a BF16 hidden vector


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    unit: str
    published: float
    predicted: float | None
    error_pct: float | None
    status: str  # "ok", "fit: <parameter>" (a parameter was fitted on it), or why it was not predicted

    @property
    def key(self) -> str:
        return f"{self.case} / {self.metric}"


def load_cases(path: Path = CASES_FILE) -> list[dict]:
    return yaml.safe_load(path.read_text())["cases"]


def _kinds(metric: dict) -> list[str]:
    return metric["kind"].split(",")


def collective_time_s(r: RunRecord, kinds: list[str]) -> float:
    times = [c.recv_done_s - c.start_s for c in r.collectives.values() if c.kind in kinds]
    return float(np.concatenate(times).mean())


def _logical_gb_per_s(r: RunRecord, kind: str, per_gpu_units: float) -> float:
    s = r.scenario
    factor = FP8_LOGICAL_FACTOR if COLLECTIVES[kind].wire_dtype(s) == "fp8" else 1.0
    return per_gpu_units * s.model.hidden_size * 2 * factor / collective_time_s(r, [kind]) / 1e9


def deepep_nvlink_gb_per_s(r: RunRecord, metric: dict) -> float:
    """Received token copies per GPU (a token once per distinct destination GPU, itself included)."""
    per_gpu = np.mean([c.recv_tokens.mean() for c in r.counts.values()])
    return _logical_gb_per_s(r, metric["kind"], per_gpu)


def deepep_rdma_gb_per_s(r: RunRecord, metric: dict) -> float:
    """(token, destination node) pairs per GPU, the local node included."""
    per_gpu = np.mean([c.node_pairs.mean() for c in r.counts.values()])
    return _logical_gb_per_s(r, metric["kind"], per_gpu)


def alltoall_busbw_gb_per_s(r: RunRecord, metric: dict) -> float:
    s = r.scenario
    n = s.parallel.ep_size
    rank_bytes = s.workload.tokens_per_gpu * n * 2 * s.model.hidden_size  # nccl-tests size: the whole send buffer
    algbw = rank_bytes / collective_time_s(r, _kinds(metric))
    return algbw * (n - 1) / n / 1e9


def compute_op_us(r: RunRecord, metric: dict) -> float:
    """Mean time of one compute op per (GPU, layer, micro-batch), its chunks summed; with
    `kernel_class`, only that class's share of the op (RunRecord.kernel_classes)."""
    name = metric["kind"]
    share = (r.kernel_classes or {}).get(name, {}).get(metric["kernel_class"], 0.0) if "kernel_class" in metric else 1.0
    totals: dict[tuple, float] = {}
    for gpu, intervals in enumerate(r.intervals):
        for iv in intervals:
            if iv.stream == COMPUTE and iv.op.name == name:
                key = (gpu, iv.op.layer, iv.op.micro_batch)
                totals[key] = totals.get(key, 0.0) + iv.end_s - iv.start_s
    return float(np.mean(list(totals.values()))) * share * 1e6


def chunk_busy_fraction(r: RunRecord, metric: dict) -> float:
    """Compute-stream busy fraction over the forward / backward chunks, as a profiler window in
    the middle of a step sees it: from 0 to the GPU's last chunk op, leaving out the update
    (gradient sync, optimizer) at the step's end. Mean over GPUs."""
    fractions = []
    for intervals in r.intervals:
        chunk_ops = [iv for iv in intervals if iv.op.phase != UPDATE]
        window = max(iv.end_s for iv in chunk_ops)
        compute = [iv for iv in chunk_ops if iv.stream == COMPUTE]
        busy = union_length(np.array([iv.start_s for iv in compute]), np.array([iv.end_s for iv in compute]))
        fractions.append(busy / window)
    return float(np.mean(fractions))


QUANTITIES = {
    "collective_time_us": lambda r, m: collective_time_s(r, _kinds(m)) * 1e6,
    "deepep_nvlink_gb_per_s": deepep_nvlink_gb_per_s,
    "deepep_rdma_gb_per_s": deepep_rdma_gb_per_s,
    "alltoall_busbw_gb_per_s": alltoall_busbw_gb_per_s,
    "compute_op_us": compute_op_us,
    "compute_busy_fraction": chunk_busy_fraction,
    "model_tflops_per_gpu": lambda r, m, summary: summary["model_tflops_per_gpu"],
    "tokens_per_s_per_gpu": lambda r, m, summary: summary["tokens_per_s_per_gpu"],
    "tokens_per_s_per_node": lambda r, m, summary: summary["tokens_per_s_per_node"],
}


SUMMARY_QUANTITIES = ("model_tflops_per_gpu", "tokens_per_s_per_gpu", "tokens_per_s_per_node")  # read from the (maybe extended) summary


def run_case(case: dict) -> list[Row]:
    if "pending" in case:
        return [Row(case["id"], m["name"], m["unit"], m["published"], None, None, case["pending"])
                for m in case["metrics"]]
    try:
        scenario = build_scenario({"name": case["id"], **copy.deepcopy(case["scenario"])})
    except ScenarioError as exc:  # the case's layout is rejected: say so, do not stop the table
        return [Row(case["id"], m["name"], m["unit"], m["published"], None, None, f"rejected: {exc}")
                for m in case["metrics"]]
    summary, _, result = simulate_scenario(scenario)
    rows = []
    for m in case["metrics"]:
        quantity = QUANTITIES[m["quantity"]]
        predicted = float(quantity(result, m, summary) if m["quantity"] in SUMMARY_QUANTITIES else quantity(result, m))
        status = f"fit: {m['fitted']}" if "fitted" in m else "ok"
        rows.append(Row(case["id"], m["name"], m["unit"], m["published"], predicted,
                        (predicted / m["published"] - 1) * 100, status))
    return rows


def select(cases: list[dict], patterns: list[str] | None) -> list[dict]:
    if not patterns:
        return cases
    return [c for c in cases if any(p in c["id"] for p in patterns)]


def summary_stats(rows: list[Row]) -> dict:
    """Median and worst |error| over the metrics nothing was fitted on."""
    errs = np.array([abs(r.error_pct) for r in rows if r.status == "ok"])
    if errs.size == 0:
        return {"median_abs_error_pct": None, "worst_abs_error_pct": None, "num_predicted": 0}
    return {"median_abs_error_pct": float(np.median(errs)), "worst_abs_error_pct": float(errs.max()),
            "num_predicted": int(errs.size)}


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def load_baseline(path: Path = BASELINE_FILE) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def baseline_of(rows: list[Row]) -> dict[str, float]:
    return {r.key: round(abs(r.error_pct), 6) for r in rows if r.error_pct is not None}
