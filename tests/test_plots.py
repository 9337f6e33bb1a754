"""Scaling plots and the sweep report, from a sweep table (no simulation)."""
import matplotlib.pyplot as plt
import pandas as pd

from reports.plots import pick_x_axis, scaling_plots
from reports.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = {"mfu", "step_breakdown", "bandwidth", "collectives", "tokens_per_s", "load_imbalance", "max_link_load", "step_time"}


def sweep_rows(ep_sizes=(8, 16, 32, 64), failed=(8,)) -> pd.DataFrame:
    rows = []
    for i, ep in enumerate(ep_sizes):
        row = {"index": i, "label": f"ep_size={ep}", "status": "invalid" if ep in failed else "ok",
               "parallel.ep_size": ep, "error": "does not fit memory" if ep in failed else None}
        if ep not in failed:
            step = 0.4 + 0.01 * i
            row.update({"step_time_s": step, "mfu": 0.7 - 0.01 * i, "tokens_per_s_per_gpu": 20000.0 - 100 * i,
                        "compute_s": 0.3, "exposed_comm_s": 0.05 + 0.01 * i, "idle_s": step - 0.35 - 0.01 * i,
                        "nvlink_util": 0.5, "ib_util": 0.8, "nvlink_util_step": 0.1, "ib_util_step": 0.2,
                        "dispatch_mean_time_s": 1e-3 * (1 + i), "combine_mean_time_s": 2e-3 * (1 + i),
                        "dispatch_bytes_per_gpu": 3e7, "combine_bytes_per_gpu": 6e7, "load_imbalance": 1.1 + 0.05 * i})
        rows.append(row)
    return pd.DataFrame(rows)


def test_scaling_plots_writes_every_plot_as_a_png(tmp_path):
    paths = scaling_plots(sweep_rows(), ["parallel.ep_size"], tmp_path, "dsv3")
    assert set(paths) == PLOTS
    for path in paths.values():
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert not plt.get_fignums()  # every figure closed


def test_a_sweep_with_no_simulated_point_draws_nothing(tmp_path):
    assert scaling_plots(sweep_rows(failed=(8, 16, 32, 64)), ["parallel.ep_size"], tmp_path) == {}


def test_the_x_axis_is_the_first_numeric_axis():
    table = sweep_rows().assign(**{"routing.distribution": "zipf"})
    assert pick_x_axis(["routing.distribution", "parallel.ep_size"], table) == "parallel.ep_size"


def test_two_axes_draw_one_line_per_value_of_the_second(tmp_path):
    a, b = sweep_rows(failed=()), sweep_rows(failed=())
    table = pd.concat([a.assign(**{"routing.seed": 0}), b.assign(**{"routing.seed": 1})], ignore_index=True)
    paths = scaling_plots(table, ["parallel.ep_size", "routing.seed"], tmp_path)
    assert set(paths) == PLOTS


def test_report_embeds_the_plots_the_table_the_failures_and_the_scenario(tmp_path):
    table = sweep_rows()
    plots = scaling_plots(table, ["parallel.ep_size"], tmp_path / "plots")
    files = write_report(tmp_path, "dsv3-ep", "scenarios/default.yaml", "name: dsv3-ep\n",
                         {"axes": {"parallel.ep_size": [8, 16, 32, 64]}, "fixed": {}}, table,
                         ["parallel.ep_size"], plots)
    md = files["report_md"].read_text()
    assert "# Sweep: dsv3-ep" in md and "scenarios/default.yaml" in md and "name: dsv3-ep" in md
    assert sum(f"(plots/{name}.png)" in md for name in PLOTS) == len(PLOTS)
    assert "ep_size=8: invalid: does not fit memory" in md
    assert "| 16 | ok | 410.00 | 69.0 |" in md  # ep_size, status, step (ms), MFU (%)
    html = files["report_html"].read_text()
    assert html.count("<img ") == len(PLOTS) and "<table" in html


def test_per_step_figure_draws_one_line_per_run(tmp_path):
    from reports.steps_plot import per_step_figure
    runs = {f"alpha {a}": [{"step": i, "load_imbalance": 2.0 - a * i, "step_time_s": 0.1 - 0.01 * a * i}
                           for i in range(5)] for a in (0.1, 0.3)}
    path = per_step_figure(runs, tmp_path / "per_step.png", "adaptive gating")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
