"""Redundant experts in training (placement.strategy: eplb with redundant_experts > 0): every copy
holds weights, gradients and optimizer state; the copies' gradients are summed among the GPUs of
the EP group holding them before the expert-DP reduction; every EP group of a layer holds the
same placement."""
import numpy as np
import pytest

from hardware.topology import Topology
from simulator.api import simulate_scenario
from simulator.engine import Run
from simulator.engine.rings import ring_paths
from simulator.rebalance import rebalanced
from simulator.scenario.memory import memory_per_gpu
from tests.conftest import make_scenario

ZIPF = {"distribution": "zipf", "zipf_alpha": 1.2}
FOUR_NODES = {"hardware": {"nodes": 4}}  # 16 GPUs: EP 8 x expert DP 2


def eplb_train(redundant: int, **sections):
    placement = {"strategy": "eplb", "redundant_experts": redundant, **sections.pop("placement", {})}
    return make_scenario(routing=sections.pop("routing", ZIPF), placement=placement, **sections)


def held_copies(place, ep_rank: int) -> int:
    return int((place.slot_gpu == ep_rank).sum())


def test_each_replicated_expert_is_summed_among_exactly_the_gpus_holding_it():
    run = Run(eplb_train(8))
    run.simulate()
    s = run.s
    expected = {}
    for (group, moe_layer), place in run.workload.placements.items():
        for expert in range(s.model.num_experts):
            holders = np.unique(place.slot_gpu[place.slot_expert == expert])
            if len(holders) > 1:
                layer = moe_layer + s.model.num_dense_layers
                expected[layer * s.model.num_experts + expert] = s.ranks.ep_groups[group][holders].tolist()
    got = {cid.index: coll.group.tolist() for cid, coll in run.collectives.items()
           if cid.kind == "expert_replica_grad_allreduce"}
    assert expected and got == expected


def test_a_replica_sum_carries_one_experts_gradient_and_costs_step_time():
    without, with_copies = (simulate_scenario(eplb_train(r))[0] for r in (0, 8))
    s = eplb_train(8)
    replica = with_copies["collectives"]["expert_replica_grad_allreduce"]
    assert replica["mean_payload_bytes_per_gpu"] == s.model.expert_params * 4  # FP32 gradients (grad_reduce_dtype)
    assert replica["mean_time_s"] > 0
    assert "expert_replica_grad_allreduce" not in without["collectives"]
    assert with_copies["load_imbalance"] < without["load_imbalance"]


def test_every_copy_holds_its_gradients_and_optimizer_state():
    s0, s8 = eplb_train(0), eplb_train(8)  # 16 experts on 8 GPUs: 2 slots each, 3 with 8 redundant
    m0, m8 = memory_per_gpu(s0), memory_per_gpu(s8)
    extra = s8.model.num_moe_layers * s8.model.expert_params  # one more slot per MoE layer
    assert m8.gradients - m0.gradients == extra * 4  # FP32 main gradients
    assert m8.weights - m0.weights == extra * 2  # BF16 weights
    assert m8.optimizer > m0.optimizer
    run = Run(s8)
    expert_params = sum(b.num_params for b in run.programs[0].buckets if b.family == "expert")
    assert expert_params == 3 * s8.model.num_moe_layers * s8.model.expert_params


def test_every_ep_group_of_a_layer_holds_the_same_placement_in_training():
    run = Run(eplb_train(8, **FOUR_NODES))
    assert run.ranks.num_ep_groups == 2
    for layer in range(run.s.model.num_moe_layers):
        a, b = run.workload.placements[0, layer], run.workload.placements[1, layer]
        assert (a.slot_expert == b.slot_expert).all()
    out = simulate_scenario(run.s)[0]
    assert {"expert_replica_grad_allreduce", "expert_grad_allreduce"} <= set(out["collectives"])


def test_rebalancing_in_training_keeps_the_groups_on_one_placement():
    s = eplb_train(8, **FOUR_NODES)
    old = Run(s).workload.placements
    rng = np.random.default_rng(0)
    observed = {key: rng.integers(0, 1000, s.model.num_experts) for key in old}  # each group saw its own loads
    new = rebalanced(s, observed, old)
    summed = observed[0, 0] + observed[1, 0]
    for layer in range(s.model.num_moe_layers):
        assert (new[0, layer].slot_expert == new[1, layer].slot_expert).all()
    # the placement balances the summed load: its busiest GPU is no busier than the old one's
    per_gpu = [np.bincount(p.slot_gpu, weights=summed[p.slot_expert] / p.replicas()[p.slot_expert])
               for p in (old[0, 0], new[0, 0])]
    assert per_gpu[1].max() <= per_gpu[0].max() + 1e-9
    out = simulate_scenario(eplb_train(8, **FOUR_NODES, workload={"steps": 2},
                                       placement={"rebalance_every_steps": 1}))[0]
    assert out["rebalance"]["count"] == 1 and out["rebalance"]["migration_bytes_total"] > 0


@pytest.mark.parametrize("sections", [
    {"parallel": {"ep_size": 8, "pp_size": 2}, "workload": {"micro_batches": 4}},
    {"parallel": {"ep_size": 8, "pp_size": 2, "pp_schedule": "dualpipe"}, "workload": {"micro_batches": 4}},
    {"training": {"distributed_optimizer": True}},
    {"training": {"grad_overlap": False}},
])
def test_replica_sums_run_beside_pipelines_zero1_and_without_overlap(sections):
    out = simulate_scenario(eplb_train(8, **FOUR_NODES, **sections))[0]
    assert out["collectives"]["expert_replica_grad_allreduce"]["count"] > 0
    assert np.isfinite(out["step_time_s"])


def test_a_ring_over_unequal_nodes_moves_at_its_sparsest_nodes_rate():
    s = make_scenario()  # 2 nodes x 4 GPUs
    topo = Topology(s.cluster)
    size = 1e6
    paths = ring_paths("allreduce", np.array([0, 1, 4]), size, topo)
    # all-reduce, N = 2 nodes: 2 x (1/2) x S over the NICs of each node, spread over its members
    lone = topo.nic_out(np.array([4]))[0]
    by_port = {int(p): float(b) for p, b in zip(paths.entry_port, paths.entry_bytes)}
    assert by_port[int(lone)] == pytest.approx(size)
    for g in (0, 1):
        assert by_port[int(topo.nic_out(np.array([g]))[0])] == pytest.approx(size / 2)
    # inside node 0: 2 (k - 1) / k x S = S per member; the lone member has no NVLink hop
    assert by_port[int(topo.nvl_out(np.array([0]))[0])] == pytest.approx(size)
    assert int(topo.nvl_out(np.array([4]))[0]) not in by_port


def test_in_training_the_adaptive_gate_is_one_for_every_replica(monkeypatch):
    from simulator import api

    s = make_scenario(**FOUR_NODES, routing={**ZIPF, "adaptive_alpha": 0.5}, workload={"steps": 2})
    scales = {}
    adapt = api.adapt
    monkeypatch.setattr(api, "adapt", lambda scale, loads, alpha: scales.setdefault("out", adapt(scale, loads, alpha)))
    simulate_scenario(s)
    for layer in range(s.model.num_moe_layers):  # both EP groups (the expert-DP replicas) gate alike
        assert np.array_equal(scales["out"][0, layer], scales["out"][1, layer])
    assert not np.allclose(scales["out"][0, 0], 1.0)  # and it did adapt
