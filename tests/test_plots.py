"""Scaling plots and the sweep report, from a sweep table (no simulation)."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest

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


def test_per_step_figure_draws_one_line_per_run_and_one_legend_outside(tmp_path, monkeypatch):
    from reports.steps_plot import per_step_figure
    runs = {f"alpha {a}": [{"step": i, "load_imbalance": 2.0 - a * i, "step_time_s": 0.1 - 0.01 * a * i}
                           for i in range(5)] for a in (0.1, 0.3)}
    saved = {}
    monkeypatch.setattr("reports.steps_plot.save_png", lambda fig, path: saved.setdefault("fig", fig) and path)
    per_step_figure(runs, tmp_path / "per_step.png", "adaptive gating")
    fig = saved["fig"]
    fig.canvas.draw()
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["alpha 0.1", "alpha 0.3"]
    for ax in fig.axes:
        assert not figure_box(fig, legend).overlaps(ax.get_position())
    plt.close(fig)


def test_per_step_figure_is_written_as_a_png(tmp_path):
    from reports.steps_plot import per_step_figure
    path = per_step_figure({"one": [{"step": 0, "load_imbalance": 1.2, "step_time_s": 0.1}]}, tmp_path / "s.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and not plt.get_fignums()


# -- what the figures show (structure, not pixels) ------------------------------------------------
def figures_of(table, axes, **kwargs):
    from reports.plots import scaling_figures
    figures = scaling_figures(table, axes, "dsv3", **kwargs)
    for fig in figures.values():
        fig.canvas.draw()  # the constrained layout places axes and legends at draw time
    return figures


@pytest.fixture
def close_figures():
    yield
    plt.close("all")


def zipped_rows() -> pd.DataFrame:
    table = sweep_rows(ep_sizes=(8, 16, 32), failed=())
    table["hardware.nodes"] = [1, 2, 4]
    table["label"] = [f"ep_size={e} nodes={n}" for e, n in zip(table["parallel.ep_size"], table["hardware.nodes"])]
    return table


def tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_zipped_axes_label_every_tick_with_both_values_and_name_both_keys(close_figures):
    figures = figures_of(zipped_rows(), ["parallel.ep_size", "hardware.nodes"], zipped=True)
    for name in ("mfu", "step_breakdown", "collectives"):
        ax = figures[name].axes[0]
        assert tick_texts(ax) == ["8 / 1", "16 / 2", "32 / 4"], name
        assert "parallel.ep_size / hardware.nodes" in ax.get_xlabel()
    assert len(figures["mfu"].axes[0].lines) == 1  # one line through the zipped points, not one per node count


def test_the_same_two_axes_unzipped_draw_a_line_per_value_of_the_second(close_figures):
    figures = figures_of(zipped_rows(), ["parallel.ep_size", "hardware.nodes"])
    ax = figures["mfu"].axes[0]
    assert len(ax.lines) == 3 and tick_texts(ax) == ["8", "16", "32"]


def categorical_rows(overlaps=("three_stream",)) -> pd.DataFrame:
    parts = []
    for overlap in overlaps:
        table = sweep_rows(ep_sizes=(8, 16, 32), failed=()).drop(columns="parallel.ep_size")
        parts.append(table.assign(**{"network.all_to_all": ["direct", "hierarchical", "low_latency"],
                                     "pipeline.overlap": overlap}))
    table = pd.concat(parts, ignore_index=True)
    table["label"] = [f"all_to_all={a} overlap={o}" for a, o in zip(table["network.all_to_all"], table["pipeline.overlap"])]
    return table


def test_a_categorical_axis_is_drawn_as_bars_not_lines(close_figures):
    from matplotlib.container import BarContainer
    figures = figures_of(categorical_rows(), ["network.all_to_all"])
    for name in ("mfu", "bandwidth", "collectives", "step_time"):
        for ax in figures[name].axes:
            assert len(ax.lines) == 0, name
            assert ax.containers and all(isinstance(c, BarContainer) for c in ax.containers)
            assert tick_texts(ax) == ["direct", "hierarchical", "low_latency"]
    [mfu] = figures["mfu"].axes[0].containers
    assert [bar.get_height() for bar in mfu] == pytest.approx([70.0, 69.0, 68.0])
    # bandwidth: NVLink and IB side by side in each group, two colours
    nvlink, ib = figures["bandwidth"].axes[0].containers
    assert nvlink[0].get_x() < ib[0].get_x() < nvlink[1].get_x()
    assert nvlink[0].get_facecolor() != ib[0].get_facecolor()


def test_a_second_axis_over_categorical_bars_is_told_apart_by_hatch(close_figures):
    figures = figures_of(categorical_rows(overlaps=("none", "three_stream")), ["network.all_to_all", "pipeline.overlap"])
    fig = figures["collectives"]
    containers = fig.axes[0].containers
    assert len(containers) == 2 * 2  # dispatch and combine for each overlap
    assert [c[0].get_hatch() or "" for c in containers] == ["", "", "//", "//"]
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels == ["dispatch", "combine", "overlap=none", "overlap=three_stream"]  # the two factors, not their product


def figure_box(fig, artist):
    return artist.get_window_extent().transformed(fig.transFigure.inverted())


def test_legends_sit_outside_every_axes(close_figures):
    table = pd.concat([sweep_rows(failed=()).assign(**{"routing.seed": s}) for s in (0, 1)], ignore_index=True)
    figures = figures_of(table, ["parallel.ep_size", "routing.seed"])
    checked = 0
    for name, fig in figures.items():
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
        assert legends, name
        for legend in legends:
            box = figure_box(fig, legend)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_position()), name
            assert box.x1 <= 1.0 and box.y0 >= 0.0, name  # and inside the picture
            checked += 1
    assert checked == len(PLOTS)


def test_titles_name_the_sweep_its_keys_and_values_and_the_points_left_out(close_figures):
    figures = figures_of(sweep_rows(), ["parallel.ep_size"])
    title = figures["mfu"].get_suptitle()
    assert "MFU vs parallel.ep_size" in title
    assert "dsv3 sweep: ep_size = 8, 16, 32, 64" in title
    assert "not plotted: ep_size=8: invalid" in title
    zipped = figures_of(zipped_rows(), ["parallel.ep_size", "hardware.nodes"], zipped=True)
    assert "ep_size = 8, 16, 32 zipped with nodes = 1, 2, 4" in zipped["step_time"].get_suptitle().replace("\n", " ")


def suptitle_of(table, axes) -> str:
    figures = figures_of(table, axes)
    title = figures["mfu"].get_suptitle().replace("\n", " ")
    plt.close("all")
    return title


def test_failed_points_are_named_or_when_many_summarised_by_what_they_share():
    table = categorical_rows(overlaps=("none", "three_stream"))
    table.loc[table["network.all_to_all"] == "direct", "status"] = "invalid"
    axes = ["network.all_to_all", "pipeline.overlap"]
    assert "not plotted: all_to_all=direct overlap=none: invalid; all_to_all=direct overlap=three_stream: invalid" \
        in suptitle_of(table, axes)
    table = categorical_rows(overlaps=("none", "three_stream", "a", "b", "c"))
    table.loc[table["network.all_to_all"] == "direct", "status"] = "invalid"
    assert "not plotted: all_to_all=direct: 5 invalid" in suptitle_of(table, axes)
    table.loc[table["network.all_to_all"] == "hierarchical", "status"] = "failed"
    assert "not plotted: 5 invalid, 5 failed (see report.md)" in suptitle_of(table, axes)


def test_a_y_range_spanning_decades_is_drawn_log(close_figures):
    table = sweep_rows(failed=())
    table["combine_mean_time_s"] = 100 * table["dispatch_mean_time_s"]
    figures = figures_of(table, ["parallel.ep_size"])
    assert figures["collectives"].axes[0].get_yscale() == "log"
    assert figures["mfu"].axes[0].get_yscale() == "linear"
    assert figures["mfu"].axes[0].get_xscale() == "log"  # EP sizes: powers of two


# -- the validation parity plot -------------------------------------------------------------------
def vrow(case, metric, unit, published, predicted, status="ok"):
    error = None if predicted is None else (predicted / published - 1) * 100
    return {"case": case, "metric": metric, "unit": unit, "published": published, "predicted": predicted,
            "error_pct": error, "status": status}


VALIDATION_ROWS = [
    vrow("deepep-low-latency-ep8", "dispatch latency", "us", 77, 77.0, "fit: ll_kernel_overhead_us"),
    vrow("deepep-low-latency-ep8", "combine latency", "us", 114, 116.0),
    vrow("deepseek-v3-training-trace-ep64", "forward dispatch (FP8)", "us", 4346, 2800.0),
    vrow("deepep-normal-intranode-ep8", "dispatch NVLink logical bandwidth", "GB/s", 153, 156.0),
    vrow("deepep-normal-intranode-ep8", "combine NVLink logical bandwidth", "GB/s", 158, 157.0),
    vrow("megatron-mixtral-8x7b", "model TFLOPS per GPU", "TFLOPS", 468, 580.0),
    vrow("megatron-bridge-gpt-oss-120b-64-h100", "tokens per second per GPU", "tok/s", 5993, 11000.0),
    vrow("deepseek-v3-training-trace-ep64", "compute stream busy fraction", "", 0.916, 0.88),
    vrow("a-pending-case", "decode step", "ms", 91.9, None, "needs decode"),
]


def point_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == "point-label"]


def test_short_labels_drop_vendor_words_and_name_the_metric_only_when_the_case_has_several():
    from reports.validation import short_label
    assert short_label("deepep-low-latency-ep128", "combine latency") == "LL ep128 combine"
    assert short_label("deepseek-v3-training-trace-ep64", "attention backward per layer") == "trace ep64 attn bwd"
    assert short_label("megatron-mixtral-8x7b", "model TFLOPS per GPU", with_metric=False) == "mixtral 8x7b"
    assert len(short_label("x-" * 40, "m")) == 26


def test_parity_figure_has_a_panel_per_unit_with_parity_line_band_and_case_labels(close_figures):
    from matplotlib.collections import PolyCollection

    from reports.validation import parity_figure
    fig = parity_figure(VALIDATION_ROWS)
    fig.canvas.draw()
    titles = [ax.get_title().split(":")[0] for ax in fig.axes]
    assert titles == ["latency (µs)", "bandwidth (GB/s)", "model TFLOPS per GPU", "throughput (tokens / s)", "fraction"]
    latency, bandwidth, tflops, tokens, fraction = fig.axes
    assert latency.get_xscale() == latency.get_yscale() == "log"  # 77 to 4346 us
    assert tflops.get_xscale() == tflops.get_yscale() == "linear"  # 468 and 580
    for ax in fig.axes:
        assert ax.get_xlim() == ax.get_ylim()
        [parity] = [line for line in ax.lines if line.get_gid() == "parity"]
        assert list(parity.get_xdata()) == pytest.approx(list(parity.get_ydata()))
        [band] = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == "band"]
        xy = band.get_paths()[0].vertices
        inner = xy[xy[:, 0] > ax.get_xlim()[0] * 1.01]
        assert inner[:, 1].min() / inner[inner[:, 1].argmin(), 0] == pytest.approx(0.85)
        assert inner[:, 1].max() / inner[inner[:, 1].argmax(), 0] == pytest.approx(1.15)
    # the metric is named where the case has several in the panel
    assert sorted(point_labels(latency)) == ["LL ep8 combine", "LL ep8 dispatch", "trace ep64"]
    assert point_labels(bandwidth) and point_labels(tflops) == ["mixtral 8x7b"]
    assert point_labels(fraction) == ["trace ep64"]
    assert "1 metrics not predicted" in fig.get_suptitle()
    legend = fig.axes[2].get_legend()
    for ax in fig.axes:
        assert not figure_box(fig, legend).overlaps(ax.get_position())


def test_crowded_point_labels_never_overlap_and_the_left_out_are_counted(close_figures):
    from matplotlib.text import Text

    from reports.validation import parity_figure
    rows = [vrow(f"deepep-low-latency-ep{8 * i}", "dispatch latency", "us", 100 + i, 101.0 + i) for i in range(40)]
    rows.append(vrow("deepep-low-latency-ep9999", "dispatch latency", "us", 2000, 2100.0))
    fig = parity_figure(rows)
    fig.canvas.draw()
    [ax] = fig.axes
    labels = [t for t in ax.texts if t.get_gid() == "point-label"]
    boxes = [Text.get_window_extent(t) for t in labels]  # the text, without its leader line
    assert 0 < len(labels) < 41
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    [note] = [t.get_text() for t in ax.texts if "left out" in t.get_text()]
    assert note == f"{41 - len(labels)} labels left out (crowded)"
