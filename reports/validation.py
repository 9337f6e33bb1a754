"""The validation error table (terminal, CSV) and the parity plot: predicted against published, a
panel per unit, each point named by a short case label."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from rich.table import Table

from hardware.atomic import write_atomic
from reports.figures import log_scale_if_wide, new_figure, outside_legend, save_png
from reports.point_labels import place_labels
from reports.table import wide_console


def validation_table(rows: list[dict], stats: dict) -> Table:
    table = Table(title="epsim vs published measurements", title_justify="left")
    for col in ("case", "metric", "published", "predicted", "error"):
        table.add_column(col, justify="left" if col in ("case", "metric") else "right")
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        if r["predicted"] is None:
            table.add_row(r["case"], r["metric"], f"{r['published']:g}{unit}", "-", r["status"])
            continue
        fit = " (fitted here)" if r["status"].startswith("fit") else ""
        table.add_row(r["case"], r["metric"], f"{r['published']:g}{unit}", f"{r['predicted']:.4g}{unit}",
                      f"{r['error_pct']:+.1f} %{fit}")
    if stats["num_predicted"]:
        table.caption = (f"median |error| {stats['median_abs_error_pct']:.1f} %, worst {stats['worst_abs_error_pct']:.1f} %"
                         f" over the {stats['num_predicted']} metrics nothing was fitted on")
    return table


def print_validation(rows: list[dict], stats: dict, files: dict | None = None) -> None:
    console = wide_console(140)
    console.print(validation_table(rows, stats))
    for name, path in (files or {}).items():
        console.print(f"{name}: {path}")


def write_validation(out_dir: Path, rows: list[dict]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"table": out_dir / "validation.csv", "parity plot": out_dir / "parity.png"}
    write_atomic(paths["table"], pd.DataFrame(rows).to_csv(index=False))
    parity_plot(rows, paths["parity plot"])
    return paths


# a panel per unit: points of different units on one pair of axes compare nothing
FAMILIES = {"us": "latency (µs)", "ms": "latency (ms)", "GB/s": "bandwidth (GB/s)",
            "TFLOPS": "model TFLOPS per GPU", "tok/s": "throughput (tokens / s)", "": "fraction"}
BAND = 0.15  # the shaded band: |error| within 15 %
CASE_WORDS = (("low-latency", "LL"), ("normal-intranode", "intranode"), ("normal-internode", "internode"),
              ("nccl-alltoall", "nccl"), ("no-tbo", "no-TBO"))
CASE_DROPPED = {"deepep", "megatron", "bridge", "lmsys", "deepseek", "v3", "training", "h100", "h800"}
METRIC_WORDS = {"forward": "fwd", "backward": "bwd", "attention": "attn"}
METRIC_DROPPED = {"latency", "logical", "bandwidth", "nvlink", "rdma", "per", "layer", "gpu", "node", "second",
                  "model", "tflops", "tokens", "alltoall", "bus", "stream", "fraction"}
MAX_LABEL_CHARS = 26


def family_of(unit: str) -> str:
    return FAMILIES.get(unit or "", unit)


def short_label(case: str, metric: str, with_metric: bool = True) -> str:
    """'deepep-low-latency-ep128', 'combine latency' -> 'LL ep128 combine': the case id without its
    vendor and hardware words, and the metric's first telling words when the case has several."""
    for long, short in CASE_WORDS:
        case = case.replace(long, short)
    words = [w for w in case.split("-") if w.lower() not in CASE_DROPPED] or case.split("-")
    if with_metric:
        plain = re.sub(r"\(.*?\)", "", metric).split()
        words += [METRIC_WORDS.get(w.lower(), w) for w in plain if w.lower() not in METRIC_DROPPED][:2]
    text = " ".join(words)
    return text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 1] + "…"


