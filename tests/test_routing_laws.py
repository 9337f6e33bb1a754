"""More routing laws and expert capacity: Dirichlet, temporal drift, capacity with token dropping."""
import numpy as np
import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.workload.routing import drift_order, drop_over_capacity
from tests.conftest import make_scenario

ZIPF = {"distribution": "zipf", "zipf_alpha": 1.2}


def test_capacity_keeps_the_first_copies_of_each_expert_per_source_gpu():
    experts = np.array([[0, 1], [0, 2], [0, 1], [3, 0],   # source GPU 0: expert 0 four times
                        [1, 0], [1, 2], [1, 3], [2, 3]])  # source GPU 1: expert 1 three times
    kept = drop_over_capacity(experts, tokens_per_gpu=4, capacity=2)
    assert kept.tolist() == [[0, 1], [0, 2], [-1, 1], [3, -1],
                             [1, 0], [1, 2], [-1, 3], [2, 3]]


def test_dropped_copies_are_neither_sent_nor_computed_and_the_summary_counts_them():
    s = make_scenario(workload={"tokens_per_gpu": 512}, routing={**ZIPF, "capacity_factor": 1.0})
    summary, _, record = simulate_scenario(s)
    kept = sum(int(c.recv_copies.sum()) for c in record.counts.values())
    expert_rows = sum(int(c.expert_tokens.sum()) for c in record.counts.values())
    routed = s.workload.tokens_per_gpu * 8 * s.model.top_k * s.workload.micro_batches * s.model.num_moe_layers
    assert kept == expert_rows and kept + summary["tokens_dropped"]["copies"] == routed
    assert summary["tokens_dropped"]["fraction"] == pytest.approx(1 - kept / routed)
    # capacity 1.0 x 512 x 2 / 16 = 64 copies per expert and source GPU
    for c in record.counts.values():
        assert c.recv_copies.max() <= 64 * 8 * 2  # 8 sources, the GPU's 2 experts, 2 chunks at most summed


def test_more_capacity_drops_fewer_and_ample_capacity_is_dropless_exactly():
    fractions = [simulate_scenario(make_scenario(routing={**ZIPF, "capacity_factor": cf}))[0]["tokens_dropped"]
                 ["fraction"] for cf in (1.0, 2.0, 4.0)]
    assert fractions[0] > fractions[1] > fractions[2]
    ample = simulate_scenario(make_scenario(routing={**ZIPF, "capacity_factor": 1000.0}))[0]
    dropless = simulate_scenario(make_scenario(routing=ZIPF))[0]
    assert ample["tokens_dropped"]["copies"] == 0 and ample["step_time_s"] == dropless["step_time_s"]


def test_a_dirichlet_law_is_as_skewed_as_its_concentration_says():
    def skew(c):
        s = make_scenario(routing={"distribution": "dirichlet", "dirichlet_concentration": c})
        return simulate_scenario(s)[0]["expert_load_max_over_mean"]
    assert skew(100.0) < 1.5 < 3.0 < skew(0.1)


def test_drift_moves_the_hot_experts_a_step_at_a_time():
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    assert drift_order(16, 0.5, 0, rng()) is None
    one, two = drift_order(16, 0.5, 1, rng()), drift_order(16, 0.5, 2, rng())
    assert sorted(one.tolist()) == list(range(16)) and (one != np.arange(16)).sum() == 8  # 4 pairs traded
    assert not np.array_equal(one, two)
    s = make_scenario(workload={"steps": 2}, routing={**ZIPF, "drift": 0.5})
    steps = simulate_scenario(s)[0]["per_step"]
    assert steps[0]["step_time_s"] == simulate_scenario(make_scenario(routing=ZIPF))[0]["step_time_s"]


def test_drift_needs_steps_and_a_skewed_law():
    with pytest.raises(ScenarioError) as err:
        make_scenario(routing={**ZIPF, "drift": 0.5})
    assert "routing.drift" in str(err.value) and "steps >= 2" in str(err.value)
    with pytest.raises(ScenarioError):
        make_scenario(workload={"steps": 2}, routing={"drift": 0.5})


