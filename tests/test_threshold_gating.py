"""Seed 2.1's threshold gate: TopK = {e | g_e >= threshold}, capped at top_k (simulator/workload/gating.py)."""
from types import SimpleNamespace

import numpy as np
import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.workload.gating import ThresholdRouter, threshold_top_k
from tests.conftest import make_scenario


def law(probabilities, top_k):
    p = np.asarray(probabilities, dtype=np.float64)
    return SimpleNamespace(probabilities=p / p.sum(), num_experts=len(p), top_k=top_k)


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.4, 0.7])
def test_two_equal_experts_keep_the_closed_form_number_of_copies(threshold):
    """E = 2, uniform: g_1 = X_2 / (X_1 + X_2) with X ~ Exp(1) is Uniform(0, 1), so the larger gate
    max(U, 1-U) is kept with probability min(1, 2(1-t)) and the smaller with max(0, 1-2t)."""
    ids = ThresholdRouter(law([1, 1], 2), threshold).route(400_000, np.random.default_rng(1))
    expected = min(1.0, 2 * (1 - threshold)) + max(0.0, 1 - 2 * threshold)
    assert (ids >= 0).sum(axis=1).mean() == pytest.approx(expected, abs=0.005)


def test_the_gates_best_expert_follows_the_routers_law():
    """Gumbel-max: the top-1 of softmax(log p + Gumbel) is expert e with probability p_e."""
    p = np.array([8, 4, 2, 1, 1, 0.5, 0.25, 0.25])
    ids = ThresholdRouter(law(p, 1), 1e-9).route(400_000, np.random.default_rng(2))
    assert np.bincount(ids[:, 0], minlength=8) / 400_000 == pytest.approx(p / p.sum(), abs=0.003)


def test_a_threshold_at_one_over_e_keeps_at_least_one_expert_per_token():
    ids = ThresholdRouter(law(np.ones(16), 4), 1 / 16).route(50_000, np.random.default_rng(3))
    assert (ids[:, 0] >= 0).all()
    assert (ids[:, 1:] < 0).any()  # ... and leaves out some of the later ones


def test_kept_experts_are_the_best_first_and_distinct():
    gates = np.array([[0.5, 0.1, 0.3, 0.1], [0.05, 0.05, 0.1, 0.8]], dtype=np.float32)
    assert threshold_top_k(gates, 3, 0.1).tolist() == [[0, 2, 1], [3, 2, -1]]


def test_a_run_computes_and_counts_only_the_copies_the_gate_kept():
    base = simulate_scenario(make_scenario())[0]
    s = make_scenario(routing={"threshold": 0.3})
    summary, _, record = simulate_scenario(s)
    ungated = summary["tokens_ungated"]["copies"]
    places = s.ranks.num_ep_groups * s.model.num_moe_layers * s.workload.micro_batches * 8 * 256 * s.model.top_k
    kept = sum(int(c.recv_copies.sum()) for c in record.counts.values())
    assert 0 < ungated < places and kept + ungated == places
    assert summary["tokens_ungated"]["experts_per_token"] == pytest.approx(s.model.top_k * kept / places)
    # model FLOPs: one expert FLOP term fewer per copy left out (forward + backward)
    assert summary["model_flop_per_step"] == pytest.approx(
        base["model_flop_per_step"] - ungated * 2.0 * s.model.expert_params * 3.0)
    assert "tokens_ungated" not in base


@pytest.mark.parametrize("routing", [{"distribution": "balanced"}, {"max_nodes_per_token": 1}])
def test_threshold_needs_a_gated_law_without_node_limits(routing):
    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={**routing, "threshold": 0.2})
    assert exc.value.key == "routing.threshold"


def test_threshold_outside_zero_one_is_rejected():
    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={"threshold": 1.5})
    assert exc.value.key == "routing.threshold"
