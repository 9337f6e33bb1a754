"""Which placement strategy wins where: a sweep whose axes include placement keys, read point by point.

For every combination of the other axes (the skew, the EP size, ...), the strategies' points are
compared on step time; the section names the fastest, its gain over round-robin, and the
imbalance and busiest link that explain it. Pure: a table in, markdown lines out.
"""
from __future__ import annotations

import pandas as pd


def strategy_axes(axes: list[str]) -> list[str]:
    return [a for a in axes if a.startswith("placement.")]


def _label(row, keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in keys)


def winners(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per combination of the non-placement axes: every strategy's step time, the fastest,
    its gain over round-robin, and its imbalance and busiest link per all-to-all next to round-robin's."""
    keys, others = strategy_axes(axes), [a for a in axes if not a.startswith("placement.")]
    ok = table[table["status"] == "ok"]
    rows = []
    groups = ok.groupby(others, sort=False) if others else [((), ok)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        best = group.loc[group["step_time_s"].idxmin()]
        rr = group[group["placement.strategy"] == "round_robin"] if "placement.strategy" in group else group.iloc[:0]
        row = {a.rsplit(".", 1)[-1]: v for a, v in zip(others, values)}
        row.update({f"{_label(r, keys)} (ms)": f"{r['step_time_s'] * 1e3:.2f}" for _, r in group.iterrows()})
        row.update({
            "fastest": _label(best, keys),
            "vs round_robin": f"{rr['step_time_s'].iloc[0] / best['step_time_s']:.2f}x" if len(rr) else "",
            "imbalance (round_robin)": (f"{best['load_imbalance']:.2f} ({rr['load_imbalance'].iloc[0]:.2f})"
                                        if len(rr) else f"{best['load_imbalance']:.2f}"),
            "busiest link ms (round_robin)": (
                f"{best.get('max_link_load_s', float('nan')) * 1e3:.2f} ({rr['max_link_load_s'].iloc[0] * 1e3:.2f})"
                if len(rr) and "max_link_load_s" in rr else f"{best.get('max_link_load_s', float('nan')) * 1e3:.2f}"),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def strategy_section(table: pd.DataFrame, axes: list[str], markdown_table) -> list[str]:
    """report.md lines: the winners table and a count of wins per strategy; nothing without placement axes."""
    if not strategy_axes(axes) or not (table["status"] == "ok").any():
        return []
    best = winners(table, axes)
    counts = best["fastest"].value_counts()
    lines = ["## Which strategy wins where", "",
             "Step time of every strategy per combination of the other axes, the fastest (ties go to the first "
             "in the grid), its gain over round-robin, and its load imbalance (max / mean routed tokens per GPU) "
             "and busiest link per all-to-all (busiest GPU egress port's bytes / rate) next to round-robin's:", "",
             markdown_table(best), "",
             "Wins: " + "; ".join(f"{name}: {n}" for name, n in counts.items()) + ".", ""]
    return lines