def test_per_layer_zipf_exponents_give_each_layer_its_own_strength():
    """zipf_alpha_per_layer [0.2, 2.0] cycles over the MoE layers: the steep layers' loads are far more
    skewed than the flat ones', and a one-value list equals zipf_alpha."""
    import numpy as np

    from simulator.api import simulate_scenario
    from tests.conftest import make_scenario

    def per_layer_imbalance(**routing):
        _, rows, _ = simulate_scenario(make_scenario(model={"num_layers": 4}, routing={"distribution": "zipf", **routing}))
        out = {}
        for layer in sorted({r["moe_layer"] for r in rows}):
            copies = np.array([r["routed_token_copies"] for r in rows if r["moe_layer"] == layer])
            out[layer] = copies.max() / copies.mean()
        return out

    mixed = per_layer_imbalance(zipf_alpha_per_layer=[0.2, 2.0])
    assert min(mixed[1], mixed[3]) > 1.5 * max(mixed[0], mixed[2])
    assert per_layer_imbalance(zipf_alpha_per_layer=[1.3]) == per_layer_imbalance(zipf_alpha=1.3)


def test_per_layer_zipf_exponents_need_the_zipf_law():
    import pytest

    from simulator.errors import ScenarioError
    from tests.conftest import make_scenario

    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={"distribution": "uniform", "zipf_alpha_per_layer": [1.0]})
    assert exc.value.key == "routing.zipf_alpha_per_layer"
    with pytest.raises(ScenarioError) as exc:
        make_scenario(routing={"distribution": "zipf", "zipf_alpha_per_layer": [1.0, 5.0]})
    assert exc.value.key.startswith("routing.zipf_alpha_per_layer")


def _ordered_outcome_probabilities(p, expert_node, k, limit):
    """Exact probability of every ordered choice of k experts under the routing law: each draw picks
    an allowed expert (not yet chosen; on one of the token's nodes once it spans `limit`) with
    probability proportional to p among the allowed."""
    out = {}

    def walk(chosen, prob):
        if len(chosen) == k:
            out[tuple(chosen)] = prob
            return
        nodes = {expert_node[e] for e in chosen}
        allowed = [e for e in range(len(p)) if e not in chosen and (len(nodes) < limit or expert_node[e] in nodes)]
        mass = sum(p[e] for e in allowed)
        for e in allowed:
            walk(chosen + [e], prob * p[e] / mass)

    walk([], 1.0)
    return out


@pytest.mark.parametrize("distribution, limit", [("zipf", 2), ("zipf", None), ("uniform", 2)])
def test_the_sampler_draws_every_ordered_choice_with_its_exact_plackett_luce_probability(distribution, limit):
    # 8 experts on 4 nodes, top 3: every one of the ordered outcomes against its enumerated probability
    from scipy.stats import chisquare

    from simulator.workload.routing import Router
    expert_node = np.arange(8) // 2
    router = Router(8, 3, distribution, 1.3, expert_node, limit, np.random.default_rng(7))
    exact = _ordered_outcome_probabilities(router.probabilities, expert_node, 3, limit or 4)
    n = 400_000
    drawn = router.route(n, np.random.default_rng(11))
    codes = (drawn[:, 0] * 64 + drawn[:, 1] * 8 + drawn[:, 2]).astype(np.int64)
    seen = np.bincount(codes, minlength=512)
    outcomes = sorted(exact)
    index = [a * 64 + b * 8 + c for a, b, c in outcomes]
    assert seen.sum() == seen[index].sum()  # nothing outside the law's support (repeats, a third node)
    assert sum(exact.values()) == pytest.approx(1.0)
    expected = np.array([exact[o] for o in outcomes]) * n
    assert chisquare(seen[index], expected).pvalue > 1e-3
