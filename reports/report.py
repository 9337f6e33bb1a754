"""report.md and report.html of a sweep: the scenario, the grid, the plots and the table."""
from __future__ import annotations

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


def _template():
    """The HTML page, a Jinja2 template with HTML autoescaping: every value (scenario names, swept
    values, errors: the user's text) is escaped."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), keep_trailing_newline=True)
    return env.get_template("sweep_report.html.j2")


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

    page = _template().render(
        title=title, scenario_path=scenario_path, combine=grid.get("combine", "product"),
        axes=list(grid.get("axes", {}).items()), fixed=[(k, repr(v)) for k, v in grid.get("fixed", {}).items()],
        num_ok=int((table["status"] == "ok").sum()), num_points=len(table),
        failed=[(r["label"], r["status"], r["error"]) for _, r in failed.iterrows()], plots=list(rel.items()),
        columns=[str(c) for c in shown.columns], rows=[list(row) for row in shown.itertuples(index=False)],
        scenario_yaml=scenario_yaml)
    write_atomic(paths["report_html"], page)
    return paths
