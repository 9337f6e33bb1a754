"""The terminal summary: where the time went, in one glance."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _ms(x: float) -> str:
    return f"{x * 1e3:,.3f} ms"


def _gb(x: float) -> str:
    return f"{x / 1e9:,.3f} GB"


def summary_tables(summary: dict) -> list[Table]:
    layout = summary["layout"]
    head = Table(title=f"epsim: {summary['scenario']}  ({summary['num_gpus']} GPUs, "
                       f"EP {layout['ep_size']} x DP {layout['dp_size']})", show_header=False, title_justify="left")
    head.add_column("metric", style="bold")
    head.add_column("value", justify="right")
    b = summary["breakdown_s"]
    step = summary["step_time_s"]
    rows = [
        ("step time", _ms(step)),
        ("MFU (of peak dense BF16)", f"{summary['mfu'] * 100:.1f} %"),
        ("model TFLOPS per GPU", f"{summary['model_tflops_per_gpu']:.1f}"),
        ("tokens / s (cluster)", f"{summary['tokens_per_s']:,.0f}"),
        ("compute", f"{_ms(b['compute'])}  ({b['compute'] / step * 100:.1f} %)"),
        ("exposed comm", f"{_ms(b['exposed_comm'])}  ({b['exposed_comm'] / step * 100:.1f} %)"),
        ("idle", f"{_ms(b['idle'])}  ({b['idle'] / step * 100:.1f} %)"),
        ("load imbalance (max/mean)", f"{summary['load_imbalance']:.3f}"),
    ]
    serving = summary.get("serving")
    if serving is not None:
        if "itl_s" in summary:
            rows[1:1] = [("inter-token latency", _ms(summary["itl_s"])),
                         ("output tokens / s per GPU / node", f"{summary['tokens_per_s_per_gpu']:,.0f} / "
                                                              f"{summary['tokens_per_s_per_node']:,.0f}"),
                         (f"batch per GPU ({serving['attention'].upper()}-attention)",
                          f"{serving['batch_per_gpu']} of at most {serving['max_batch_per_gpu']} at "
                          f"{serving['context_len']} tokens")]
        else:
            rows[1:1] = [("time to first token", _ms(summary["ttft_s"])),
                         ("prefill tokens / s per node", f"{summary['tokens_per_s_per_node']:,.0f}")]
        tbo = serving["two_batch_overlap"]
        rows.append(("comm hidden behind compute", f"{_ms(tbo['hidden_comm_s'])} of {_ms(tbo['comm_in_flight_s'])}"
                                                   f"{' (two-batch overlap)' if tbo['enabled'] else ''}"))
    if layout.get("tp_size", 1) > 1 or layout.get("pp_size", 1) > 1:
        rows[:0] = [("layout", f"TP {layout['tp_size']} x PP {layout['pp_size']} x DP {layout['dense_dp_size']}, "
                               f"EP {layout['ep_size']} x expert DP {layout['expert_dp_size']}"),
                    ("pipeline bubble", f"{summary['pipeline_bubble_fraction'] * 100:.1f} % of the step")]
    for cls, util in summary["bandwidth_utilization"].items():
        rows.append((f"{cls} utilisation busy / step",
                     f"{util * 100:.1f} % / {summary['bandwidth_utilization_step'][cls] * 100:.1f} %"))
    if "seed_bandwidth" in summary:  # seed 5.2: actual / required all-to-all bytes (simulator/seed_bandwidth.py)
        sb = summary["seed_bandwidth"]
        rows.append(("all-to-all actual / required (seed 5.2)",
                     f"{sb['actual_bytes_per_s'] / 1e9:,.0f} / {sb['required_bytes_per_s'] / 1e9:,.0f} GB/s "
                     f"= {sb['utilization'] * 100:.1f} %"))
    simulated = summary.get("provenance", {}).get("simulated")
    if simulated:  # an extended step: what ran (the trace and per-layer rows are that run's)
        rows.append(("simulated", simulated.split("; ")[0]))
    for row in rows:
        head.add_row(*row)

    coll = Table(title="collectives (per GPU, first byte sent -> last byte received)", title_justify="left")
    for col in ("kind", "calls", "mean", "max", "out/GPU", "NVLink/GPU", "IB/GPU"):
        coll.add_column(col, justify="right" if col != "kind" else "left")
    for kind, c in summary["collectives"].items():
        coll.add_row(kind, str(c["count"]), _ms(c["mean_time_s"]), _ms(c["max_time_s"]),
                     _gb(c["mean_bytes_per_gpu"]), _gb(c["mean_nvlink_bytes_per_gpu"]), _gb(c["mean_ib_bytes_per_gpu"]))
    return [head, coll]


def wide_console(width: int) -> Console:
    """The terminal as it is, or, when output is piped or logged, `width` columns instead of
    rich's default 80, so tables are not squeezed. Markup is off: scenario names and swept values
    are the user's text (`[/x]` would be a closing tag)."""
    console = Console(markup=False)
    return console if console.is_terminal else Console(width=width, markup=False)


def print_summary(summary: dict, files: dict | None = None, console: Console | None = None) -> None:
    console = console or wide_console(120)
    for table in summary_tables(summary):
        console.print(table)
    for name, path in (files or {}).items():
        console.print(f"{name}: {path}")
