"""Layout search: the best layout it finds is the best a brute force over every layout finds."""
import itertools

import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.scenario import build_scenario
from simulator.studies.search import candidates, pareto_front, run_search
from tests.conftest import tiny_dict

BASE = tiny_dict(hardware={"nodes": 1, "gpus_per_node": 4}, parallel={"ep_size": 1})
PINNED = [("network.all_to_all", "hierarchical"), ("pipeline.chunks", 1)]


def write_base(tmp_path):
    import yaml

    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_search_finds_the_layout_a_brute_force_over_every_layout_finds(tmp_path):
    result = run_search(write_base(tmp_path), 8, "mfu", PINNED, tmp_path / "out", jobs=1)
    # brute force: every TP, EP, PP and VPP the layout could take, each built (or rejected) and simulated
    best = None
    for tp, ep, pp, vpp in itertools.product((1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2, 4, 8), (1, 2)):
        data = tiny_dict(hardware={"nodes": 2, "gpus_per_node": 4}, network={"all_to_all": "hierarchical"},
                         pipeline={"overlap": "three_stream", "chunks": 1},
                         parallel={"ep_size": ep, "tp_size": tp, "pp_size": pp, "vpp_size": vpp,
                                   "pp_schedule": "interleaved" if vpp > 1 else "1f1b"})
        try:
            mfu = simulate_scenario(build_scenario(data))[0]["mfu"]
        except ScenarioError:
            continue
        best = mfu if best is None else max(best, mfu)
    assert result.table.mfu.iloc[0] == pytest.approx(best, rel=1e-12)
    assert result.table.mfu.is_monotonic_decreasing
    assert result.pruned and all(rule for _, rule in result.pruned)


def test_pinned_keys_are_not_searched():
    cands = candidates(BASE, 8, frozenset({"parallel.tp_size", "network.all_to_all"}))
    assert "parallel.tp_size" not in cands.axes and "network.all_to_all" not in cands.axes
    assert all(key not in ("parallel.tp_size", "network.all_to_all") for combo in cands.combos for key, _ in combo)


def test_decode_searches_attention_layout_and_two_batch_overlap_not_pipelines():
    data = tiny_dict(hardware={"nodes": 1, "gpus_per_node": 4}, parallel={"ep_size": 1})
    data["workload"] = {"mode": "decode", "batch_per_gpu": 16, "context_len": 256}
    cands = candidates(data, 8)
    assert set(cands.axes) == {"parallel.tp_size", "parallel.ep_size", "workload.two_batch_overlap",
                               "network.all_to_all"}


def test_the_pareto_front_keeps_the_layouts_no_other_beats_on_objective_and_memory():
    import numpy as np

    values, memory = np.array([3.0, 2.0, 1.0, 2.5]), np.array([5.0, 2.0, 1.0, 6.0])
    assert pareto_front(values, memory, larger=True).tolist() == [True, True, True, False]
    assert pareto_front(values, memory, larger=False).tolist() == [False, False, True, False]


def test_gpus_that_are_not_whole_nodes_are_rejected_naming_the_flag(tmp_path):
    with pytest.raises(ScenarioError) as exc:
        run_search(write_base(tmp_path), 6, "mfu", PINNED, tmp_path / "out")
    assert exc.value.key == "--gpus"


def test_search_command_prints_the_ranked_table_and_writes_its_csv_and_pareto_plot(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    proc = subprocess.run([sys.executable, "run_sim.py", "search", str(write_base(tmp_path)), "--gpus", "8",
                           "--set", "parallel.tp_size=1", "--set", "network.all_to_all=hierarchical",
                           "--set", "pipeline.chunks=1", "--out", str(tmp_path / "out"), "--jobs", "1"],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "best mfu first" in proc.stdout and "seed's target" in proc.stdout
    assert (tmp_path / "out" / "search.csv").read_text().startswith("index,")
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "run_sim.py", "search", str(write_base(tmp_path)), "--gpus", "8",
                          "--objective", "itl", "--set", "parallel.tp_size=1", "--set", "pipeline.chunks=1",
                          "--set", "network.all_to_all=hierarchical", "--out", str(tmp_path / "out")],
                         cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "--objective" in bad.stderr and "Traceback" not in bad.stderr
