"""Scaling plots of a sweep table against its swept axis (PNG, matplotlib Agg).

The x axis is the first numeric axis, or with `--zip` all the axes together (each tick names every
zipped value: "64 / 8"); every combination of the other axes is its own line (or its own panel, for
the stacked step-time breakdown). A non-numeric x axis (an algorithm, a flag) is drawn as grouped
bars: a line between categories would invent an order and values between them. Points that failed
are left out and named under the title. An x axis of powers of two (EP sizes) is drawn log-2, a y
range spanning a decade or more log-10. Legends sit outside the axes, so they never hide a point.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from reports.figures import (
    Styles,
    fmt_value,
    log_scale_if_wide,
    new_figure,
    outside_legend,
    plt,
    rotate_if_crowded,
    save_png,
)
from simulator.engine.collective import COLLECTIVES

BREAKDOWN = (("compute_s", "compute", "#4c72b0"), ("exposed_comm_s", "exposed comm", "#dd8452"),
             ("idle_s", "idle", "#b0b0b0"))
MAX_BAR_LABELS = 30  # more bars than this and their value labels would collide
MAX_LISTED_VALUES = 8  # values of one axis spelled out in a title


def _is_numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def _is_pow2(values) -> bool:
    return all(float(v) > 0 and float(np.log2(float(v))).is_integer() for v in values)


def _fmt(value) -> str:
    return f"{value:g}" if _is_numeric([value]) else str(value)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def pick_x_axis(axes: list[str], table: pd.DataFrame) -> str | None:
    for key in axes:
        if key in table and _is_numeric(table[key].dropna().tolist()):
            return key
    return axes[0] if axes else None


@dataclass(frozen=True)
class XAxis:
    """What the x axis shows: one swept key, or every zipped key (their values move together)."""
    keys: tuple[str, ...]
    position: str  # the key whose values place the points (the first numeric one)
    numeric: bool

    @property
    def label(self) -> str:
        return " / ".join(self.keys)

    def tick(self, row) -> str:
        return " / ".join(_fmt(row[k]) for k in self.keys)


def x_axis(table: pd.DataFrame, axes: list[str], zipped: bool = False) -> tuple[XAxis, list[str]] | None:
    """(the x axis, the other axes: one line each); None without axes."""
    axes = [a for a in axes if a in table]
    position = pick_x_axis(axes, table)
    if position is None:
        return None
    numeric = _is_numeric(table[position].dropna().tolist())
    if zipped:
        return XAxis(tuple(axes), position, numeric), []
    return XAxis((position,), position, numeric), [a for a in axes if a != position]


def _series(table: pd.DataFrame, xa: XAxis, others: list[str]):
    """(legend label, ok rows in x order) for each combination of the other axes, in grid order."""
    ok = table[table["status"] == "ok"]
    ok = ok.sort_values(xa.position, kind="stable") if xa.numeric else ok
    if not others:
        yield "", ok
        return
    for values, group in ok.groupby(others, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in zip(others, values)), group


def _categories(table: pd.DataFrame, xa: XAxis) -> list[str]:
    """The tick texts of the ok points, in grid order (a bar group each)."""
    ok = table[table["status"] == "ok"]
    return list(dict.fromkeys(xa.tick(r) for _, r in ok.iterrows()))


def _format_x(ax, xa: XAxis, table: pd.DataFrame) -> None:
    ok = table[table["status"] == "ok"]
    ax.set_xlabel(xa.label)
    if not xa.numeric:
        cats = _categories(table, xa)
        ax.set_xticks(np.arange(len(cats)), cats)
        rotate_if_crowded(ax, cats)
        return
    ticks = {float(r[xa.position]): xa.tick(r) for _, r in ok.iterrows()}
    xs = sorted(ticks)
    if _is_pow2(xs) and len(xs) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xa.label + " (log2)")
    if len(xs) <= 12 or ax.get_xscale() == "log":
        ax.set_xticks(xs, [ticks[v] for v in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        rotate_if_crowded(ax, [ticks[v] for v in xs])


def _values_text(table: pd.DataFrame, key: str) -> str:
    values = list(dict.fromkeys(_fmt(v) for v in table[key].tolist()))
    if len(values) > MAX_LISTED_VALUES:
        values = values[:3] + ["…"] + values[-2:]
    return ", ".join(values)


def sweep_caption(table: pd.DataFrame, axes: list[str], zipped: bool = False, name: str = "") -> list[str]:
    """The sweep in words, in pieces a title may break between: ['NAME sweep: ep_size = 8, 16',
    '× all_to_all = direct, hierarchical'] (with --zip: 'zipped with nodes = 1, 2')."""
    parts = [f"{_short(k)} = {_values_text(table, k)}" for k in axes if k in table]
    joiner = "zipped with " if zipped else "× "
    parts = parts[:1] + [joiner + part for part in parts[1:]]
    return [f"{name} sweep: " + parts[0] if name else "sweep: " + parts[0], *parts[1:]] if parts else [name]


def _failed_note(table: pd.DataFrame, axes: list[str]) -> str:
    """Each point not plotted, or when that is too long, what they share: 'ep_size=2: 4 invalid'."""
    bad = table[table["status"] != "ok"]
    if not len(bad):
        return ""
    named = "; ".join(f"{r.get('label', r.get('index'))}: {r['status']}" for _, r in bad.iterrows())
    if len(named) <= 120:
        return "not plotted: " + named
    counts = ", ".join(f"{n} {status}" for status, n in bad["status"].value_counts().items())
    shared = [f"{_short(k)}={_fmt(bad[k].iloc[0])}" for k in axes if k in bad and bad[k].nunique(dropna=False) == 1]
    return f"not plotted: {' '.join(shared)}: {counts}" if shared else f"not plotted: {counts} (see report.md)"


def _title(fig, subject: str, caption: list[str], table: pd.DataFrame, axes: list[str]) -> None:
    """The subject, the sweep (broken between axes to the figure's width) and the points left out."""
    width = max(50, int(fig.get_figwidth() * 11))  # characters of 10 pt text per inch, about
    lines = [subject, ""]
    for part in caption:
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {part}".strip()
    note = _failed_note(table, axes)
    if note:
        lines += textwrap.wrap(note, width)
    fig.suptitle("\n".join(lines), fontsize=10)


def _present(series, curves) -> list:
    return [c for c in curves if any(c[0] in rows and rows[c[0]].notna().any() for _, rows in series)]


def _line_figure(table, xa: XAxis, others, subject, caption, panels):
    """panels: [(ylabel, [(column, label, scale), ...]), ...]: one axes per panel."""
    series = list(_series(table, xa, others))
    panels = [(ylabel, _present(series, curves)) for ylabel, curves in panels]
    curve_names = list(dict.fromkeys(label for _, curves in panels for _, label, _ in curves))
    styles = Styles(curve_names, [name for name, _ in series], bars=not xa.numeric)
    handles, labels = styles.legend()
    fig, axs, corner = new_figure(len(panels), 5.0, 4.2, bool(handles))
    cats = _categories(table, xa)
    for ax, (ylabel, curves) in zip(axs, panels):
        values = []
        bars = [(si, rows, curve) for si, (_, rows) in enumerate(series) for curve in curves]
        width = 0.8 / max(len(bars), 1)
        for bi, (si, rows, (column, label, scale)) in enumerate(bars):
            ys = rows[column].to_numpy(dtype=float) * scale
            values += ys.tolist()
            if xa.numeric:
                ax.plot(rows[xa.position].to_numpy(dtype=float), ys, **styles.line(label, si))
                continue
            pos = np.array([cats.index(xa.tick(r)) for _, r in rows.iterrows()]) - 0.4 + width * (bi + 0.5)
            container = ax.bar(pos, ys, width, **styles.bar(label, si))
            if len(bars) * len(cats) <= MAX_BAR_LABELS:  # each bar's value; turned when bars are narrow
                ax.bar_label(container, labels=[fmt_value(v) if np.isfinite(v) else "" for v in ys], fontsize=6,
                             padding=1,
                             rotation=90 if len(bars) > 3 else 0)
        if not curves:  # e.g. a table written before the column existed
            ax.text(0.5, 0.5, "not in these results", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_ylabel(ylabel)
        _format_x(ax, xa, table)
        log_scale_if_wide(ax, values)
        ax.grid(True, axis="y" if not xa.numeric else "both", alpha=0.3)
        if not xa.numeric:
            ax.margins(y=0.12)  # room above the tallest bar for its value
    outside_legend(corner, handles, labels)
    _title(fig, subject, caption, table, others + list(xa.keys))
    return fig


def _breakdown_figure(table, xa: XAxis, others, subject, caption):
    series = list(_series(table, xa, others))
    fig, axs, corner = new_figure(len(series), 5.0, 4.2, True, sharey=True)
    top = 0.0
    for ax, (legend, rows) in zip(axs, series):
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
        top = max(top, bottom.max(initial=0.0))
        ticks = [xa.tick(r) for _, r in rows.iterrows()]
        ax.set_xticks(pos, ticks)
        rotate_if_crowded(ax, ticks)
        ax.set_xlabel(xa.label)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("step time (ms), per-GPU mean; labels: ms")
        ax.set_title(legend, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axs[0].set_ylim(0, top * 1.18 or 1.0)  # shared: room above the tallest bar for its labels
    outside_legend(corner, *axs[0].get_legend_handles_labels())
    _title(fig, subject, caption, table, others + list(xa.keys))
    return fig


def scaling_figures(table: pd.DataFrame, axes: list[str], scenario: str = "", zipped: bool = False) -> dict:
    """The scaling plots of a sweep table as open figures, {name: Figure} (the caller closes them);
    nothing when no point is ok. zipped: the axes moved together (`--zip`): one x axis showing them
    all, not a line per value."""
    picked = x_axis(table, axes, zipped)
    if picked is None or not (table["status"] == "ok").any():
        return {}
    xa, others = picked
    caption = sweep_caption(table, axes, zipped, scenario)
    kinds = [k for k in COLLECTIVES if f"{k}_mean_time_s" in table]

    def line(subject, panels):
        return _line_figure(table, xa, others, f"{subject} vs {xa.label}", caption, panels)

    return {
        "mfu": line("MFU", [("MFU (% of peak dense BF16)", [("mfu", "", 100.0)])]),
        "step_breakdown": _breakdown_figure(table, xa, others, "step time: compute / exposed comm / idle", caption),
        "bandwidth": line("link bandwidth utilisation", [
            ("utilisation while busy (% of line rate)", [("nvlink_util", "NVLink", 100.0), ("ib_util", "IB", 100.0)]),
            ("utilisation over the step (% of line rate)",
             [("nvlink_util_step", "NVLink", 100.0), ("ib_util_step", "IB", 100.0)]),
        ]),
        "collectives": line("collectives per GPU", [
            ("mean time per call (ms)", [(f"{k}_mean_time_s", k, 1e3) for k in kinds]),
            ("bytes sent per GPU per call (MB)", [(f"{k}_bytes_per_gpu", k, 1e-6) for k in kinds]),
        ]),
        "tokens_per_s": line("throughput per GPU", [("tokens / s per GPU", [("tokens_per_s_per_gpu", "", 1.0)])]),
        "load_imbalance": line("load imbalance", [("max / mean routed tokens per GPU", [("load_imbalance", "", 1.0)])]),
        "max_link_load": line("busiest link (bytes / achievable rate)", [
            ("per all-to-all: busiest GPU egress (ms)", [("max_link_load_s", "", 1e3)]),
            ("over the step: busiest port (ms)", [("max_link_load_step_s", "", 1e3)]),
        ]),
        "step_time": line("step time", [("step time (ms)", [("step_time_s", "", 1e3)])]),
    }


def scaling_plots(table: pd.DataFrame, axes: list[str], out_dir: Path, scenario: str = "",
                  zipped: bool = False) -> dict[str, Path]:
    """Write the scaling plots of a sweep table as OUT_DIR/<name>.png; returns {name: path}."""
    figures = scaling_figures(table, axes, scenario, zipped)
    if figures:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = {}
    try:
        for name in list(figures):
            paths[name] = save_png(figures.pop(name), Path(out_dir) / f"{name}.png")
    finally:
        for fig in figures.values():  # a failed write leaves no figure open
            plt.close(fig)
    return paths


def pareto_plot(table: pd.DataFrame, column: str, larger: bool, front: np.ndarray, path: Path, title: str) -> Path:
    """The searched layouts: the objective against the memory per GPU, the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
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
    outside_legend(ax, *ax.get_legend_handles_labels())
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)
