"""Many-step runs side by side: load imbalance and step time per step (the issue's adaptive-gating plot)."""
from __future__ import annotations

from pathlib import Path

from reports.figures import Styles, new_figure, outside_legend, save_png


def per_step_figure(runs: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """runs: label -> summary.json's per_step list. Two panels against the step: max / mean routed
    tokens per GPU, and step time (ms); one legend (the runs) right of them."""
    styles = Styles([], list(runs), bars=False)
    fig, axs, corner = new_figure(2, 5.0, 4.0, len(runs) > 1)
    for si, (label, steps) in enumerate(runs.items()):
        x = [p["step"] for p in steps]
        style = {**styles.line("", si), "markersize": 3 + 0.6 * max(0, min(len(runs), 5) - 1 - si), "label": label}
        axs[0].plot(x, [p["load_imbalance"] for p in steps], **style)
        axs[1].plot(x, [p["step_time_s"] * 1e3 for p in steps], **style)
    axs[0].set_ylabel("load imbalance (max / mean tokens per GPU)")
    axs[1].set_ylabel("step time (ms)")
    for ax in axs:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if len(runs) == 1:  # one run: no legend to tell lines apart, its name goes in the title
        title = " ".join(part for part in (title, f"({next(iter(runs))})") if part)
    else:
        outside_legend(corner, *axs[0].get_legend_handles_labels())
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, Path(path))
