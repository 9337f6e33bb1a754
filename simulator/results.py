"""A run's files: summary.json, the per-layer / per-GPU metrics CSV and, when asked, trace.json,
written as one set (hardware.atomic.write_set_atomic, summary.json the marker) so that a failed
or killed run never corrupts old files nor leaves a new summary beside an old trace."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import yaml

from hardware.atomic import write_set_atomic

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics_per_layer_gpu.csv"
TRACE_FILE = "trace.json"
LOAD_FILE = "expert_load.csv"  # per step, EP group, MoE layer and expert: tokens and Load_e (seed 2.3)
SCENARIO_FILE = "scenario.yaml"  # the scenario as run: the file with every --set applied (re-runnable)
RESOLVED_FILE = "scenario.resolved.yaml"  # every preset field filled in: what was simulated, for the record
RUN_FILES = (METRICS_FILE, LOAD_FILE, TRACE_FILE, SCENARIO_FILE, RESOLVED_FILE, SUMMARY_FILE)
MAX_FOLDER_CHARS = 100


def scenario_texts(data: dict, resolved: dict) -> dict[str, str]:
    """{file name: YAML} of the scenario as given (overrides applied) and as resolved."""
    return {SCENARIO_FILE: yaml.safe_dump(data, sort_keys=False),
            RESOLVED_FILE: yaml.safe_dump(resolved, sort_keys=False)}


def run_folder_name(name: str, overrides: list[tuple[str, object]]) -> str:
    """A run's default folder name: the scenario's name, then its overrides (`--set` and
    --model-config) as last-key=value, so runs of one scenario with different overrides land in
    different folders; past MAX_FOLDER_CHARS a hash of the overrides keeps it short and distinct.
    One plain folder name: no separators, no leading dot."""
    def plain(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text).strip(".-")

    base = plain(name)[:MAX_FOLDER_CHARS] or "scenario"
    if not overrides:
        return base
    parts = "_".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides if value is not None)
    folder = plain(f"{base}__{parts}")
    if len(folder) > MAX_FOLDER_CHARS:
        digest = hashlib.sha256(json.dumps(overrides, default=str).encode()).hexdigest()[:12]
        folder = f"{folder[:MAX_FOLDER_CHARS - 13]}-{digest}"
    return folder


def other_run_in(out_dir: Path, resolved_text: str) -> str | None:
    """Why writing this run into `out_dir` would replace a different run (None when it would not):
    the folder holds a summary.json whose resolved scenario is missing or not this one."""
    out_dir = Path(out_dir)
    if not (out_dir / SUMMARY_FILE).is_file():
        return None
    try:
        previous = (out_dir / RESOLVED_FILE).read_text()
    except OSError:
        return f"holds a run without {RESOLVED_FILE} (made before it was written, or by hand)"
    if previous != resolved_text:
        return "holds a run of a different scenario (its scenario.resolved.yaml differs from this one's)"
    return None


def summary_json(summary: dict) -> str:
    """summary.json's text; a NaN or infinity is a model error and fails here rather than writing
    a file that is not JSON."""
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def run_file_contents(summary: dict, rows: list[dict], loads: list[dict] | None = None) -> dict[str, str]:
    """{file name: text} of a run without its trace, summary.json last (the set's marker)."""
    contents = {METRICS_FILE: pd.DataFrame(rows).to_csv(index=False)}
    if loads:
        contents[LOAD_FILE] = pd.DataFrame(loads).to_csv(index=False)
    return {**contents, SUMMARY_FILE: summary_json(summary)}


def write_run_files(out_dir: Path, summary: dict, rows: list[dict], trace: str | None = None,
                    loads: list[dict] | None = None, scenario: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the run's set; without `trace`, an old trace.json there is deleted with the old set.
    `scenario`: scenario_texts(), written beside summary.json."""
    contents = {**(scenario or {}), **run_file_contents(summary, rows, loads)}
    if trace is not None:
        summary_text = contents.pop(SUMMARY_FILE)
        contents = {**contents, TRACE_FILE: trace, SUMMARY_FILE: summary_text}
    paths = write_set_atomic(out_dir, contents, RUN_FILES)
    names = {SUMMARY_FILE: "summary", METRICS_FILE: "metrics", LOAD_FILE: "expert loads", TRACE_FILE: "trace",
             SCENARIO_FILE: "scenario", RESOLVED_FILE: "resolved scenario"}
    return {names[name]: paths[name] for name in names if name in paths}
