"""The strategy report (reports/strategy.py) and the busiest-link metric it reads."""
import numpy as np
import pandas as pd
import pytest

from reports.report import _markdown_table
from reports.strategy import strategy_section, winners
from simulator.api import simulate_scenario
from tests.conftest import make_scenario

AXES = ["placement.strategy", "routing.zipf_alpha"]


def table():
    rows = []
    steps = {("round_robin", 0.5): 10.0, ("eplb", 0.5): 10.5, ("topology_aware", 0.5): 9.9,
             ("round_robin", 1.2): 20.0, ("eplb", 1.2): 12.5, ("topology_aware", 1.2): 19.0}
    for (strategy, alpha), ms in steps.items():
        rows.append({"status": "ok", "placement.strategy": strategy, "routing.zipf_alpha": alpha,
                     "step_time_s": ms / 1e3, "load_imbalance": ms / 10, "max_link_load_s": ms / 2e3})
    rows.append({"status": "invalid", "placement.strategy": "eplb", "routing.zipf_alpha": 2.0, "step_time_s": np.nan})
    return pd.DataFrame(rows)


def test_the_fastest_strategy_per_skew_and_its_gain_over_round_robin():
    best = winners(table(), AXES)
    assert best["zipf_alpha"].tolist() == [0.5, 1.2]
    assert best["fastest"].tolist() == ["strategy=topology_aware", "strategy=eplb"]
    assert best["vs round_robin"].tolist() == ["1.01x", "1.60x"]
    assert best["strategy=eplb (ms)"].tolist() == ["10.50", "12.50"]
    assert best["imbalance (round_robin)"].tolist() == ["0.99 (1.00)", "1.25 (2.00)"]


def test_the_section_appears_only_for_sweeps_over_placement():
    lines = strategy_section(table(), AXES, _markdown_table)
    assert lines[0] == "## Which strategy wins where"
    assert "Wins: strategy=topology_aware: 1; strategy=eplb: 1." in lines
    assert strategy_section(table(), ["routing.zipf_alpha"], _markdown_table) == []


def test_max_link_load_is_the_busiest_port_per_all_to_all_and_over_the_step():
    summary, _, record = simulate_scenario(make_scenario(routing={"distribution": "zipf", "zipf_alpha": 1.2}))
    ports = record.ports
    seconds = ports.num_bytes / ports.capacity_bytes_per_s
    link = summary["max_link_load"]
    assert link["busy_s"] == pytest.approx(seconds.max())
    assert link["bytes"] == ports.num_bytes[seconds.argmax()]
    same = ports.port_class == ports.port_class[seconds.argmax()]
    assert link["over_mean"] == pytest.approx(link["bytes"] / ports.num_bytes[same].mean())
    assert link["over_mean"] > 1  # a skewed router loads one GPU's ports more than the others
    nvl, ib = (ports.capacity_bytes_per_s[ports.port_class == c].max() for c in (0, 1))
    calls = [max(c.nvlink_bytes_per_gpu.max() / nvl, c.ib_bytes_per_gpu.max() / ib)
             for c in record.collectives.values() if c.kind in ("dispatch", "combine", "dispatch_bwd", "combine_bwd")]
    assert link["all_to_all_busy_s"] == pytest.approx(np.mean(calls))
    # the combine sends each GPU's expert outputs back: its busiest egress is the hot GPU's load
    assert link["all_to_all_busy_s"] > 0


def test_with_perfectly_balanced_routing_every_strategy_gives_the_same_step():
    flat = {"distribution": "balanced"}
    runs = {name: simulate_scenario(make_scenario(workload={"mode": "prefill"}, routing=flat, placement=pl))[0]
            for name, pl in {"round_robin": {}, "topology_aware": {"strategy": "topology_aware"},
                             "eplb": {"strategy": "eplb"},
                             "eplb_redundant": {"strategy": "eplb", "redundant_experts": 8}}.items()}
    ref = runs["round_robin"]
    for name, r in runs.items():
        assert r["step_time_s"] == pytest.approx(ref["step_time_s"], rel=0.02), name
        # every expert gets the same count; replicas split theirs at random, so within a few %
        assert r["load_imbalance"] == pytest.approx(1.0, abs=0.0 if name != "eplb_redundant" else 0.05), name
