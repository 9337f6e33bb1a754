"""Seed 5.2's bandwidth formula in summary.json: required = tokens/s x token size x EP x routing
factor, utilization = actual / required, checked against closed forms of the direct all-to-all."""
import pytest

from simulator.api import simulate_scenario
from simulator.wire import token_bytes
from tests.conftest import make_scenario

EP = 8


def summary_of(**sections):
    return simulate_scenario(make_scenario(**sections))[0]


def test_required_bandwidth_is_the_product_of_its_terms_from_the_scenario():
    s = make_scenario(network={"all_to_all": "direct"})
    summary = simulate_scenario(s)[0]
    sb = summary["seed_bandwidth"]
    hidden, moe_layers = s.model.hidden_size, s.model.num_moe_layers
    copy = token_bytes("fp8", hidden, "direct") + token_bytes("bf16", hidden, "direct")
    assert sb["token_size_bytes"] == moe_layers * 2 * copy  # forward and backward in training
    assert sb["tokens_per_second"] == pytest.approx(256 * 2 / summary["step_time_s"])
    assert (sb["ep_size"], sb["routing_factor"]) == (EP, s.model.top_k)
    assert sb["required_bytes_per_s"] == pytest.approx(
        sb["tokens_per_second"] * sb["token_size_bytes"] * EP * s.model.top_k)


def test_direct_all_to_all_moves_the_formula_traffic_less_the_copies_that_stay_home():
    # uniform routing over 16 experts on 8 GPUs: 2 of the 16 experts are local, (EP - 1) / EP leave
    sb = summary_of(network={"all_to_all": "direct"}, workload={"tokens_per_gpu": 1024})["seed_bandwidth"]
    assert sb["utilization"] == pytest.approx((EP - 1) / EP, rel=0.03)
    assert sb["actual_bytes_per_s"] == pytest.approx(sb["utilization"] * sb["required_bytes_per_s"])
