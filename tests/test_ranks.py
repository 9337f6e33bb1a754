"""The rank layout: Megatron-Core's rank order (TP fastest, then DP, then PP; experts: ETP, EP,
expert DP inside a PP stage) and the groups cut from it."""
import numpy as np
import pytest

from simulator.ranks import RankLayout
from tests.conftest import make_scenario


def test_sixteen_gpus_tp2_pp2_ep4_follow_megatron_rank_order():
    ranks = RankLayout(16, 8, tp_size=2, pp_size=2, ep_size=4)
    assert (ranks.dp_size, ranks.expert_dp_size) == (4, 2)
    # Megatron-Core parallel_state for world 16, TP 2, PP 2
    assert ranks.tp_groups.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert ranks.pp_groups.tolist() == [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15]]
    assert ranks.dp_groups.tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    # EP x ETP x EDP = TP x DP inside a stage: EP groups are consecutive, expert DP strides by EP
    assert ranks.ep_groups.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert ranks.expert_dp_groups.tolist()[:4] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert ranks.coordinates(13) == {"pp": 1, "dp": 2, "tp": 1, "edp": 1, "ep": 1, "etp": 0}


def test_expert_tensor_parallel_varies_fastest_inside_an_expert_group():
    ranks = RankLayout(8, 8, ep_size=2, expert_tp_size=2)
    assert ranks.ep_groups.tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert [ranks.ep_group_of(g) for g in range(8)] == [0, 1, 0, 1, 2, 3, 2, 3]


def test_every_gpu_is_in_exactly_one_group_of_each_kind():
    ranks = RankLayout(64, 8, tp_size=2, pp_size=4, ep_size=4)
    for groups in (ranks.tp_groups, ranks.dp_groups, ranks.pp_groups, ranks.ep_groups, ranks.expert_dp_groups):
        assert sorted(groups.ravel().tolist()) == list(range(64))
    for g in range(64):
        assert g in ranks.ep_groups[ranks.ep_group_of(g)]
        assert ranks.ep_groups[ranks.ep_group_of(g)][ranks.ep_rank[g]] == g


def test_an_ep_group_knows_its_nodes_and_the_member_on_each_rail():
    group = RankLayout(32, 8, ep_size=16).ep_group(1)  # GPUs 16..31 on nodes 2 and 3
    assert group.gpus.tolist() == list(range(16, 32))
    assert group.node.tolist() == [0] * 8 + [1] * 8 and group.spans_nodes
    assert group.member_at[1, 3] == 11  # EP rank 11 is GPU 27: the group's node 1, rail 3
    inside = RankLayout(8, 8, ep_size=4).ep_group(1)  # GPUs 4..7 share a node
    assert not inside.spans_nodes and inside.rail.tolist() == [4, 5, 6, 7]
    assert inside.member_at[0].tolist() == [-1, -1, -1, -1, 0, 1, 2, 3]


@pytest.mark.parametrize("kwargs, name", [
    (dict(tp_size=3), "tp_size"), (dict(ep_size=5), "ep_size"), (dict(pp_size=0), "pp_size"),
])
def test_sizes_that_do_not_tile_the_gpus_are_rejected_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RankLayout(16, 8, **kwargs)


def test_a_scenario_builds_its_layout_once_with_ep_groups_of_consecutive_gpus():
    s = make_scenario(parallel={"ep_size": 4})
    assert s.ranks is s.ranks
    assert s.ranks.ep_groups.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert s.dp_size == s.ranks.expert_dp_size == 2
    assert np.array_equal(s.ranks.ep_rank, np.arange(8) % 4)
