"""The validation error table (terminal, CSV) and the parity plot."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.table import Table

from hardware.atomic import write_atomic
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


def parity_plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    from reports.plots import save_png

    done = [r for r in rows if r["predicted"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    units = sorted({r["unit"] or "fraction" for r in done})
    markers = dict(zip(units, "os^Dv<>p"))
    for unit in units:
        pts = [r for r in done if (r["unit"] or "fraction") == unit]
        ax.scatter([r["published"] for r in pts], [r["predicted"] for r in pts], marker=markers[unit], label=unit)
    lo = min(min(r["published"], r["predicted"]) for r in done) * 0.7
    hi = max(max(r["published"], r["predicted"]) for r in done) * 1.4
    line = [lo, hi]
    ax.plot(line, line, "k-", lw=1, label="parity")
    ax.fill_between(line, [x * 0.9 for x in line], [x * 1.1 for x in line], color="grey", alpha=0.25, label="±10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published (unit as in legend)")
    ax.set_ylabel("epsim predicted (same unit)")
    ax.set_title("epsim vs published measurements")
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=120)
