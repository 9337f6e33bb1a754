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


@pytest.mark.parametrize("seed", range(5))
def test_every_flow_has_the_highest_rate_at_one_of_its_saturated_ports(seed):
    """The max-min characterisation: a flow's rate can only rise by lowering a smaller one, so it is
    the largest among the flows of some saturated port it crosses; entries in shuffled order."""
    rng = np.random.default_rng(seed)
    num_flows, num_ports = 300, 60
    entries = [(f, p, 1.0) for f in range(num_flows) for p in rng.choice(num_ports, size=4, replace=False)]
    entries = [entries[i] for i in rng.permutation(len(entries))]
    cap = rng.uniform(1, 10, num_ports)
    r = rates(entries, cap, num_flows)
    f, p = (np.array(x, dtype=int) for x in list(zip(*entries))[:2])
    load = np.bincount(p, r[f], minlength=num_ports)
    saturated = load >= cap * (1 - 1e-9)
    top = np.zeros(num_ports)
    np.maximum.at(top, p, r[f])
    for flow in range(num_flows):
        ports = p[f == flow]
        assert any(saturated[q] and r[flow] >= top[q] * (1 - 1e-9) for q in ports)


def test_a_non_finite_capacity_stalls_the_solver_instead_of_spinning():
    from simulator.engine.fairshare import SolverStalled

    with pytest.raises(SolverStalled, match="non-finite capacities"):
        rates([(0, 0, 1.0), (1, 1, 1.0)], [np.nan, 1.0], 2)


def test_components_of_the_flow_port_graph():
    from simulator.engine.fairshare_kernel import component_labels

    # flows 0, 1 share port 1; flow 2 alone on ports 3, 4; flow 3 joins port 4 and 5; port 2 unused
    f = np.array([0, 0, 1, 2, 2, 3, 3])
    p = np.array([0, 1, 1, 3, 4, 4, 5])
    flow_label, port_label = component_labels(f, p, 4, 6)
    assert list(flow_label) == [0, 0, 1, 1]
    assert list(port_label) == [0, 0, -1, 1, 1, 1]


def test_re_solving_the_reached_components_gives_the_whole_solve():
    from simulator.engine.fairshare import resolve_reached
    from simulator.engine.fairshare_kernel import component_labels

    rng = np.random.default_rng(7)
    entries = []
    for group in range(4):  # four independent groups of 10 flows over their own 6 ports
        for flow in range(10):
            for port in rng.choice(6, size=3, replace=False):
                entries.append((group * 10 + flow, group * 6 + int(port), rng.uniform(0.1, 1.0)))
    f, p, w = (np.array(x) for x in zip(*entries))
    f, p = f.astype(int), p.astype(int)
    capacity = rng.uniform(1, 10, 24)
    whole = max_min_rates(f, p, w, capacity, 40)
    labels, _ = component_labels(f, p, 40, 24)
    assert len(set(labels)) == 4
    stale = np.full(40, -1.0)
    reached = np.isin(labels, [labels[10], labels[30]])
    assert resolve_reached(f, p, w, capacity, stale, np.full(40, np.inf), reached) == 20
    assert stale[reached] == pytest.approx(whole[reached], rel=1e-12)
    assert (stale[~reached] == -1.0).all()  # the other components keep what they had
    everything = np.zeros(40)
    assert resolve_reached(f, p, w, capacity, everything, np.full(40, np.inf), np.ones(40, bool)) == 40
    assert np.array_equal(everything, whole)  # all reached: the whole solve, number for number
