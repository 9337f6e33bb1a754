"""Gating, placement and traffic counting against their expected laws."""
from math import comb

import numpy as np
import pytest

from simulator.workload.placement import round_robin
from simulator.workload.routing import Router
from simulator.workload.traffic import micro_batch_traffic

E, K = 256, 8


def router(distribution="uniform", expert_node=None, max_nodes=None, alpha=1.0, seed=0):
    node = np.zeros(E, dtype=int) if expert_node is None else expert_node
    return Router(E, K, distribution, alpha, node, max_nodes, np.random.default_rng(seed))


def test_round_robin_places_expert_i_on_gpu_i_mod_g():
    assert list(round_robin(4, 8)) == [0, 1, 2, 3]
    assert list(round_robin(10, 4)) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_every_token_gets_k_distinct_experts():
    experts = router().route(20000, np.random.default_rng(1))
    assert experts.shape == (20000, K)
    assert (np.sort(experts, axis=1)[:, 1:] != np.sort(experts, axis=1)[:, :-1]).all()


def test_uniform_routing_reaches_the_expected_distinct_gpus_per_token_at_ep8():
    # P(a GPU holds none of the token's 8 experts) = C(224, 8) / C(256, 8); published: 5.29 at EP8
    experts = router().route(50000, np.random.default_rng(2))
    gpus = round_robin(E, 8)[experts]
    distinct = (np.diff(np.sort(gpus, axis=1), axis=1) != 0).sum(axis=1) + 1
    expected = 8 * (1 - comb(224, 8) / comb(256, 8))
    assert distinct.mean() == pytest.approx(expected, rel=0.01)


def test_group_limited_routing_never_exceeds_the_node_limit_and_matches_published_mean():
    expert_node = round_robin(E, 64) // 8  # EP64 over 8 nodes
    experts = router(expert_node=expert_node, max_nodes=4).route(50000, np.random.default_rng(3))
    nodes = expert_node[experts]
    distinct = (np.diff(np.sort(nodes, axis=1), axis=1) != 0).sum(axis=1) + 1
    assert distinct.max() <= 4
    assert distinct.mean() == pytest.approx(3.98, abs=0.02)  # DeepEP README, EP64


def test_uniform_load_is_even_in_expectation_and_zipf_is_skewed():
    uni = np.bincount(router().route(100000, np.random.default_rng(4)).ravel(), minlength=E)
    zipf = np.bincount(router("zipf", alpha=1.2).route(100000, np.random.default_rng(4)).ravel(), minlength=E)
    mean = 100000 * K / E
    assert uni.max() / mean < 1.2
    assert zipf.max() / mean > 5


def test_balanced_routing_gives_every_expert_exactly_the_same_count():
    counts = np.bincount(router("balanced").route(E * 10, np.random.default_rng(5)).ravel(), minlength=E)
    assert (counts == counts[0]).all()


def test_traffic_counts_distinct_tokens_per_gpu_pair_and_copies_without_dedupe():
    # 2 GPUs, 4 experts: expert e on GPU e % 2; one token per GPU
    expert_gpu = round_robin(4, 2)
    experts = np.array([[0, 2], [1, 2]])  # GPU 0's token -> experts 0, 2 (both GPU 0); GPU 1's -> GPU 1 and 0
    [t] = micro_batch_traffic(experts, tokens_per_gpu=1, num_chunks=1, expert_gpu=expert_gpu,
                              member_node=np.zeros(2, dtype=np.int64), num_experts=4)
    assert t.pair_tokens.tolist() == [[1, 0], [1, 1]]
    assert t.pair_copies.tolist() == [[2, 0], [1, 1]]
    assert t.expert_tokens.tolist() == [1, 1, 2, 0]
    assert t.node_tokens.tolist() == [[1], [1]]


def test_traffic_counts_match_a_set_per_token_reference_with_dropped_copies_and_chunks():
    # the compiled counter against the definition, token by token: 4 nodes x 2 GPUs, 16 slots, -1 dropped
    rng = np.random.default_rng(0)
    p, per_gpu, k, slots = 8, 37, 4, 16
    slot_gpu, member_node = rng.integers(0, p, slots), np.arange(p) // 2
    experts = np.stack([rng.permutation(slots)[:k] for _ in range(p * per_gpu)])
    experts[rng.random(experts.shape) < 0.2] = -1
    chunks = micro_batch_traffic(experts, per_gpu, 3, slot_gpu, member_node, slots)
    for c, (lo, hi) in enumerate([(0, 12), (12, 25), (25, 37)]):
        tokens, copies = np.zeros((p, p), int), np.zeros((p, p), int)
        nodes, per_slot = np.zeros((p, 4), int), np.zeros(slots, int)
        for src in range(p):
            for row in experts[src * per_gpu + lo: src * per_gpu + hi]:
                kept = [e for e in row if e >= 0]
                for e in kept:
                    copies[src, slot_gpu[e]] += 1
                    per_slot[e] += 1
                for g in {slot_gpu[e] for e in kept}:
                    tokens[src, g] += 1
                for n in {member_node[slot_gpu[e]] for e in kept}:
                    nodes[src, n] += 1
        t = chunks[c]
        assert (t.pair_tokens == tokens).all() and (t.pair_copies == copies).all()
        assert (t.node_tokens == nodes).all() and (t.expert_tokens == per_slot).all()


def test_same_seed_routes_the_same_tokens():
    a = router(seed=3).route(1000, np.random.default_rng(9))
    b = router(seed=3).route(1000, np.random.default_rng(9))
    assert (a == b).all()


@pytest.mark.parametrize("routing", [{"distribution": "zipf", "zipf_alpha": 1.2, "capacity_factor": 1.0},
                                     {"distribution": "uniform", "threshold": 0.05}])
def test_the_workload_is_the_same_whatever_the_routing_threads(monkeypatch, routing):
    from simulator.engine import Run
    from simulator.workload.build import routing_threads
    from tests.conftest import make_scenario

    s = make_scenario(routing=routing, workload={"micro_batches": 3})
    built = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("EPSIM_THREADS", threads)
        assert routing_threads() == int(threads)
        built[threads] = Run(s).workload
    one, three = built["1"], built["3"]
    assert list(one.traffic) == list(three.traffic)  # the same keys, in the same order
    for key, t in one.traffic.items():
        u = three.traffic[key]
        for field in ("pair_tokens", "pair_copies", "node_tokens", "expert_tokens"):
            assert np.array_equal(getattr(t, field), getattr(u, field)), (key, field)
    assert (one.dropped_copies, one.ungated_copies) == (three.dropped_copies, three.ungated_copies)
    assert one.dropped_copies + one.ungated_copies > 0  # the laws above do drop or leave copies


def test_a_bad_thread_count_is_named_and_ignored(monkeypatch):
    from simulator.workload.build import MAX_ROUTING_THREADS, routing_threads

    for bad in ("abc", "0", "-2", "1e9"):
        monkeypatch.setenv("EPSIM_THREADS", bad)
        with pytest.warns(UserWarning, match="EPSIM_THREADS"):
            assert 1 <= routing_threads() <= MAX_ROUTING_THREADS
