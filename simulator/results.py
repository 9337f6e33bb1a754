"""A run's files: summary.json and the per-layer / per-GPU metrics CSV, written atomically so a
failed run never corrupts old files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hardware.atomic import write_atomic


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"


def write_run_files(out_dir: Path, summary: dict, rows: list[dict]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"summary": out_dir / "summary.json", "metrics": out_dir / "metrics_per_layer_gpu.csv"}
    write_atomic(paths["metrics"], pd.DataFrame(rows).to_csv(index=False))
    write_atomic(paths["summary"], summary_json(summary))
    return paths
