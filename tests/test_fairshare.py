import numpy as np
import pytest

from simulator.engine.fairshare import max_min_rates


def rates(entries, capacity, num_flows):
    f, p, w = (np.array(x) for x in zip(*entries))
    return max_min_rates(f.astype(int), p.astype(int), w.astype(float), np.array(capacity, float), num_flows)


def test_one_flow_gets_the_whole_port():
    assert rates([(0, 0, 1.0)], [10.0], 1) == pytest.approx([10.0])


def test_two_flows_on_one_port_share_it_equally():
    assert rates([(0, 0, 1.0), (1, 0, 1.0)], [10.0], 2) == pytest.approx([5.0, 5.0])


def test_flow_limited_elsewhere_leaves_its_share_to_the_other():
    # flow 0 crosses port 0 (cap 10) and port 1 (cap 2); flow 1 only port 0.
    r = rates([(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0)], [10.0, 2.0], 2)
    assert r == pytest.approx([2.0, 8.0])


def test_weighted_entries_load_ports_in_proportion():
    # flow 0 puts half its rate on port 1: port 1 (cap 3) allows 6, port 0 (cap 10) allows 10.
    assert rates([(0, 0, 1.0), (0, 1, 0.5)], [10.0, 3.0], 1) == pytest.approx([6.0])


def test_no_port_is_overloaded_and_every_flow_has_a_saturated_port():
    rng = np.random.default_rng(3)
    num_flows, num_ports = 40, 12
    entries = [(f, p, rng.uniform(0.1, 1.0)) for f in range(num_flows)
               for p in rng.choice(num_ports, size=3, replace=False)]
    cap = rng.uniform(1, 10, num_ports)
    r = rates(entries, cap, num_flows)
    f, p, w = (np.array(x) for x in zip(*entries))
    load = np.bincount(p.astype(int), w * r[f.astype(int)], minlength=num_ports)
    assert np.all(load <= cap * (1 + 1e-9))
    saturated = load >= cap * (1 - 1e-9)
    for flow in range(num_flows):
        assert saturated[p[f == flow].astype(int)].any()  # max-min: each flow is bottlenecked somewhere
