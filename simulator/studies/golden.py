"""Golden predictions of the reference scenarios: MFU, step time and per-collective times.

A golden file (`tests/golden/<scenario stem>.json`) is refreshed only by an explicit
`python run_sim.py golden --update`, which prints the diff it accepts. The regression test
re-simulates each scenario and fails on any relative change above RTOL, naming the scenario, the
field and both values. A golden file may state a looser tolerance for a field with its reason
(`"tolerances": {"collectives.dispatch.max_time_s": {"rtol": 1e-6, "why": "..."}}`), for a number
a library upgrade could move in its last digits; --update keeps those. Model changes that move
the numbers are expected: review the diff, then update.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from simulator.api import run_scenario
from simulator.scenario import load_scenario

# Reference scenarios: the default, single-node EP 8, large EP 256, a skewed router, Mixtral
# prefill (direct all-to-all), a TP 2 x PP 2 x DP training layout, and DeepSeek's DualPipe layout
# in miniature, and LMSYS's DeepSeek-V3 decode at EP 72. Each simulates as shipped, without a
# shortened horizon.
GOLDEN_SCENARIOS = ("default", "single-node-ep8", "large-ep256", "skewed-zipf", "mixtral-8x7b-prefill",
                    "mixtral-8x7b-tp2-pp2", "deepseek-v3-dualpipe-pp4", "deepseek-v3-decode-ep72")
RTOL = 1e-9
COLLECTIVE_FIELDS = ("count", "mean_time_s", "max_time_s", "mean_bytes_per_gpu")


@dataclass(frozen=True)
class Change:
    scenario: str
    field: str
    old: float | None
    new: float | None

    @property
    def relative(self) -> float:
        if self.old is None or self.new is None:
            return float("inf")
        if self.old == 0:
            return 0.0 if self.new == 0 else float("inf")
        return abs(self.new - self.old) / abs(self.old)

    def __str__(self) -> str:
        return (f"{self.scenario}: {self.field}: old {self.old!r} -> new {self.new!r} "
                f"(relative change {self.relative:.3g})")


def golden_record(summary: dict) -> dict:
    """The guarded numbers of one summary."""
    return {
        "scenario": summary["scenario"],
        "mfu": summary["mfu"],
        "step_time_s": summary["step_time_s"],
        "collectives": {kind: {f: c[f] for f in COLLECTIVE_FIELDS} for kind, c in summary["collectives"].items()},
    }


def flat_fields(record: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_fields(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def compare(stem: str, old: dict, new: dict, rtol: float = RTOL, tolerances: dict | None = None) -> list[Change]:
    """Every numeric field whose relative change exceeds its tolerance (rtol, or the golden file's
    stated one for that field), or that appeared or vanished."""
    a, b = flat_fields(old), flat_fields(new)
    limits = {field: float(t["rtol"]) for field, t in (tolerances or {}).items()}
    changes = [Change(stem, f, a.get(f), b.get(f)) for f in sorted(set(a) | set(b))]
    return [c for c in changes if c.relative > limits.get(c.field, rtol)]


def golden_path(golden_dir: Path, stem: str) -> Path:
    return Path(golden_dir) / f"{stem}.json"


def read_golden(golden_dir: Path, stem: str) -> dict | None:
    path = golden_path(golden_dir, stem)
    return json.loads(path.read_text())["record"] if path.is_file() else None


def read_tolerances(golden_dir: Path, stem: str) -> dict:
    """The golden file's per-field tolerances ({} when it states none)."""
    path = golden_path(golden_dir, stem)
    return json.loads(path.read_text()).get("tolerances", {}) if path.is_file() else {}


def simulate_record(scenarios_dir: Path, stem: str) -> dict:
    summary, _ = run_scenario(load_scenario(Path(scenarios_dir) / f"{stem}.yaml"))
    return golden_record(summary)


def golden_text(stem: str, record: dict, tolerances: dict | None = None) -> str:
    doc = {"scenario_file": f"scenarios/{stem}.yaml", "rtol": RTOL}
    if tolerances:
        doc["tolerances"] = tolerances
    return json.dumps({**doc, "record": record}, indent=2) + "\n"
