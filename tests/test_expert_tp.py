"""Expert tensor parallelism: each expert split over an expert-TP group inside a node (seed 4.1),
its rows all-gathered before and reduce-scattered after, parameters and expert DP divided."""
import numpy as np
import pytest

from simulator.engine import Run
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario.memory import local_params
from tests.conftest import make_scenario

H, I = 256, 512  # tiny-moe hidden and expert width


def etp(e: int, **sections):
    parallel = {"ep_size": 4, "expert_tp_size": e}
    return make_scenario(parallel=parallel, **sections)


def test_expert_tp_divides_each_gpus_expert_parameters_and_the_expert_dp_size():
    one, two = etp(1), etp(2)
    assert local_params(two)["expert"] * 2 == local_params(one)["expert"]
    assert local_params(two)["dense"] == local_params(one)["dense"]
    assert (one.ranks.expert_dp_size, two.ranks.expert_dp_size) == (2, 1)  # 8 GPUs / (EP 4 x ETP)
    assert two.ranks.ep_groups.tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]  # one EP group per expert-TP rank


def test_an_expert_tp_group_runs_its_slice_on_the_rows_the_whole_group_received():
    run = Run(etp(2))
    w = run.workload
    for (group, layer, mb, c), work in w.expert_work_s.items():
        sibling = group ^ 1  # the other expert-TP rank of the same expert slots
        rows = w.traffic[group, layer, mb, c].expert_tokens + w.traffic[sibling, layer, mb, c].expert_tokens
        for rank in range(4):
            expected = run.compute_model.expert_ffn_s(rows[w.expert_gpu == rank], H, I // 2)
            assert work[rank] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_array_equal(work, w.expert_work_s[sibling, layer, mb, c])


def test_expert_tp_rows_are_all_gathered_and_reduce_scattered_in_both_directions():
    run = Run(etp(2))
    record = run.simulate()
    program = run.programs[0]
    names = [op.name for op in program.phases[0] if op.layer == 0]
    assert names[names.index("dispatch") + 1:names.index("combine")] == ["etp_allgather", "experts", "etp_reducescatter"]
    backward = [op.name for op in program.phases[1] if op.layer == 0]
    assert ["etp_allgather_bwd", "experts_bwd", "etp_reducescatter_bwd"] == [
        n for n in backward if n.startswith(("etp", "experts"))]
    w = run.workload
    checked = 0
    for cid, c in record.collectives.items():
        if cid.kind not in ("etp_allgather", "etp_reducescatter"):
            continue
        members = np.arange(cid.group * 2, cid.group * 2 + 2)
        assert c.gpus.tolist() == members.tolist()
        layer = cid.index // 3
        rows = sum(int(w.traffic[run.group_of[g], layer, cid.micro_batch, cid.chunk]
                       .expert_tokens[w.expert_gpu == run.ep_rank[g]].sum()) for g in members)
        # a ring of 2 inside a node: each member sends (n - 1) / n of the group's rows, BF16, over NVLink
        assert c.nvlink_bytes_per_gpu.tolist() == pytest.approx([rows * H * 2 / 2] * 2)
        assert c.ib_bytes_per_gpu.tolist() == [0, 0]
        checked += 1
    # 2 kinds x (forward + backward) x 2 layers x 2 micro-batches x 2 chunks x 4 expert-TP groups
    assert checked == 2 * 2 * 2 * 2 * 2 * 4


def test_summary_reports_the_expert_tp_layout_and_its_collectives():
    summary = summarize(Run(etp(2)).simulate())
    assert summary["layout"]["expert_tp_size"] == 2 and summary["layout"]["expert_dp_size"] == 1
    assert summary["collectives"]["etp_allgather"]["count"] > 0
    assert "expert TP 2" in summary["provenance"]["parallelism"]


def test_auto_splits_an_expert_that_does_not_fit_and_the_run_fits():
    """Seed 4.1: an expert of 1.5 G parameters (25.7 GiB with grads and Adam state) where 16.8 GiB
    are left: ceil(25.7 / 16.8) = 2 GPUs."""
    s = make_scenario(parallel={"ep_size": 8, "expert_tp_size": "auto"}, hardware={"hbm_gb": 20, "nodes": 4},
                      model={"moe_intermediate_size": 2_000_000, "num_shared_experts": 0, "num_experts": 8,
                             "num_layers": 1},
                      workload={"tokens_per_gpu": 16, "micro_batches": 1}, pipeline={"chunks": 1})
    assert s.expert_tp == 2
    summary = summarize(Run(s).simulate())
    assert summary["memory_per_gpu"]["peak"] <= summary["memory_per_gpu"]["capacity"]
    assert "split over 2 GPUs" in summary["layout"]["expert_tp_auto"]


@pytest.mark.parametrize("sections, key, words", [
    ({"parallel": {"ep_size": 2, "expert_tp_size": 3}}, "parallel.expert_tp_size", "gpus_per_node=4"),
    ({"parallel": {"ep_size": 4, "expert_tp_size": 4}}, "parallel.ep_size", "must divide the 8 GPUs"),
    ({"parallel": {"ep_size": 4, "expert_tp_size": 2}, "model": {"moe_intermediate_size": 511}},
     "parallel.expert_tp_size", "moe_intermediate_size=511"),
    ({"parallel": {"ep_size": 4, "expert_tp_size": 0}}, "parallel.expert_tp_size", ">= 1"),
])
def test_impossible_expert_tp_layouts_are_rejected(sections, key, words):
    with pytest.raises(ScenarioError) as err:
        make_scenario(**sections)
    assert err.value.key == key and words in str(err.value)


def test_expert_tp_groups_that_hold_no_expert_move_nothing_and_do_not_wait():
    """2 experts at EP 8 (E < G: GPUs past E hold none) with expert TP 2: the empty groups' rings
    have no bytes; the fuzz found them waiting forever."""
    s = make_scenario(hardware={"nodes": 4, "gpus_per_node": 4}, parallel={"ep_size": 8, "expert_tp_size": 2},
                      model={"num_experts": 2, "num_shared_experts": 0, "num_layers": 1})
    record = Run(s).simulate()
    empty = [c for c in record.collectives.values() if c.kind.startswith("etp_") and c.bytes_out == 0]
    full = [c for c in record.collectives.values() if c.kind.startswith("etp_") and c.bytes_out > 0]
    assert empty and full and record.step_time_s > 0
    assert all(np.all(c.done_s <= c.start_s + 1e-3) for c in empty)
