"""EPLB rebalancing every K steps and its weight migration over the network (simulator/rebalance.py)."""
import numpy as np
import pytest

from hardware.topology import Topology
from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.rebalance import expert_bytes, keep_in_place, migration_s, moves
from simulator.scenario.memory import optimizer_bytes
from simulator.workload.placement import Placement, eplb_placement
from tests.conftest import make_scenario

ZIPF = {"distribution": "zipf", "zipf_alpha": 1.2}
PREFILL_EPLB = {"workload": {"mode": "prefill", "steps": 4}, "placement": {"strategy": "eplb", "redundant_experts": 8}}


def rebalancing(every, **sections):
    return make_scenario(routing=sections.pop("routing", ZIPF), workload=PREFILL_EPLB["workload"],
                         placement={**PREFILL_EPLB["placement"], "rebalance_every_steps": every}, **sections)


def test_a_swap_between_two_gpus_moves_one_expert_each_way():
    s = make_scenario()  # EP 8 on 2 nodes of 4: EP ranks 0 and 1 share node 0
    old = {(0, 0): Placement(np.array([0, 0, 1, 1] + [2] * 12), np.arange(16), 16)}
    new = {(0, 0): Placement(old[0, 0].slot_gpu, np.array([0, 2, 1, 3] + list(range(4, 16))), 16)}
    assert moves(s, old, new) == {(0, 1): 1, (1, 0): 1}
    assert moves(s, old, old) == {}


def test_a_moved_expert_comes_from_a_holder_on_its_own_node():
    s = make_scenario()  # EP ranks 0-3 on node 0, 4-7 on node 1; expert 0 on ranks 1 and 4
    slot_gpu = np.repeat(np.arange(8), 3)
    old = np.array([1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 0, 12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7])
    new = old.copy()
    new[6], new[15] = 0, 0  # ranks 2 (node 0) and 5 (node 1) now hold expert 0 too
    pairs = moves(s, {(0, 0): Placement(slot_gpu, old, 16)}, {(0, 0): Placement(slot_gpu, new, 16)})
    assert pairs == {(1, 2): 1, (4, 5): 1}


def test_migration_time_is_the_closed_form_of_the_network_model():
    s = make_scenario()
    topo = Topology(s.cluster)
    cap = topo.port_capacity_bytes_per_s()
    nbytes = 1e9
    one = migration_s(s, {(0, 1): 1}, nbytes)  # NVLink, inside node 0
    lat = float(topo.pair_latency_s(np.array([0]), np.array([1]))[0])
    assert one == pytest.approx(nbytes / min(cap[topo.nvl_out(0)], cap[topo.nvl_in(1)]) + lat, rel=1e-3)
    two = migration_s(s, {(0, 1): 1, (0, 2): 1}, nbytes)  # both leave GPU 0's NVLink port: it carries 2 GB
    assert two == pytest.approx(2 * nbytes / cap[topo.nvl_out(0)] + lat, rel=1e-3)
    ib = migration_s(s, {(0, 4): 2}, nbytes)  # across nodes: 2 experts over GPU 0's NIC
    lat_ib = float(topo.pair_latency_s(np.array([0]), np.array([4]))[0])
    assert ib == pytest.approx(2 * nbytes / min(cap[topo.nic_out(0)], cap[topo.nic_in(4)]) + lat_ib, rel=1e-3)
    assert migration_s(s, {}, nbytes) == 0.0


def test_an_expert_moves_its_weights_and_in_training_its_optimizer_state():
    serve = make_scenario(workload={"mode": "prefill"})
    train = make_scenario()
    assert expert_bytes(serve) == serve.model.expert_params * 2
    assert expert_bytes(train) == train.model.expert_params * (2 + optimizer_bytes(train))


