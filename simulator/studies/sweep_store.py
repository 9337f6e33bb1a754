"""A sweep's files: one folder per point (summary.json, metrics CSV, point.json) and the combined
table (sweep.csv, sweep.parquet), each written atomically the moment a point finishes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hardware.atomic import write_atomic, write_set_atomic
from simulator.results import METRICS_FILE, SUMMARY_FILE, run_file_contents

POINT_FILE = "point.json"
SCENARIO_FILE = "scenario.yaml"
POINT_FILES = (METRICS_FILE, SUMMARY_FILE, SCENARIO_FILE, POINT_FILE)
TABLE_CSV = "sweep.csv"
TABLE_PARQUET = "sweep.parquet"


def write_point(folder: Path, record: dict, summary: dict | None, rows: list[dict] | None,
                resolved_yaml: str | None) -> None:
    """One set of files (hardware.atomic.write_set_atomic) whose marker is point.json: its presence
    (with the key) is what marks the point done; a point now invalid loses its old summary."""
    contents = run_file_contents(summary, rows or []) if summary is not None else {}
    if resolved_yaml is not None:
        contents[SCENARIO_FILE] = resolved_yaml
    contents[POINT_FILE] = json.dumps(record, indent=2, default=str) + "\n"
    write_set_atomic(folder, contents, POINT_FILES)


def read_point_summary(folder: Path) -> dict | None:
    path = Path(folder) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def flatten(record: dict, summary: dict | None) -> dict:
    """One table row: the point (axes, status, error) and the headline numbers of its summary."""
    row = {"index": record["index"], "label": record["label"], "status": record["status"]}
    row.update({key: _cell(value) for key, value in record["coords"]})
    row["error"] = record.get("error")
    if summary is not None:
        b, util, step_util = summary["breakdown_s"], summary["bandwidth_utilization"], summary["bandwidth_utilization_step"]
        row.update({
            "scenario": summary["scenario"],
            "num_gpus": summary["num_gpus"],
            "ep_size": summary["layout"]["ep_size"],
            "dp_size": summary["layout"]["dp_size"],
            "step_time_s": summary["step_time_s"],
            "mfu": summary["mfu"],
            "model_tflops_per_gpu": summary["model_tflops_per_gpu"],
            "tokens_per_s": summary["tokens_per_s"],
            "tokens_per_s_per_gpu": summary["tokens_per_s"] / summary["num_gpus"],
            "compute_s": b["compute"],
            "exposed_comm_s": b["exposed_comm"],
            "idle_s": b["idle"],
            "nvlink_util": util.get("nvlink", 0.0),
            "ib_util": util.get("ib", 0.0),
            "nvlink_util_step": step_util.get("nvlink", 0.0),
            "ib_util_step": step_util.get("ib", 0.0),
            "load_imbalance": summary["load_imbalance"],
            "memory_peak_bytes": summary["memory_per_gpu"]["peak"],
            "max_link_load_s": summary.get("max_link_load", {}).get("all_to_all_busy_s", float("nan")),
            "max_link_load_step_s": summary.get("max_link_load", {}).get("busy_s", float("nan")),
        })
        row.update({key: summary[key] for key in ("itl_s", "ttft_s", "tokens_per_s_per_node") if key in summary})
        for kind, c in summary["collectives"].items():
            row.update({
                f"{kind}_count": c["count"],
                f"{kind}_mean_time_s": c["mean_time_s"],
                f"{kind}_max_time_s": c["max_time_s"],
                f"{kind}_bytes_per_gpu": c["mean_bytes_per_gpu"],
                f"{kind}_nvlink_bytes_per_gpu": c.get("mean_nvlink_bytes_per_gpu", 0.0),
                f"{kind}_ib_bytes_per_gpu": c.get("mean_ib_bytes_per_gpu", 0.0),
            })
    row["key"] = record["key"]
    row["folder"] = record["folder"]
    return row


TABLE_TAIL = ("key", "folder")


def sweep_table(rows: list[dict]) -> pd.DataFrame:
    """Rows in grid order; columns in first-seen order over the rows in grid order (failed points
    leave gaps), key and folder last, so the order never depends on which point finished first."""
    rows = sorted(rows, key=lambda r: r["index"])
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    order = [c for c in columns if c not in TABLE_TAIL] + [c for c in TABLE_TAIL if c in columns]
    return pd.DataFrame(rows, columns=order)


def write_sweep_table(out_dir: Path, table: pd.DataFrame) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"table_csv": out_dir / TABLE_CSV, "table_parquet": out_dir / TABLE_PARQUET}
    write_atomic(paths["table_csv"], table.to_csv(index=False))
    write_atomic(paths["table_parquet"], lambda tmp: table.to_parquet(tmp, index=False))
    return paths


def point_json_record(point, status: str, error: str | None, wall_s: float | None,
                      ray_node_id: str | None = None) -> dict:
    """What point.json holds: enough to key, label and place the point without re-resolving it,
    and, for a point run on Ray, the node that ran it."""
    record = {"key": point.key, "index": point.index, "label": point.label, "folder": point.folder,
              "coords": [[k, v] for k, v in point.coords], "status": status, "error": error,
              "wall_s": wall_s}
    if ray_node_id is not None:
        record["ray_node_id"] = ray_node_id
    return record

