"""report.md and report.html of a sweep: the scenario, the grid, the plots and the table."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from hardware.atomic import write_atomic
from reports.strategy import strategy_section

# Columns shown in the report (the CSV/Parquet hold them all), with their display units.
REPORT_COLUMNS = (
    ("step_time_s", "step (ms)", 1e3, "{:.2f}"),
    ("mfu", "MFU (%)", 100.0, "{:.1f}"),
    ("tokens_per_s_per_gpu", "tok/s/GPU", 1.0, "{:,.0f}"),
    ("compute_s", "compute (ms)", 1e3, "{:.2f}"),
    ("exposed_comm_s", "exposed comm (ms)", 1e3, "{:.2f}"),
    ("idle_s", "idle (ms)", 1e3, "{:.2f}"),
    ("nvlink_util", "NVLink util (%)", 100.0, "{:.1f}"),
    ("ib_util", "IB util (%)", 100.0, "{:.1f}"),
    ("dispatch_mean_time_s", "dispatch (ms)", 1e3, "{:.3f}"),
    ("combine_mean_time_s", "combine (ms)", 1e3, "{:.3f}"),
    ("dispatch_bytes_per_gpu", "dispatch (MB/GPU)", 1e-6, "{:.1f}"),
    ("combine_bytes_per_gpu", "combine (MB/GPU)", 1e-6, "{:.1f}"),
    ("load_imbalance", "imbalance", 1.0, "{:.3f}"),
    ("max_link_load_s", "busiest link per a2a (ms)", 1e3, "{:.3f}"),
)


def display_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The sweep table in display units, one row per point; failed points show their status."""
    rows = []
    for _, r in table.iterrows():
        row = {a.rsplit(".", 1)[-1]: r.get(a) for a in axes}
        row["status"] = r["status"]
        for column, title, scale, fmt in REPORT_COLUMNS:
            value = r.get(column)
            row[title] = "" if value is None or pd.isna(value) else fmt.format(value * scale)
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [["" if v is None else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def write_report(out_dir: Path, title: str, scenario_path: str, scenario_yaml: str, grid: dict,
                 table: pd.DataFrame, axes: list[str], plots: dict[str, Path]) -> dict[str, Path]:
    """Write report.md and report.html next to the plots; returns their paths."""
    out_dir = Path(out_dir)
    shown = display_table(table, axes)
    failed = table[table["status"] != "ok"]
    rel = {name: Path(p).relative_to(out_dir).as_posix() for name, p in plots.items()}
    grid_lines = [f"- `{k}` = {v}" for k, v in grid.get("axes", {}).items()]
    grid_lines += [f"- `{k}` = {v!r} (fixed)" for k, v in grid.get("fixed", {}).items()]

    md = [f"# Sweep: {title}", "",
          f"Scenario file `{scenario_path}`, swept over ({grid.get('combine', 'product')}):", "", *grid_lines, "",
          f"{int((table['status'] == 'ok').sum())} of {len(table)} points simulated. Full numbers: "
          "`sweep.csv` / `sweep.parquet`; each point's `summary.json` is under `points/`.", ""]
    if len(failed):
        md += ["Points not simulated:", ""]
        md += [f"- {r['label']}: {r['status']}: {r['error']}" for _, r in failed.iterrows()]
        md += [""]
    md += strategy_section(table, axes, _markdown_table)
    md += ["## Plots", ""]
    md += [f"![{name}]({path})" for name, path in rel.items()]
    md += ["", "## Table", "", _markdown_table(shown), "",
           "## Scenario (base file, before the swept overrides)", "", "```yaml", scenario_yaml.rstrip(), "```", ""]
    paths = {"report_md": out_dir / "report.md", "report_html": out_dir / "report.html"}
    write_atomic(paths["report_md"], "\n".join(md))

    e = html.escape
    body = [f"<h1>Sweep: {e(title)}</h1>", f"<p>Scenario file <code>{e(scenario_path)}</code>, swept over ({e(grid.get('combine', 'product'))}):</p>",
            "<ul>" + "".join(f"<li>{e(line[2:])}</li>" for line in grid_lines) + "</ul>"]
    if len(failed):
        body.append("<p>Points not simulated:</p><ul>" + "".join(
            f"<li>{e(str(r['label']))}: {e(str(r['status']))}: {e(str(r['error']))}</li>" for _, r in failed.iterrows())
            + "</ul>")
    body += [f'<img src="{e(p)}" alt="{e(n)}" style="max-width:100%">' for n, p in rel.items()]
    body += ["<h2>Table</h2>", shown.to_html(index=False, escape=True),
             "<h2>Scenario</h2>", f"<pre>{e(scenario_yaml)}</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + e(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    write_atomic(paths["report_html"], page)
    return paths
