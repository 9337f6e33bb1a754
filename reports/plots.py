"""Scaling plots of a sweep table against its swept axis (PNG, matplotlib Agg).

The first numeric axis is the x axis; every combination of the other axes is its own line (or its
own panel, for the stacked step-time breakdown). Points that failed are left out of the lines and
named in a note under the title. An x axis of powers of two (EP sizes) is drawn log-2.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hardware.atomic import write_atomic  # noqa: E402
from simulator.engine.collective import COLLECTIVES  # noqa: E402

BREAKDOWN = (("compute_s", "compute", "#4c72b0"), ("exposed_comm_s", "exposed comm", "#dd8452"),
             ("idle_s", "idle", "#b0b0b0"))


def _is_numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def _is_pow2(values) -> bool:
    return all(float(v) > 0 and float(np.log2(float(v))).is_integer() for v in values)


def pick_x_axis(axes: list[str], table: pd.DataFrame) -> str | None:
    for key in axes:
        if key in table and _is_numeric(table[key].dropna().tolist()):
            return key
    return axes[0] if axes else None


def _series(table: pd.DataFrame, x: str, others: list[str]):
    """(legend label, rows sorted by x) for each combination of the non-x axes; ok points only."""
    ok = table[table["status"] == "ok"]
    if not others:
        yield "", ok.sort_values(x)
        return
    for values, group in ok.groupby(others, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, values)), group.sort_values(x)


def _format_x(ax, x: str, xs) -> None:
    if _is_numeric(xs) and _is_pow2(xs) and len(xs) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(float(v) for v in xs)))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(x + (" (log2)" if ax.get_xscale() == "log" else ""))
    ax.grid(True, alpha=0.3)


def _title(fig, title: str, table: pd.DataFrame, x: str) -> None:
    bad = table[table["status"] != "ok"]
    note = ""
    if len(bad):
        note = "\nnot plotted (" + "; ".join(f"{x}={r[x]}: {r['status']}" for _, r in bad.iterrows()) + ")"
    fig.suptitle(title + note, fontsize=11)


def _line_figure(table, x, others, title, panels, path: Path) -> Path:
    """panels: [(ylabel, [(column, label, scale), ...]), ...]: one axes per panel."""
    fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    xs = table.loc[table["status"] == "ok", x].tolist()
    for ax, (ylabel, curves) in zip(axs[0], panels):
        for legend, rows in _series(table, x, others):
            for column, label, scale in curves:
                if column not in rows or rows[column].isna().all():
                    continue
                name = " ".join(part for part in (label, legend) if part)
                # backward collectives often equal their forward twins: dashed and hollow, so
                # both stay visible when they coincide
                style = {"linestyle": "--", "marker": "s", "markerfacecolor": "none", "markersize": 8} \
                    if "_bwd" in column else {"marker": "o"}
                ax.plot(rows[x], rows[column] * scale, label=name or None, **style)
        ax.set_ylabel(ylabel)
        _format_x(ax, x, xs)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    _title(fig, title, table, x)
    return save_png(fig, path)


def _breakdown_figure(table, x, others, title, path: Path) -> Path:
    series = list(_series(table, x, others))
    fig, axs = plt.subplots(1, max(len(series), 1), figsize=(5.5 * max(len(series), 1), 4.2), squeeze=False)
    for ax, (legend, rows) in zip(axs[0], series):
        pos = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for column, label, color in BREAKDOWN:
            values = rows[column].to_numpy(dtype=float) * 1e3
            ax.bar(pos, values, bottom=bottom, label=label, color=color)
            bottom += values
        # exposed comm and idle are often thin slivers on a tall compute bar: print them too
        for i, (_, r) in enumerate(rows.iterrows()):
            ax.annotate(f"comm {r['exposed_comm_s'] * 1e3:.2f}\nidle {r['idle_s'] * 1e3:.2f}", (pos[i], bottom[i]),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
        ax.set_ylim(0, bottom.max() * 1.15 if len(bottom) else 1)
        ax.set_xticks(pos, [f"{v:g}" if _is_numeric([v]) else str(v) for v in rows[x]])
        ax.set_xlabel(x)
        ax.set_ylabel("step time (ms), per-GPU mean; labels: ms")
        ax.set_title(legend, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, title, table, x)
    return save_png(fig, path)


def scaling_plots(table: pd.DataFrame, axes: list[str], out_dir: Path, scenario: str = "") -> dict[str, Path]:
    """Write the scaling plots of a sweep table; returns {name: path}. Nothing when no point is ok."""
    out_dir = Path(out_dir)
    x = pick_x_axis(axes, table)
    if x is None or not (table["status"] == "ok").any():
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    others = [a for a in axes if a != x]
    pre = f"{scenario}: " if scenario else ""
    kinds = [k for k in COLLECTIVES if f"{k}_mean_time_s" in table]
    paths = {
        "mfu": _line_figure(table, x, others, f"{pre}MFU vs {x}",
                            [("MFU (% of peak dense BF16)", [("mfu", "", 100.0)])], out_dir / "mfu.png"),
        "step_breakdown": _breakdown_figure(table, x, others, f"{pre}step time: compute / exposed comm / idle",
                                            out_dir / "step_breakdown.png"),
        "bandwidth": _line_figure(table, x, others, f"{pre}link bandwidth utilisation", [
            ("utilisation while busy (% of line rate)", [("nvlink_util", "NVLink", 100.0), ("ib_util", "IB", 100.0)]),
            ("utilisation over the step (% of line rate)",
             [("nvlink_util_step", "NVLink", 100.0), ("ib_util_step", "IB", 100.0)]),
        ], out_dir / "bandwidth.png"),
        "collectives": _line_figure(table, x, others, f"{pre}all-to-all per GPU", [
            ("mean time per call (ms)", [(f"{k}_mean_time_s", k, 1e3) for k in kinds]),
            ("bytes sent per GPU per call (MB)", [(f"{k}_bytes_per_gpu", k, 1e-6) for k in kinds]),
        ], out_dir / "collectives.png"),
        "tokens_per_s": _line_figure(table, x, others, f"{pre}throughput per GPU",
                                     [("tokens / s per GPU", [("tokens_per_s_per_gpu", "", 1.0)])],
                                     out_dir / "tokens_per_s.png"),
        "load_imbalance": _line_figure(table, x, others, f"{pre}load imbalance",
                                       [("max / mean routed tokens per GPU", [("load_imbalance", "", 1.0)])],
                                       out_dir / "load_imbalance.png"),
        "max_link_load": _line_figure(table, x, others, f"{pre}busiest link (bytes / achievable rate)", [
            ("per all-to-all: busiest GPU egress (ms)", [("max_link_load_s", "", 1e3)]),
            ("over the step: busiest port (ms)", [("max_link_load_step_s", "", 1e3)]),
        ], out_dir / "max_link_load.png"),
        "step_time": _line_figure(table, x, others, f"{pre}step time",
                                  [("step time (ms)", [("step_time_s", "", 1e3)])], out_dir / "step_time.png"),
    }
    return paths


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG (atomically) and free it."""
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


def pareto_plot(table: pd.DataFrame, column: str, larger: bool, front: np.ndarray, path: Path, title: str) -> Path:
    """The searched layouts: the objective against the memory per GPU, the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(8, 5))
    mem = table.memory_peak_bytes.to_numpy() / 2**30
    values = table[column].to_numpy()
    ax.scatter(mem[~front], values[~front], color="0.6", s=18, label="layout")
    order = np.argsort(mem[front])
    ax.plot(mem[front][order], values[front][order], "o-", color="C3", label="Pareto front")
    best = 0  # the ranked table's first row
    ax.annotate(table.layout.iloc[best], (mem[best], values[best]), textcoords="offset points", xytext=(6, 6),
                fontsize=8)
    ax.set_xlabel("memory per GPU (GiB, busiest GPU)")
    ax.set_ylabel(column + ("" if larger else " (lower is better)"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
