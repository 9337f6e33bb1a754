"""A collective's payload (what it delivers, each copy once) beside its egress bytes (every hop)."""
import numpy as np
import pytest

from simulator.engine import Run
from simulator.metrics import summarize
from simulator.wire import algorithm, token_bytes
from tests.conftest import make_scenario


def delivered_bytes(run: Run, kind: str) -> float:
    """Token copies to other GPUs of every dispatch, from the traffic the run routed, per GPU."""
    s = run.s
    a2a = algorithm(s.network.all_to_all)
    per_token = token_bytes(s.network.dispatch_dtype if kind == "dispatch" else s.network.combine_dtype,
                            s.model.hidden_size, s.network.all_to_all)
    total = 0.0
    for traffic in run.workload.traffic.values():
        src, dst, count = traffic.pairs(copies=a2a.per_expert_copy)
        total += float(count[src != dst].sum()) * per_token
    calls = len(run.workload.traffic)
    return total / calls / s.parallel.ep_size


@pytest.mark.parametrize("a2a", ["hierarchical", "direct", "low_latency"])
def test_all_to_all_payload_is_the_copies_delivered_to_other_gpus(a2a):
    run = Run(make_scenario(workload={"mode": "prefill"}, network={"all_to_all": a2a}))
    summary = summarize(run.simulate())
    for kind in ("dispatch", "combine"):
        c = summary["collectives"][kind]
        assert c["mean_payload_bytes_per_gpu"] == pytest.approx(delivered_bytes(run, kind), rel=1e-12)
        assert c["mean_payload_bytes_per_gpu"] > 0


def test_hierarchical_egress_counts_the_forwarding_hop_and_payload_does_not():
    # two nodes of 4: a copy for the other node leaves its GPU over IB (once per node) and leaves the
    # forwarder again over NVLink, so egress bytes exceed what is delivered
    summary = summarize(Run(make_scenario(workload={"mode": "prefill"})).simulate())
    d = summary["collectives"]["dispatch"]
    assert d["mean_ib_bytes_per_gpu"] > 0
    assert d["mean_bytes_per_gpu"] > d["mean_payload_bytes_per_gpu"]
    assert d["mean_bytes_per_gpu"] == pytest.approx(d["mean_nvlink_bytes_per_gpu"] + d["mean_ib_bytes_per_gpu"])


def test_direct_inside_one_node_sends_each_copy_once_so_payload_equals_egress():
    s = make_scenario(hardware={"nodes": 1, "gpus_per_node": 8}, workload={"mode": "prefill"},
                      network={"all_to_all": "direct"})
    d = summarize(Run(s).simulate())["collectives"]["dispatch"]
    assert d["mean_payload_bytes_per_gpu"] == pytest.approx(d["mean_bytes_per_gpu"], rel=1e-12)


def test_a_ring_delivers_its_buffer_and_sends_the_bus_bandwidth_share():
    # nccl-tests: algbw counts the buffer S, busbw (n - 1) / n S for reduce-scatter / all-gather
    s = make_scenario(parallel={"ep_size": 4}, training={"grad_bucket_params": 100_000,
                                                           "distributed_optimizer": True})
    summary = summarize(Run(s).simulate())
    n = s.ranks.dp_size
    for kind in ("grad_reducescatter", "param_allgather"):
        c = summary["collectives"][kind]
        assert c["mean_bytes_per_gpu"] == pytest.approx((n - 1) / n * c["mean_payload_bytes_per_gpu"], rel=1e-12)
    assert np.isfinite(summary["collectives"]["grad_reducescatter"]["mean_payload_bytes_per_gpu"])
