"""A run's files: summary.json, the per-layer / per-GPU metrics CSV and, when asked, trace.json,
written as one set (hardware.atomic.write_set_atomic, summary.json the marker) so that a failed
or killed run never corrupts old files nor leaves a new summary beside an old trace."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hardware.atomic import write_set_atomic

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics_per_layer_gpu.csv"
TRACE_FILE = "trace.json"
LOAD_FILE = "expert_load.csv"  # per step, EP group, MoE layer and expert: tokens and Load_e (seed 2.3)
RUN_FILES = (METRICS_FILE, LOAD_FILE, TRACE_FILE, SUMMARY_FILE)


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"


def run_file_contents(summary: dict, rows: list[dict], loads: list[dict] | None = None) -> dict[str, str]:
    """{file name: text} of a run without its trace, summary.json last (the set's marker)."""
    contents = {METRICS_FILE: pd.DataFrame(rows).to_csv(index=False)}
    if loads:
        contents[LOAD_FILE] = pd.DataFrame(loads).to_csv(index=False)
    return {**contents, SUMMARY_FILE: summary_json(summary)}


def write_run_files(out_dir: Path, summary: dict, rows: list[dict], trace: str | None = None,
                    loads: list[dict] | None = None) -> dict[str, Path]:
    """Write the run's set; without `trace`, an old trace.json there is deleted with the old set."""
    contents = run_file_contents(summary, rows, loads)
    if trace is not None:
        summary_text = contents.pop(SUMMARY_FILE)
        contents = {**contents, TRACE_FILE: trace, SUMMARY_FILE: summary_text}
    paths = write_set_atomic(out_dir, contents, RUN_FILES)
    names = {SUMMARY_FILE: "summary", METRICS_FILE: "metrics", LOAD_FILE: "expert loads", TRACE_FILE: "trace"}
    return {names[name]: paths[name] for name in (SUMMARY_FILE, METRICS_FILE, LOAD_FILE, TRACE_FILE) if name in paths}
