"""workload.extend_layers: a whole model's step from two models with fewer MoE layers (opt-in, an
estimate): close to the whole simulation, exact in what is linear by construction (calls, FLOPs),
the whole model's memory, and refused where the layers simulated cannot stand for the rest."""
import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.extension import LAYER_SAMPLE, sample_layers
from simulator.scenario.budget import estimate
from tests.conftest import make_scenario
from tests.test_serving import decode

DEEP = {"num_layers": 12, "num_dense_layers": 1}  # 11 MoE layers of the tiny model


def pair(**sections):
    model = {**DEEP, **sections.pop("model", {})}
    workload = sections.pop("workload", {})
    whole = make_scenario(model=model, workload=workload, **sections)
    extended = make_scenario(model=model, workload={**workload, "extend_layers": "always"}, **sections)
    return simulate_scenario(whole)[0], simulate_scenario(extended)[0], extended


@pytest.mark.parametrize("sections", [
    {},  # training, three streams, two micro-batches
    {"routing": {"distribution": "balanced"}},
    {"workload": {"mode": "prefill"}},
    # ZeRO-1 over DP 16 / expert DP 2, each layer its own bucket as a real model's 40M-parameter
    # buckets are (the tiny model's default bucket holds every layer: one exposed reduction at the end)
    {"training": {"distributed_optimizer": True, "grad_bucket_params": 100_000}, "hardware": {"nodes": 4}},
])
def test_the_extended_step_is_the_whole_models_within_one_percent(sections):
    whole, extended, s = pair(**sections)
    assert sample_layers(s) == LAYER_SAMPLE
    assert extended["step_time_s"] == pytest.approx(whole["step_time_s"], rel=0.01)
    assert extended["mfu"] == pytest.approx(whole["mfu"], rel=0.01)
    # linear by construction: every MoE layer has the same calls and FLOPs
    assert extended["model_flop_per_step"] == pytest.approx(whole["model_flop_per_step"], rel=1e-12)
    assert extended["model_flop_per_token_forward"] == whole["model_flop_per_token_forward"]
    assert {k: c["count"] for k, c in extended["collectives"].items()} == \
        {k: c["count"] for k, c in whole["collectives"].items()}
    assert extended["memory_per_gpu"] == whole["memory_per_gpu"]
    assert extended["parameters_per_gpu"] == whole["parameters_per_gpu"]
    assert sum(extended["breakdown_s"].values()) == pytest.approx(extended["step_time_s"], rel=1e-9)
    assert min(extended["breakdown_s"].values()) >= 0
    assert "extend_layers: always" in extended["provenance"]["simulated"]


def test_decode_latency_and_node_rate_follow_the_extended_step():
    whole = simulate_scenario(decode(model=DEEP))[0]
    extended = simulate_scenario(decode(model=DEEP, workload={"extend_layers": "always"}))[0]
    assert extended["itl_s"] == pytest.approx(extended["step_time_s"], rel=1e-12)
    assert extended["itl_s"] == pytest.approx(whole["itl_s"], rel=0.01)
    assert extended["tokens_per_s_per_node"] == pytest.approx(whole["tokens_per_s_per_node"], rel=0.01)
    assert extended["serving"]["two_batch_overlap"]["comm_in_flight_s"] == pytest.approx(
        whole["serving"]["two_batch_overlap"]["comm_in_flight_s"], rel=0.05)


def test_it_is_opt_in_and_a_short_model_runs_whole():
    assert sample_layers(make_scenario(model=DEEP)) is None  # never unless asked
    short = make_scenario(model={"num_layers": 6, "num_dense_layers": 1}, workload={"extend_layers": "always"})
    assert sample_layers(short) is None  # 5 MoE layers: nothing to gain over simulating 2 and 4
    assert "simulated" not in simulate_scenario(short)[0]["provenance"]


def test_the_budget_charges_the_two_shorter_models():
    whole = estimate(make_scenario(model={"num_layers": 61, "num_dense_layers": 1}))
    extended = estimate(make_scenario(model={"num_layers": 61, "num_dense_layers": 1},
                                      workload={"extend_layers": "always"}))
    assert extended.num_runs == 2 and extended.wall_s < whole.wall_s / 4


@pytest.mark.parametrize("sections, words", [
    ({"workload": {"scope": "moe_layer"}}, "scope=model"),
    ({"parallel": {"ep_size": 8, "pp_size": 2}, "hardware": {"nodes": 4}}, "pp_size=1"),
    ({"workload": {"steps": 2}}, "steps=1"),
    ({"routing": {"distribution": "zipf", "zipf_alpha_per_layer": [0.5, 1.5]}}, "zipf_alpha_per_layer"),
    ({"routing": {"distribution": "zipf", "zipf_alpha": 1.2}}, "draws each layer's hot experts"),
    ({"routing": {"distribution": "dirichlet"}}, "draws each layer's hot experts"),
])
def test_layers_that_cannot_stand_for_the_rest_are_refused(sections, words):
    workload = {"extend_layers": "always", **sections.pop("workload", {})}
    with pytest.raises(ScenarioError) as err:
        make_scenario(model=DEEP, workload=workload, **sections)
    assert err.value.key == "workload.extend_layers" and words in str(err.value)
