"""Many-step runs side by side: load imbalance and step time per step (the issue's adaptive-gating plot)."""
from __future__ import annotations

from pathlib import Path

from reports.plots import plt, save_png


def per_step_figure(runs: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """runs: label -> summary.json's per_step list. Two panels against the step: max / mean routed
    tokens per GPU, and step time (ms)."""
    fig, axs = plt.subplots(1, 2, figsize=(10.4, 4.0))
    for label, steps in runs.items():
        x = [p["step"] for p in steps]
        axs[0].plot(x, [p["load_imbalance"] for p in steps], marker="o", markersize=3, label=label)
        axs[1].plot(x, [p["step_time_s"] * 1e3 for p in steps], marker="o", markersize=3, label=label)
    axs[0].set_ylabel("load imbalance (max / mean tokens per GPU)")
    axs[1].set_ylabel("step time (ms)")
    for ax in axs:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, Path(path))