def _families(done: list[dict]) -> list[tuple[str, list[dict]]]:
    units = list(dict.fromkeys(r["unit"] or "" for r in done))
    units.sort(key=lambda u: (list(FAMILIES).index(u) if u in FAMILIES else len(FAMILIES), u))
    return [(family_of(u), [r for r in done if (r["unit"] or "") == u]) for u in units]


def _parity_panel(ax, rows: list[dict]) -> None:
    """y = x, the ±15 % band, the points (red outside the band, hollow where a parameter was fitted
    on the metric); log axes when the values span a decade or more, the same limits on both."""
    values = [v for r in rows for v in (r["published"], r["predicted"])]
    lo, hi = min(values), max(values)
    if log_scale_if_wide(ax, values, "xy", min_ratio=5.0):  # half a decade: a tight cluster spreads out
        lo, hi = lo / 1.6, hi * 1.6
        line = np.geomspace(lo, hi, 64)
    else:
        pad = max(0.2 * (hi - lo), 0.12 * abs(hi))
        lo, hi = max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad
        line = np.linspace(lo, hi, 64)
    ax.fill_between(line, line * (1 - BAND), line * (1 + BAND), color="0.85", lw=0, gid="band")
    ax.plot(line, line, color="0.2", lw=0.8, gid="parity")
    for r in rows:
        color = "C0" if abs(r["error_pct"]) <= BAND * 100 else "C3"
        fitted = r["status"].startswith("fit")
        ax.scatter([r["published"]], [r["predicted"]], s=30, zorder=3, linewidths=1.2,
                   color="none" if fitted else color, edgecolors=color)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, alpha=0.3)


def parity_figure(rows: list[dict]):
    """Predicted against published, one panel per unit (latency, bandwidth, TFLOPS, tokens / s,
    fractions), each point named by a short case label."""
    done = [r for r in rows if r["predicted"] is not None]
    families = _families(done)
    fig, axs, corner = new_figure(len(families), 4.2, 4.4, True)
    for ax, (family, members) in zip(axs, families):
        _parity_panel(ax, members)
        errors = [abs(r["error_pct"]) for r in members if r["status"] == "ok"]
        stats = f", median |error| {np.median(errors):.1f} %" if errors else ""
        ax.set_title(f"{family}: {len(members)} metric{'s' if len(members) > 1 else ''}{stats}", fontsize=9)
        ax.set_xlabel(f"published, {family}", fontsize=8)
        ax.set_ylabel("epsim predicted", fontsize=8)
    handles = [Line2D([], [], color="0.2", lw=0.8), Patch(color="0.85"),
               Line2D([], [], color="C0", marker="o", lw=0), Line2D([], [], color="C3", marker="o", lw=0),
               Line2D([], [], color="0.3", marker="o", lw=0, markerfacecolor="none")]
    labels = ["parity (y = x)", f"±{BAND:.0%} band", f"within ±{BAND:.0%}", f"outside ±{BAND:.0%}",
              "hollow: a parameter was\nfitted on it (no prediction)"]
    outside_legend(corner, handles, labels)
    pending = len(rows) - len(done)
    fig.suptitle("epsim vs published measurements" + (f" ({pending} metrics not predicted: see the table)"
                                                       if pending else ""), fontsize=10)
    fig.canvas.draw()  # the layout is final: labels are placed in display coordinates
    for ax, (_, members) in zip(axs, families):
        per_case = Counter(r["case"] for r in members)
        members = sorted(members, key=lambda r: -abs(r["error_pct"]))  # the worst get their label first
        hidden = place_labels(ax, [(r["published"], r["predicted"]) for r in members],
                              [short_label(r["case"], r["metric"], per_case[r["case"]] > 1) for r in members])
        if hidden:
            ax.text(0.98, 0.02, f"{hidden} labels left out (crowded)", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=6, color="0.4")
    return fig


def parity_plot(rows: list[dict], path: Path) -> None:
    save_png(parity_figure(rows), path, dpi=130)
