"""A DeepEP normal kernel moves bytes only as fast as the SMs it holds copy them (issue 11)."""
import numpy as np
import pytest

from simulator.engine import simulate
from simulator.engine.fairshare import max_min_rates
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario import build_scenario


def test_a_flow_at_its_own_cap_leaves_the_port_to_the_others():
    r = max_min_rates(np.array([0, 1]), np.array([0, 0]), np.array([1.0, 1.0]), np.array([10.0]), 2,
                      cap=np.array([2.0, np.inf]))
    assert r == pytest.approx([2.0, 8.0])
    # a cap above the fair share changes nothing
    r = max_min_rates(np.array([0, 1]), np.array([0, 0]), np.array([1.0, 1.0]), np.array([10.0]), 2,
                      cap=np.array([7.0, np.inf]))
    assert r == pytest.approx([5.0, 5.0])


def test_infinite_caps_give_the_uncapped_rates_bit_for_bit():
    rng = np.random.default_rng(3)
    for _ in range(50):
        flows, ports = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        f = np.concatenate([np.arange(flows), rng.integers(0, flows, 3 * flows)])
        p = rng.integers(0, ports, len(f))
        w, c = rng.random(len(f)) + 0.01, rng.random(ports) * 10 + 0.1
        assert np.array_equal(max_min_rates(f, p, w, c, flows), max_min_rates(f, p, w, c, flows, np.full(flows, np.inf)))


def deepep(preset: str, sms: int) -> dict:
    return {"name": "deepep-intranode", "hardware": {"preset": preset, "nodes": 1}, "model": {"preset": "deepseek-v3"},
            "parallel": {"ep_size": 8},
            "workload": {"mode": "prefill", "scope": "moe_layer", "tokens_per_gpu": 4096, "micro_batches": 1},
            "routing": {"distribution": "uniform", "seed": 0},
            "network": {"all_to_all": "hierarchical", "dispatch_dtype": "fp8", "combine_dtype": "bf16", "comm_sms": sms},
            "pipeline": {"overlap": "none", "chunks": 1}}


def dispatch_s(preset: str, sms: int) -> float:
    return summarize(simulate(build_scenario(deepep(preset, sms))))["collectives"]["dispatch"]["mean_time_s"]


def test_few_sms_slow_the_dispatch_in_proportion_and_enough_sms_reach_the_link():
    # H100's NVLink (450 GB/s x 0.822) is above 24 SMs x 14 GB/s: the SMs bound the rate throughout
    four, twenty_four = dispatch_s("h100-sxm", 4), dispatch_s("h100-sxm", 24)
    assert four / twenty_four == pytest.approx(6.0, rel=0.05)
    # H800's NVLink (~160 GB/s) is reached from 12 SMs: 20 and 24 SMs move it alike (DeepSeek-V3: 20 suffice)
    assert dispatch_s("h800", 20) == pytest.approx(dispatch_s("h800", 24), rel=1e-6)
    assert dispatch_s("h800", 6) > 1.5 * dispatch_s("h800", 24)


def test_deepep_normal_without_sms_is_refused():
    with pytest.raises(ScenarioError) as e:
        build_scenario(deepep("h100-sxm", 0))
    assert e.value.key == "network.comm_sms" and ">= 2" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        build_scenario(deepep("h100-sxm", 132))
    assert e.value.key == "network.comm_sms"


def test_kernels_whose_sms_do_not_bound_them_have_no_cap_even_with_no_sms():
    from simulator.wire import algorithm
    cluster = build_scenario(deepep("h100-sxm", 20)).cluster
    for name in ("direct", "low_latency"):
        assert algorithm(name).rate_cap(cluster, 0) == float("inf")  # not 0 x inf = nan
    assert algorithm("hierarchical").rate_cap(cluster, 20) == pytest.approx(20 * 14e9)
