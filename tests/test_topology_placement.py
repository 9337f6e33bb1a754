"""Topology-aware placement (seed 1.2): the linear port model against the engine's paths, the MILP
against brute force, and the heuristic against round-robin."""
import dataclasses
import itertools

import numpy as np
import pytest

from hardware.topology import Topology
from simulator.engine.paths import build_paths
from simulator.ranks import RankLayout
from simulator.wire import ALL_TO_ALL
from simulator.workload.placement import round_robin
from simulator.workload.routing import Router, zipf_probabilities
from simulator.workload.topology_placement import (
    expected_copies_per_token,
    objective_s,
    port_model,
    topology_aware_placement,
)
from simulator.workload.traffic import ChunkTraffic
from tests.conftest import make_scenario

BASE = make_scenario().cluster


def cluster(nodes: int, gpus_per_node: int, spine: float = 1.0):
    spec = dataclasses.replace(BASE, num_nodes=nodes, gpus_per_node=gpus_per_node, spine_oversubscription=spine)
    return Topology(spec), RankLayout(nodes * gpus_per_node, gpus_per_node, ep_size=nodes * gpus_per_node).ep_group(0)


CASES = [("direct", 1.0), ("hierarchical", 1.0), ("low_latency", 1.0), ("direct", 2.0)]


@pytest.mark.parametrize("algorithm,spine", CASES)
def test_port_model_equals_the_engines_port_bytes_when_every_copy_is_a_distinct_token(algorithm, spine):
    """top_k = 1: no token reaches a GPU or node twice, so copies are exactly what paths.py sends."""
    topo, group = cluster(3, 4, spine)
    rng = np.random.default_rng(1)
    load = rng.random(group.size) * 1e6  # bytes every source sends to each GPU
    node_load = np.bincount(group.node, load)
    p = group.size
    pair = np.tile(load, (p, 1))
    traffic = ChunkTraffic(pair_tokens=pair, pair_copies=pair, node_tokens=np.tile(node_load, (p, 1)),
                           expert_tokens=np.zeros(p))
    paths = build_paths(ALL_TO_ALL[algorithm], traffic, 1.0, group, topo)
    engine = np.bincount(paths.entry_port, paths.entry_bytes, minlength=topo.num_ports)
    model = port_model(group, topo, algorithm)
    cap = topo.port_capacity_bytes_per_s()
    np.testing.assert_allclose(model.seconds(load) * cap[model.port], engine[model.port], rtol=1e-9)
    other = np.setdiff1d(np.arange(topo.num_ports), model.port)
    assert engine[other].sum() == 0.0  # the model covers every port the all-to-all loads
    assert (spine > 1.0) == (len(model.port) > 4 * p)


def brute_force_s(model, weights, capacity):
    best, worst = np.inf, 0.0
    for gpus in itertools.product(range(len(capacity)), repeat=len(weights)):
        gpus = np.array(gpus)
        if (np.bincount(gpus, minlength=len(capacity)) <= capacity).all():
            value = objective_s(model, weights, gpus)
            best, worst = min(best, value), max(worst, value)
    return best, worst


@pytest.mark.parametrize("algorithm,spine", CASES)
@pytest.mark.parametrize("num_experts,capacity", [(4, [1, 1, 1, 1]), (6, [2, 2, 1, 1]), (3, [2, 1, 1, 1])])
def test_milp_optimum_equals_brute_force_on_four_gpus_over_two_nodes(algorithm, spine, num_experts, capacity):
    topo, group = cluster(2, 2, spine)
    probs = zipf_probabilities(num_experts, 1.0, np.random.default_rng(num_experts))
    place, report = topology_aware_placement(probs, group, topo, algorithm, tokens_per_gpu=64, top_k=1,
                                             capacity=np.array(capacity), slot_gpu=round_robin(num_experts, 4),
                                             method="milp", milp_rel_gap=1e-9)
    model = port_model(group, topo, algorithm)
    weights = expected_copies_per_token(probs, 1) * 64
    assert weights == pytest.approx(probs / probs.sum() * 64)
    assert report["method"] == "milp" and report["milp_status"] == 0
    best, worst = brute_force_s(model, weights, np.array(capacity))
    if algorithm == "hierarchical" or max(capacity) > 1:  # else one expert a GPU: its hottest's NIC in, fixed
        assert worst > best * 1.01
    assert report["objective_s"] == pytest.approx(best, rel=1e-9)
    assert report["bound_s"] == pytest.approx(report["objective_s"], rel=1e-6)
    assert objective_s(model, weights, place.expert_gpu()) == pytest.approx(report["objective_s"], rel=1e-12)