def test_without_drift_rebalancing_from_observed_loads_keeps_eplbs_balance_and_reports_each_migration():
    static = simulate_scenario(make_scenario(routing=ZIPF, **PREFILL_EPLB))[0]
    summary, _, record = simulate_scenario(rebalancing(1))
    steps = summary["per_step"]
    assert steps[0] == {**static["per_step"][0], "migration_bytes": steps[0]["migration_bytes"],
                        "migration_time_s": steps[0]["migration_time_s"]}  # step 0: the same placement
    report = summary["rebalance"]
    assert report["count"] == 3 and [r["after_step"] for r in report["rebalances"]] == [0, 1, 2]
    for r, step in zip(report["rebalances"], steps):
        assert r["migration_bytes"] == r["experts_moved"] * expert_bytes(rebalancing(1)) == step["migration_bytes"]
        assert step["migration_time_s"] == r["migration_time_s"] and (r["migration_time_s"] > 0) == (r["experts_moved"] > 0)
    assert steps[-1]["migration_bytes"] == 0.0  # no rebalance after the last step
    # re-solved from the observed loads, the placement balances as well as the law's (within noise)
    mean = np.mean([p["load_imbalance"] for p in steps[1:]])
    assert mean < 1.2 and abs(mean - np.mean([p["load_imbalance"] for p in static["per_step"][1:]])) < 0.1


def test_the_rebalanced_placement_is_eplb_of_the_observed_tokens():
    s = rebalancing(2)
    summary, _, record = simulate_scenario(s)
    rows = [r for r in record.expert_load_rows if r["step"] in (0, 1) and r["ep_group"] == 0 and r["moe_layer"] == 0]
    observed = np.zeros(16)
    for r in rows:
        observed[r["expert"]] += r["tokens"]
    want = eplb_placement(observed, 24, 8, 2, hierarchical=False)
    got = record.placements[0, 0]  # the last step ran on it: EPLB's GPU sets, each node's handed round
    node = s.ranks.ep_group(0).node

    def sets(place, gpus):
        return sorted(tuple(sorted(place.slot_expert[place.slot_gpu == g].tolist())) for g in gpus)
    for n in (0, 1):
        assert sets(got, np.nonzero(node == n)[0]) == sets(want, np.nonzero(node == n)[0])


def test_handing_each_node_its_gpu_sets_back_moves_nothing_when_only_the_gpus_differ():
    s = make_scenario()
    old = eplb_placement(np.arange(16.0) + 1, 24, 8, 2, hierarchical=False)
    blocks = old.slot_expert.reshape(8, 3)
    shuffled = Placement(old.slot_gpu, blocks[[1, 0, 3, 2, 5, 4, 7, 6]].ravel(), 16)  # pairs of a node swapped
    assert moves(s, {(0, 0): old}, {(0, 0): shuffled}) != {}
    kept = keep_in_place(shuffled, old, s.ranks.ep_group(0).node)
    assert moves(s, {(0, 0): old}, {(0, 0): kept}) == {}


def test_rebalancing_chases_a_drifting_law_better_than_the_first_steps_placement():
    drift = {**ZIPF, "drift": 0.05}
    never = simulate_scenario(make_scenario(routing=drift, workload={"mode": "prefill", "steps": 6},
                                            placement={"strategy": "eplb", "redundant_experts": 8,
                                                       "rebalance_every_steps": 5}))[0]["per_step"]
    often = simulate_scenario(make_scenario(routing=drift, workload={"mode": "prefill", "steps": 6},
                                            placement={"strategy": "eplb", "redundant_experts": 8,
                                                       "rebalance_every_steps": 1}))[0]["per_step"]
    assert np.mean([p["load_imbalance"] for p in often[2:5]]) < np.mean([p["load_imbalance"] for p in never[2:5]])


def test_training_rebalances_a_permutation_without_redundant_slots():
    s = make_scenario(routing=ZIPF, workload={"steps": 3}, placement={"strategy": "eplb", "rebalance_every_steps": 1})
    report = simulate_scenario(s)[0]["rebalance"]
    assert report["count"] == 2 and report["migration_bytes_total"] > 0


@pytest.mark.parametrize("placement, workload", [({"strategy": "round_robin", "rebalance_every_steps": 1}, {"steps": 2}),
                                                 ({"strategy": "eplb", "rebalance_every_steps": 2}, {"steps": 2})])
def test_rebalancing_needs_eplb_and_a_later_step(placement, workload):
    with pytest.raises(ScenarioError) as exc:
        make_scenario(placement=placement, workload=workload)
    assert exc.value.key == "placement.rebalance_every_steps"
