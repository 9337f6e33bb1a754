"""Closed forms for the fluid network and for collectives on the topology."""
import numpy as np
import pytest

from hardware.topology import Topology
from simulator.engine.collective import Collective
from simulator.engine.network import FlowBatch, Network
from simulator.engine.paths import build_paths
from simulator.ranks import RankLayout
from simulator.wire import ALL_TO_ALL
from simulator.workload.traffic import ChunkTraffic
from tests.conftest import make_scenario

MB = 1e6


def run_batches(env, net, batches):
    done = {}
    for name, flows in batches:
        f = np.array([e[0] for e in flows])
        p = np.array([e[1] for e in flows])
        b = np.array([e[2] for e in flows], dtype=float)
        n = int(f.max()) + 1
        net.add(FlowBatch(f, p, b, n, lambda owners, t, name=name: done.setdefault(name, []).append((list(owners), t))))
    env.run()
    return done


def ep_group(num_gpus: int, gpus_per_node: int):
    """The one EP group spanning every GPU."""
    return RankLayout(num_gpus, gpus_per_node, ep_size=num_gpus).ep_group(0)


def topology(**hardware):
    return Topology(make_scenario(hardware=hardware).cluster)


def test_one_transfer_ends_at_bytes_over_port_rate(env):
    topo = topology(nodes=2, gpus_per_node=4)
    net = Network(env, topo)
    port = int(topo.nvl_in(1))
    done = run_batches(env, net, [("a", [(0, int(topo.nvl_out(0)), 8 * MB), (0, port, 8 * MB)])])
    cap = topo.spec.nvlink.achievable_bytes_per_s
    assert done["a"][0][1] == pytest.approx(8 * MB / cap, rel=1e-9)


def test_two_concurrent_transfers_on_one_link_share_it(env):
    topo = topology(nodes=2, gpus_per_node=4)
    net = Network(env, topo)
    into = int(topo.nvl_in(3))
    done = run_batches(env, net, [("a", [(0, int(topo.nvl_out(0)), 4 * MB), (0, into, 4 * MB)]),
                                  ("b", [(0, int(topo.nvl_out(1)), 4 * MB), (0, into, 4 * MB)])])
    cap = topo.spec.nvlink.achievable_bytes_per_s
    assert done["a"][0][1] == pytest.approx(2 * 4 * MB / cap, rel=1e-6)
    assert done["b"][0][1] == pytest.approx(2 * 4 * MB / cap, rel=1e-6)
    assert net.port_bytes[into] == pytest.approx(8 * MB)


def test_a_short_transfer_ends_first_and_frees_its_share(env):
    topo = topology(nodes=2, gpus_per_node=4)
    net = Network(env, topo)
    into = int(topo.nvl_in(3))
    cap = topo.spec.nvlink.achievable_bytes_per_s
    done = run_batches(env, net, [("short", [(0, into, 1 * MB)]), ("long", [(0, into, 3 * MB)])])
    assert done["short"][0][1] == pytest.approx(2 * MB / cap, rel=1e-6)
    # 1 MB of the long one moved while sharing, the other 2 MB at full rate
    assert done["long"][0][1] == pytest.approx(2 * MB / cap + 2 * MB / cap, rel=1e-6)


def test_a_change_re_solves_only_the_flows_that_share_ports_with_it(env):
    topo = topology(nodes=2, gpus_per_node=4)
    net = Network(env, topo)
    cap = topo.spec.nvlink.achievable_bytes_per_s
    a, b = int(topo.nvl_in(1)), int(topo.nvl_in(3))  # two ports no flow shares
    done = run_batches(env, net, [("a", [(0, a, 1 * MB), (1, a, 3 * MB)]), ("b", [(0, b, 2 * MB), (1, b, 2 * MB)])])
    # on its own port each pair shares as if alone: a's short flow at 2 MB / cap, then its long one
    assert done["a"][0] == ([0], pytest.approx(2 * MB / cap, rel=1e-9))
    assert done["a"][1] == ([1], pytest.approx(4 * MB / cap, rel=1e-9))
    assert done["b"][0] == ([0, 1], pytest.approx(4 * MB / cap, rel=1e-9))
    # solves: all 4 flows at the start, then a's remaining flow alone when its short one ends, and
    # nothing left to solve when b ends (its last flows) -- not 4 + 3 flows
    assert net.num_solves == 2 and net.num_flows_solved == 4 + 1


def single_pair_traffic(p, src, dst, tokens, num_experts=16):
    pair = np.zeros((p, p), dtype=np.int64)
    pair[src, dst] = tokens
    return ChunkTraffic(pair_tokens=pair, pair_copies=pair.copy(), node_tokens=np.zeros((p, 1), np.int64),
                        expert_tokens=np.zeros(num_experts, np.int64))


