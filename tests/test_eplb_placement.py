"""EPLB as a placement (placement.strategy: eplb): physical slots, replicas splitting their expert's
tokens, and the per-GPU balance it buys on a skewed router."""
import numpy as np
import pytest

from simulator.api import simulate_scenario
from simulator.engine import Run
from simulator.errors import ScenarioError
from simulator.scenario.memory import experts_per_gpu
from tests.conftest import make_scenario

PREFILL = {"mode": "prefill", "tokens_per_gpu": 512}
ZIPF = {"distribution": "zipf", "zipf_alpha": 1.2}


def eplb(redundant: int, **sections):
    return make_scenario(workload=sections.pop("workload", PREFILL), routing=sections.pop("routing", ZIPF),
                         placement={"strategy": "eplb", "redundant_experts": redundant}, **sections)


def test_every_gpu_holds_its_share_of_slots_and_every_expert_at_least_one():
    run = Run(eplb(8))  # 16 experts + 8 redundant over 8 GPUs: 3 slots each
    for place in run.workload.placements.values():
        assert np.bincount(place.slot_gpu).tolist() == [3] * 8
        assert place.replicas().min() >= 1 and place.replicas().sum() == 24
    assert experts_per_gpu(run.s) == 3


def test_a_replicated_experts_copies_split_evenly_over_its_replicas_and_none_is_lost():
    s = eplb(8)
    run = Run(s)
    tokens = s.workload.tokens_per_gpu * 8 * s.model.top_k * s.workload.micro_batches
    for (group, layer), place in run.workload.placements.items():
        slots = sum(t.expert_tokens for (g, l, _, _), t in run.workload.traffic.items() if (g, l) == (group, layer))
        assert slots.sum() == tokens  # every (token, expert) pair lands in one slot
        count = place.replicas()
        hot = int(np.argmax(count))
        share = slots[place.slot_expert == hot]
        assert len(share) == count[hot] > 1
        assert share.max() / share.mean() < 1.1  # uniform replica choice: even split up to sampling noise


def test_with_enough_redundant_slots_the_gpus_load_within_a_tenth_of_each_other():
    rr = simulate_scenario(make_scenario(workload=PREFILL, routing=ZIPF))[0]
    balanced = simulate_scenario(eplb(8))[0]
    assert rr["load_imbalance"] > 2.4  # Zipf 1.2 over 16 experts on 8 GPUs
    assert balanced["load_imbalance"] < 1.1
    assert balanced["step_time_s"] < rr["step_time_s"]
    # the logical experts' own loads are the router's: EPLB moves them, it does not change them
    assert balanced["expert_load_max_over_mean"] == pytest.approx(rr["expert_load_max_over_mean"], rel=0.05)


def test_with_balanced_routing_eplb_changes_nothing_that_matters():
    flat = {"distribution": "balanced"}
    rr = simulate_scenario(make_scenario(workload=PREFILL, routing=flat))[0]
    moved = simulate_scenario(eplb(0, routing=flat))[0]
    assert moved["load_imbalance"] == pytest.approx(rr["load_imbalance"], rel=1e-9)
    assert moved["step_time_s"] == pytest.approx(rr["step_time_s"], rel=0.02)


@pytest.mark.parametrize("sections, key, words", [
    ({"placement": {"redundant_experts": 8}}, "placement.redundant_experts", "placement.strategy=eplb"),
    ({"placement": {"strategy": "eplb", "redundant_experts": 3}, "workload": PREFILL}, "placement.redundant_experts",
     "fill every GPU"),
])
def test_impossible_eplb_layouts_are_rejected(sections, key, words):
    with pytest.raises(ScenarioError) as err:
        make_scenario(**sections)
    assert err.value.key == key and words in str(err.value)


def test_topology_aware_placement_is_wired_in_and_never_worse_than_round_robin_on_its_objective():
    s = make_scenario(workload=PREFILL, routing=ZIPF, placement={"strategy": "topology_aware"})
    summary, _, record = simulate_scenario(s)
    solver = summary["placement_solver"]
    assert solver["objective_vs_round_robin"] <= 1.0 and solver["methods"] == ["milp"]
    run = Run(s)
    for place in run.workload.placements.values():  # round-robin's slots, a permutation of the experts
        assert sorted(place.slot_expert.tolist()) == list(range(16))
        assert place.slot_gpu.tolist() == (np.arange(16) % 8).tolist() == run.workload.expert_gpu.tolist()
    # each GPU computes the rows of the experts the solver put in its slots
    key = next(iter(run.workload.traffic))
    rows = run.workload.traffic[key].expert_tokens
    for g in range(8):
        expected = run.compute_model.expert_ffn_s(rows[run.workload.expert_gpu == g], s.model.hidden_size,
                                                  s.model.moe_intermediate_size)
        assert run.workload.expert_work_s[key][g] == pytest.approx(expected, rel=1e-12)
    uniform = simulate_scenario(make_scenario(workload=PREFILL, placement={"strategy": "topology_aware"}))[0]
    assert uniform["placement_solver"]["objective_vs_round_robin"] == pytest.approx(1.0)


def test_the_routers_law_is_the_models_in_every_ep_group_and_their_tokens_their_own():
    run = Run(eplb(8, hardware={"nodes": 4}))  # 16 GPUs: two EP groups of 8, serving
    assert run.ranks.num_ep_groups == 2
    for layer in range(run.s.model.num_moe_layers):  # the same law: EPLB packs both groups alike
        assert (run.workload.placements[0, layer].slot_expert == run.workload.placements[1, layer].slot_expert).all()
    tokens = [run.workload.traffic[g, 0, 0, 0].expert_tokens for g in (0, 1)]
    assert not np.array_equal(tokens[0], tokens[1])  # each group draws its own tokens
