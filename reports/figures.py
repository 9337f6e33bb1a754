"""What every epsim figure shares: the Agg backend, a constrained layout with the legend outside
the axes, colours and line styles for two factors at once, log axes for wide ranges, atomic PNGs."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from hardware.atomic import write_atomic  # noqa: E402

# a second factor (the other swept axes) when colour already names the curve
SERIES_LINESTYLES = ("-", "--", ":", "-.")
SERIES_MARKERS = ("o", "^", "D", "v", "P", "X")
SERIES_HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def rotate_if_crowded(ax, labels: list[str]) -> None:
    if sum(len(s) + 2 for s in labels) > 45:
        ax.tick_params(axis="x", labelrotation=30)
        for text in ax.get_xticklabels():
            text.set_horizontalalignment("right")


def log_scale_if_wide(ax, values, axes: str = "y", min_ratio: float = 10.0) -> bool:
    """The largest value `min_ratio` (a decade) or more times the smallest: log-10 on `axes` ("y",
    "x" or "xy"; ticks at 1, 2, 5 x 10^k, written out), so the small ones stay readable. Returns
    whether it did."""
    values = [v for v in values if np.isfinite(v) and v > 0]
    if not values or max(values) < min_ratio * min(values):
        return False
    for name in axes:
        (ax.set_xscale if name == "x" else ax.set_yscale)("log")
        axis = ax.xaxis if name == "x" else ax.yaxis
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: fmt_tick(v)))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return True


def fmt_value(value: float) -> str:
    """3 significant digits without exponents: 0.782, 15.5, 1,630."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def fmt_tick(value: float) -> str:
    """A log axis tick, short enough that 1-2-5 ticks over several decades do not collide: 0.5, 200, 5k, 20k."""
    return f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"


class Styles:
    """Colours, line styles and legend entries of a figure's curves (the columns a panel draws:
    NVLink / IB, dispatch / combine) and series (the other swept axes' combinations). One factor:
    colour names it. Both: colour names the curve, line style and marker (bars: hatch) the series,
    and the legend lists the two factors apart instead of every product of them."""

    def __init__(self, curves: list[str], series: list[str], bars: bool):
        self.curves, self.series, self.bars = [c for c in curves if c], series, bars
        self.both = len(self.curves) > 1 and len(self.series) > 1

    def _color(self, curve: str, si: int) -> str:
        if len(self.curves) > 1:
            return f"C{self.curves.index(curve) % 10}" if curve in self.curves else "C0"
        return f"C{si % 10}"

    def line(self, curve: str, si: int) -> dict:
        style = {"color": self._color(curve, si), "marker": "o", "linestyle": "-"}
        if len(self.curves) <= 1 and len(self.series) > 1:
            # series that coincide (a seed the routing ignores) stay visible as nested markers
            style.update(marker=SERIES_MARKERS[si % len(SERIES_MARKERS)],
                         markersize=5 + 1.5 * max(0, min(len(self.series), 5) - 1 - si))
        if self.both:
            style.update(linestyle=SERIES_LINESTYLES[si % len(SERIES_LINESTYLES)],
                         marker=SERIES_MARKERS[si % len(SERIES_MARKERS)])
        if "_bwd" in curve:
            # backward collectives often equal their forward twins: hollow and larger, so both show
            style.update(markerfacecolor="none", markersize=8, marker=style["marker"] if self.both else "s")
        return style

    def bar(self, curve: str, si: int) -> dict:
        style = {"facecolor": self._color(curve, si), "edgecolor": "white", "linewidth": 0.5}
        if self.both:
            style.update(hatch=SERIES_HATCHES[si % len(SERIES_HATCHES)], edgecolor="0.25")
        return style

    def _curve_handle(self, curve: str):
        if self.bars:
            return Patch(facecolor=self._color(curve, 0))
        hollow = {"markerfacecolor": "none", "markersize": 8} if "_bwd" in curve else {}
        return Line2D([], [], color=self._color(curve, 0), marker="s" if hollow else "o", **hollow)

    def _series_handle(self, si: int):
        if not self.both:
            return Patch(**self.bar("", si)) if self.bars else Line2D([], [], **self.line("", si))
        if self.bars:
            return Patch(facecolor="white", edgecolor="0.25", hatch=SERIES_HATCHES[si % len(SERIES_HATCHES)])
        return Line2D([], [], color="0.2", linestyle=SERIES_LINESTYLES[si % len(SERIES_LINESTYLES)],
                      marker=SERIES_MARKERS[si % len(SERIES_MARKERS)])

    def legend(self) -> tuple[list, list[str]]:
        """(handles, labels): the curves by colour, then the series (by colour when they are the only
        factor, by line style / hatch beside curves)."""
        handles, labels = [], []
        if len(self.curves) > 1 or (self.curves and len(self.series) <= 1):
            handles += [self._curve_handle(c) for c in self.curves]
            labels += self.curves
        if len(self.series) > 1:
            handles += [self._series_handle(si) for si in range(len(self.series))]
            labels += self.series
        return handles, labels


def outside_legend(ax, handles, labels) -> None:
    """The figure's one legend, right of `ax` (its top-right axes), top-aligned with it (below the
    title); constrained layout makes room for it."""
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                  ncols=1 if len(handles) <= 22 else 2, frameon=False)


def new_figure(num_panels: int, width: float, height: float, legend: bool, max_columns: int = 3, **kwargs):
    """A constrained-layout figure of `num_panels` axes, up to `max_columns` a row (the spare ones
    removed); returns (figure, the axes in reading order, the top-right axes for the legend)."""
    ncols = max(1, min(num_panels, max_columns))
    nrows = -(-max(num_panels, 1) // ncols)
    fig = plt.figure(figsize=(width * ncols + (2.6 if legend else 0.0), height * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    axs = list(grid.flat)
    for ax in axs[max(num_panels, 1):]:
        fig.delaxes(ax)
    return fig, axs[:max(num_panels, 1)], grid[0][-1]


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG (atomically) and free it. A figure without a layout engine of its own
    (constrained) is laid out tight."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path