def test_collective_of_one_pair_ends_at_setup_plus_bytes_over_rate_plus_latency(env):
    s = make_scenario(hardware={"nodes": 1, "gpus_per_node": 4}, parallel={"ep_size": 4})
    topo = Topology(s.cluster)
    net = Network(env, topo)
    group = np.arange(4)
    traffic = single_pair_traffic(4, 0, 2, tokens=1000)
    num_bytes = 1000 * 512.0
    setup = 3e-6
    paths = build_paths(ALL_TO_ALL["direct"], traffic, 512.0, ep_group(4, 4), topo)
    coll = Collective(env, net, group, lambda: paths, True, setup)
    events = [coll.arrive(i) for i in range(4)]
    env.run()
    nvl = topo.spec.nvlink
    expect = setup + num_bytes / nvl.achievable_bytes_per_s + nvl.latency_s
    assert coll.recv_done_s[2] == pytest.approx(expect, rel=1e-9)
    assert coll.send_done_s[0] == pytest.approx(setup + num_bytes / nvl.achievable_bytes_per_s, rel=1e-9)
    assert coll.recv_done_s[1] == pytest.approx(setup)  # receives nothing
    assert all(e.triggered for e in events)


def test_hierarchical_crosses_ib_once_per_node_then_forwards_over_nvlink(env):
    s = make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, parallel={"ep_size": 8})
    topo = Topology(s.cluster)
    p = 8
    pair = np.zeros((p, p), dtype=np.int64)
    pair[0, 5] = pair[0, 6] = 100  # GPU 0 (node 0, rail 0) -> GPUs 5, 6 on node 1
    nodes = np.zeros((p, 2), dtype=np.int64)
    nodes[0, 1] = 100  # the same 100 tokens go to both: one IB crossing
    traffic = ChunkTraffic(pair, pair.copy(), nodes, np.zeros(16, np.int64))
    paths = build_paths(ALL_TO_ALL["hierarchical"], traffic, 10.0, ep_group(p, 4), topo)
    load = np.bincount(paths.entry_port, paths.entry_bytes, minlength=topo.num_ports)
    assert load[topo.nic_out(0)] == pytest.approx(1000)
    assert load[topo.nic_in(4)] == pytest.approx(1000)  # the forwarder: node 1, local rank 0
    assert load[topo.nvl_out(4)] == pytest.approx(2000)
    assert load[topo.nvl_in(5)] == pytest.approx(1000) and load[topo.nvl_in(6)] == pytest.approx(1000)
    direct = build_paths(ALL_TO_ALL["direct"], traffic, 10.0, ep_group(p, 4), topo)
    dload = np.bincount(direct.entry_port, direct.entry_bytes, minlength=topo.num_ports)
    assert dload[topo.nic_out(0)] == pytest.approx(2000)  # direct sends a copy per destination GPU


def test_topology_bandwidth_and_latency_matrices_follow_the_node_boundary():
    topo = topology(nodes=2, gpus_per_node=4)
    bw = topo.bandwidth_matrix()
    lat = topo.latency_matrix()
    assert bw[0, 1] == pytest.approx(topo.spec.nvlink.achievable_bytes_per_s)
    assert bw[0, 4] == pytest.approx(topo.spec.ib.achievable_bytes_per_s)
    assert lat[0, 0] == 0 and lat[0, 4] == pytest.approx(topo.spec.ib.latency_s)
    assert lat[0, 5] == pytest.approx(topo.spec.ib_cross_rail_latency_s)


def test_an_oversubscribed_spine_slows_cross_rail_traffic_only(env):
    s = make_scenario(hardware={"nodes": 2, "gpus_per_node": 4, "spine_oversubscription": 4.0})
    topo = Topology(s.cluster)
    assert topo.has_spine
    cap = topo.port_capacity_bytes_per_s()
    # one rail's uplink carries what its 2 NICs can send, divided by the oversubscription
    assert cap[topo.spine_up(0)] == pytest.approx(2 * topo.spec.ib.achievable_bytes_per_s / 4.0)
    p = 8
    pair = np.zeros((p, p), dtype=np.int64)
    pair[0, 4] = 1000  # same rail (0 -> 4): leaf only
    pair[1, 6] = 1000  # rail 1 -> rail 2: through the spine
    traffic = ChunkTraffic(pair, pair.copy(), np.zeros((p, 2), np.int64), np.zeros(16, np.int64))
    paths = build_paths(ALL_TO_ALL["direct"], traffic, 100.0, ep_group(p, 4), topo)
    load = np.bincount(paths.entry_port, paths.entry_bytes, minlength=topo.num_ports)
    assert load[topo.spine_up(0)] == 0
    assert load[topo.spine_up(1)] == pytest.approx(1e5) and load[topo.spine_down(2)] == pytest.approx(1e5)
    net = Network(env, topo)
    done = {}
    net.add(FlowBatch(paths.entry_flow, paths.entry_port, paths.entry_bytes, p,
                      lambda owners, t: done.update({int(o): t for o in owners})))
    env.run()
    assert done[0] == pytest.approx(1e5 / topo.spec.ib.achievable_bytes_per_s)
    assert done[1] == pytest.approx(1e5 / cap[topo.spine_up(1)])