@pytest.mark.parametrize("algorithm", ["direct", "hierarchical", "low_latency"])
@pytest.mark.parametrize("seed", range(4))
def test_heuristic_is_never_worse_than_round_robin_on_skewed_instances(algorithm, seed):
    rng = np.random.default_rng(seed)
    topo, group = cluster(4, 4, spine=2.0 if seed % 2 else 1.0)
    num_experts = int(rng.choice([8, 16, 32, 48]))
    probs = rng.dirichlet(np.full(num_experts, rng.choice([0.2, 0.5, 1.0])))
    place, report = topology_aware_placement(probs, group, topo, algorithm, 512, 4, method="heuristic")
    assert report["objective_s"] <= report["round_robin_s"] * (1 + 1e-12)
    assert report["bound_s"] <= report["objective_s"] * (1 + 1e-9)
    if num_experts >= group.size:  # the layout's slots, each expert in one
        assert (place.slot_gpu == round_robin(num_experts, group.size)).all()
        assert sorted(place.slot_expert) == list(range(num_experts))


def test_with_uniform_probabilities_every_placement_with_the_same_counts_has_the_same_objective():
    topo, group = cluster(2, 4)
    probs = np.full(32, 1 / 32)
    weights = 256 * expected_copies_per_token(probs, 8)
    rng = np.random.default_rng(0)
    for algorithm in ("direct", "hierarchical"):
        model = port_model(group, topo, algorithm)
        rr = objective_s(model, weights, round_robin(32, 8))
        for _ in range(5):
            assert objective_s(model, weights, rng.permutation(round_robin(32, 8))) == pytest.approx(rr, rel=1e-12)
        _, report = topology_aware_placement(probs, group, topo, algorithm, 256, 8)
        assert report["objective_s"] == pytest.approx(rr, rel=1e-12)


def test_expected_copies_follow_the_routers_top_k_law():
    router = Router(64, 8, "zipf", 1.2, np.zeros(64, dtype=int), None, np.random.default_rng(0))
    counts = np.bincount(router.route(50_000, np.random.default_rng(1)).ravel(), minlength=64) / 50_000
    copies = expected_copies_per_token(router.probabilities, 8)
    assert copies.sum() == pytest.approx(8.0, rel=1e-9)
    assert np.abs(copies - counts).max() < 0.02
    assert (8 * router.probabilities).max() > 1.5  # the naive count a hot expert cannot reach


def test_heuristic_at_ep_256_places_every_expert_once_and_beats_round_robin_on_hierarchical():
    topo, group = cluster(32, 8)
    probs = zipf_probabilities(256, 1.2, np.random.default_rng(0))
    place, report = topology_aware_placement(probs, group, topo, "hierarchical", 4096, 8, bytes_per_token=7392.0)
    assert report["method"] == "heuristic"
    assert sorted(place.expert_gpu()) == list(range(256))
    assert report["objective_s"] < report["round_robin_s"]
    assert report["bound_s"] <= report["objective_s"]


def test_with_more_room_than_experts_it_may_pick_the_gpus():
    topo, group = cluster(2, 4)
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    place, report = topology_aware_placement(probs, group, topo, "hierarchical", 256, 2, capacity=np.ones(8, int),
                                             method="milp")
    assert np.bincount(place.expert_gpu(), minlength=8).max() == 1
    assert report["objective_s"] <= report["round_robin_s"]


def test_bad_inputs_name_the_parameter():
    topo, group = cluster(2, 2)
    with pytest.raises(ValueError, match='"probabilities"'):
        topology_aware_placement(np.array([-1.0, 2.0]), group, topo, "direct", 8, 1)
    with pytest.raises(ValueError, match='"capacity"'):
        topology_aware_placement(np.ones(8), group, topo, "direct", 8, 1, capacity=np.ones(4, int))
    with pytest.raises(KeyError, match="valid"):
        topology_aware_placement(np.ones(4), group, topo, "ring", 8, 1)
