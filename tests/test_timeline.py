"""The exact timeline of seed 3.1's overlap, [receive t+1][compute t][send t-1], on a tiny run.

Two GPUs in one node, one MoE layer, two chunks, balanced routing over 2 experts with top-1, so
each GPU sends exactly 2 tokens of each chunk to the other: every collective's duration is a
closed form (setup + bytes / rate + latency), and every kernel's is the compute model's.
"""
import pytest

from simulator.engine import Run
from simulator.engine.gpu import COMPUTE, RECEIVE, SEND
from simulator.engine.program import FORWARD, Op, OpId
from simulator.wire import token_bytes
from tests.conftest import make_scenario

# Launch-bound kernels: the router op runs 4 (GEMM, softmax / top-k, the MLP's norm and residual),
# the experts 5 (two GEMMs, SwiGLU, permute, un-permute); a 1.6 us NVLink hop puts a dispatch between
# (the roofline: the published calibration has its own 4 us per kernel).
TWO_CHUNKS = dict(
    hardware={"nodes": 1, "gpus_per_node": 2, "kernel_launch_us": 1.0, "nvlink_latency_us": 1.6, "calibration": None},
    parallel={"ep_size": 2},
    model={"num_experts": 2, "top_k": 1, "num_shared_experts": 0},
    workload={"mode": "prefill", "scope": "moe_layer", "tokens_per_gpu": 8, "micro_batches": 1},
    routing={"distribution": "balanced"}, network={"all_to_all": "direct", "comm_sms": 0},
    pipeline={"overlap": "three_stream", "chunks": 2},
)


def test_two_chunks_receive_the_next_and_send_the_previous_while_computing():
    s = make_scenario(**TWO_CHUNKS)
    run = Run(s)
    record = run.simulate()
    for c in (0, 1):  # the routing this closed form assumes: 2 tokens of each chunk to each GPU
        assert run.workload.traffic[0, 0, 0, c].pair_tokens.tolist() == [[2, 2], [2, 2]]

    nvl, h = s.cluster.nvlink, s.model.hidden_size
    rate = nvl.achievable_bytes_per_s * s.cluster.direct_alltoall_efficiency
    setup = s.cluster.gpu.kernel_launch_s + nvl.latency_s  # launch + the notify round inside a node
    dispatch = setup + 2 * token_bytes("fp8", h, "direct") / rate + nvl.latency_s
    combine = setup + 2 * token_bytes("bf16", h, "direct") / rate + nvl.latency_s
    router = run.work_s(Op("router", 0, 0), 0, 0, 0, 0)
    experts = [run.work_s(Op("experts", 0, 0), 0, 0, 0, c) for c in (0, 1)]
    # the orderings below are what the durations of this scenario give; check them first
    assert router < dispatch < experts[0] and combine < experts[1]

    t_dispatch = router + dispatch  # chunk 0 delivered; chunk 1's dispatch may start (stream order)
    t_experts = t_dispatch + experts[0]
    expected = [
        (COMPUTE, 0.0, router, "router", 0),
        (COMPUTE, router, 2 * router, "router", 1),
        (RECEIVE, router, t_dispatch, "dispatch", 0),
        (RECEIVE, t_dispatch, t_dispatch + dispatch, "dispatch", 1),  # receive t+1 ...
        (COMPUTE, t_dispatch, t_experts, "experts", 0),  # ... beside compute t
        (SEND, t_experts, t_experts + combine, "combine", 0),  # send t-1 ...
        (COMPUTE, t_experts, t_experts + experts[1], "experts", 1),  # ... beside compute t
        (SEND, t_experts + experts[1], t_experts + experts[1] + combine, "combine", 1),
    ]
    for gpu in (0, 1):  # the two GPUs are symmetric
        got = record.intervals[gpu]
        assert [(iv.stream, iv.op) for iv in got] == [(stream, OpId(0, op, FORWARD, 0, c))
                                                      for stream, _, _, op, c in expected]
        assert [iv.start_s for iv in got] == pytest.approx([e[1] for e in expected], rel=1e-9)
        assert [iv.end_s for iv in got] == pytest.approx([e[2] for e in expected], rel=1e-9)
    assert record.step_time_s == pytest.approx(expected[-1][2], rel=1e-9)


def test_without_overlap_the_same_ops_run_back_to_back_in_program_order():
    s = make_scenario(**{**TWO_CHUNKS, "pipeline": {"overlap": "none", "chunks": 2}})
    record = Run(s).simulate()
    got = record.intervals[0]
    assert [iv.op.name for iv in got] == ["router", "dispatch", "experts", "combine"] * 2
    assert [iv.op.chunk for iv in got] == [0] * 4 + [1] * 4
    for before, after in zip(got, got[1:]):
        assert after.start_s == pytest.approx(before.end_s, rel=1e-12)
