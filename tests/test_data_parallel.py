"""Data-parallel gradient sync: ring collectives against closed forms, the buckets Megatron would
form, ZeRO-1, overlap with the backward, and the optimizer step."""
import numpy as np
import pytest
import simpy

from hardware.topology import Topology
from simulator.engine import Run, simulate
from simulator.engine.collective import COLLECTIVES, Collective
from simulator.engine.network import Network
from simulator.engine.program import BACKWARD, UPDATE, grad_buckets
from simulator.engine.rings import idle_time_s, ring_paths
from simulator.metrics import summarize
from tests.conftest import make_scenario

GB = 1e9


def ring_time_s(env, topo, op, gpus, num_bytes, setup_s=0.0, algorithm="ring"):
    """Run one ring collective alone on an idle network; returns its time on every member."""
    net = Network(env, topo)
    gpus = np.asarray(gpus)
    coll = Collective(env, net, gpus, lambda: ring_paths(op, gpus, num_bytes, topo, algorithm), True, setup_s)
    for i in range(len(gpus)):
        coll.arrive(i)
    env.run()
    return coll.recv_done_s - coll.start_s


@pytest.mark.parametrize("op, passes", [("allreduce", 2), ("reducescatter", 1), ("allgather", 1)])
def test_ring_inside_one_node_takes_its_bus_bytes_over_nvlink_plus_hop_latencies(env, op, passes):
    topo = Topology(make_scenario(hardware={"nodes": 1, "gpus_per_node": 8}).cluster)
    n, size = 8, 1 * GB
    took = ring_time_s(env, topo, op, np.arange(n), size, setup_s=5e-6)
    nvl = topo.spec.nvlink
    expect = 5e-6 + passes * (n - 1) / n * size / nvl.achievable_bytes_per_s + passes * (n - 1) * nvl.latency_s
    assert took == pytest.approx(np.full(n, expect), rel=1e-9)


def test_ring_over_one_gpu_per_node_sends_everything_through_the_nics(env):
    topo = Topology(make_scenario(hardware={"nodes": 4, "gpus_per_node": 8}).cluster)
    gpus, size = np.array([3, 11, 19, 27]), 0.5 * GB  # the same rail on four nodes: leaf only
    took = ring_time_s(env, topo, "allreduce", gpus, size)
    ib = topo.spec.ib
    expect = 2 * 3 / 4 * size / ib.achievable_bytes_per_s + 2 * 3 * ib.latency_s
    assert took == pytest.approx(np.full(4, expect), rel=1e-9)


def test_ring_over_whole_nodes_is_bound_by_the_slower_of_nvlink_and_the_nic_share(env):
    topo = Topology(make_scenario(hardware={"nodes": 2, "gpus_per_node": 8}).cluster)
    size = 2 * GB
    paths = ring_paths("allreduce", np.arange(16), size, topo)
    load = np.bincount(paths.entry_port, paths.entry_bytes, minlength=topo.num_ports)
    k, nodes = 8, 2
    assert load[topo.nvl_out(0)] == pytest.approx(2 * (k - 1) / k * size)
    assert load[topo.nic_out(0)] == pytest.approx(2 * (nodes - 1) / nodes * size / k)
    # every member's egress adds up to nccl-tests' bus bytes 2 (n - 1) / n x size
    egress = load[topo.nvl_out(np.arange(16))] + load[topo.nic_out(np.arange(16))]
    assert egress == pytest.approx(np.full(16, 2 * 15 / 16 * size))
    # conservation: what leaves over NVLink (NICs) arrives over NVLink (NICs)
    assert load[topo.nvl_in(np.arange(16))].sum() == pytest.approx(load[topo.nvl_out(np.arange(16))].sum())
    assert load[topo.nic_in(np.arange(16))].sum() == pytest.approx(load[topo.nic_out(np.arange(16))].sum())
    took = ring_time_s(env, topo, "allreduce", np.arange(16), size)
    spec = topo.spec
    bandwidth_s = max(2 * 7 / 8 * size / spec.nvlink.achievable_bytes_per_s,
                      2 * 1 / 2 * size / 8 / spec.ib.achievable_bytes_per_s)
    latency_s = 2 * (7 * spec.nvlink.latency_s + 1 * spec.ib.latency_s)
    assert took == pytest.approx(np.full(16, bandwidth_s + latency_s), rel=1e-9)


def test_tree_all_reduce_over_nodes_has_the_rings_bandwidth_and_logarithmic_latency(env):
    # NCCL's double binary tree over 16 nodes of one GPU each: 2 S through each NIC (the ring: 2 x 15/16 S),
    # latency two passes of ceil(log2 16) = 4 IB hops (the ring: 15)
    topo = Topology(make_scenario(hardware={"nodes": 16, "gpus_per_node": 8}).cluster)
    gpus, size = np.arange(16) * 8, 0.5 * GB
    ib = topo.spec.ib
    tree = ring_time_s(env, topo, "allreduce", gpus, size, algorithm="tree")
    assert tree == pytest.approx(np.full(16, 2 * size / ib.achievable_bytes_per_s + 2 * 4 * ib.latency_s), rel=1e-9)
    ring = ring_time_s(simpy.Environment(), topo, "allreduce", gpus, size)
    assert ring == pytest.approx(np.full(16, 2 * 15 / 16 * size / ib.achievable_bytes_per_s + 2 * 15 * ib.latency_s),
                                 rel=1e-9)
    # a small buffer is latency-bound: there the tree is the faster
    small_tree = ring_time_s(simpy.Environment(), topo, "allreduce", gpus, 1e3, algorithm="tree")
    small_ring = ring_time_s(simpy.Environment(), topo, "allreduce", gpus, 1e3)
    assert small_tree[0] < small_ring[0] / 2


@pytest.mark.parametrize("size, picks", [(1e3, "tree"), (0.5 * GB, "ring")])
def test_auto_takes_whichever_all_reduce_finishes_sooner(size, picks):
    # 16 nodes of one GPU each: latency-bound small buffers go as a tree (4 IB hops a pass against
    # 15), bandwidth-bound large ones as a ring (2 x 15/16 S through each NIC against 2 S)
    topo = Topology(make_scenario(hardware={"nodes": 16, "gpus_per_node": 8}).cluster)
    gpus = np.arange(16) * 8
    times = {a: ring_time_s(simpy.Environment(), topo, "allreduce", gpus, size, algorithm=a)[0]
             for a in ("ring", "tree", "auto")}
    assert times["auto"] == times[picks] == min(times["ring"], times["tree"])
    assert idle_time_s(ring_paths("allreduce", gpus, size, topo, picks), topo) == pytest.approx(times[picks], rel=1e-9)
    scattered = ring_paths("reducescatter", gpus, 1e3, topo, "auto")  # trees are for all-reduce only
    assert np.array_equal(scattered.entry_bytes, ring_paths("reducescatter", gpus, 1e3, topo).entry_bytes)


def test_tree_is_the_ring_inside_one_node_and_leaves_reduce_scatter_a_ring():
    topo = Topology(make_scenario(hardware={"nodes": 2, "gpus_per_node": 8}).cluster)
    for op, gpus in (("allreduce", np.arange(8)), ("reducescatter", np.arange(16)), ("allgather", np.arange(16))):
        ring, tree = ring_paths(op, gpus, GB, topo), ring_paths(op, gpus, GB, topo, "tree")
        assert np.array_equal(ring.entry_port, tree.entry_port)
        assert np.array_equal(ring.entry_bytes, tree.entry_bytes)
        assert np.array_equal(ring.pair_latency_s, tree.pair_latency_s)
    # over whole nodes: the chain's NVLink bytes are the ring's, each member's NIC carries 2 S / k
    paths = ring_paths("allreduce", np.arange(16), GB, topo, "tree")
    load = np.bincount(paths.entry_port, paths.entry_bytes, minlength=topo.num_ports)
    assert load[topo.nvl_out(0)] == pytest.approx(2 * 7 / 8 * GB)
    assert load[topo.nic_out(np.arange(16))] == pytest.approx(np.full(16, 2 * GB / 8))


def test_allreduce_algorithm_reaches_the_gradient_sync_and_its_provenance():
    base = dict(hardware={"nodes": 4, "gpus_per_node": 4}, parallel={"ep_size": 4}, pipeline={"chunks": 1})
    ring = summarize(simulate(make_scenario(**base)))
    tree = summarize(simulate(make_scenario(**base, network={"allreduce_algorithm": "tree"})))
    assert "double binary trees" in tree["provenance"]["data_parallel"]
    assert "rings" in ring["provenance"]["data_parallel"]
    # dense DP 16 over four nodes: each member's NIC carries 2 S / k, the ring's 2 x 3/4 S / k; NVLink the same
    t, r = tree["collectives"]["grad_allreduce"], ring["collectives"]["grad_allreduce"]
    assert t["mean_ib_bytes_per_gpu"] == pytest.approx(r["mean_ib_bytes_per_gpu"] * 4 / 3, rel=1e-12)
    assert t["mean_nvlink_bytes_per_gpu"] == pytest.approx(r["mean_nvlink_bytes_per_gpu"], rel=1e-12)
    assert t["mean_time_s"] != r["mean_time_s"]


def test_buckets_fill_in_backward_order_until_they_hold_the_bucket_size():
    layers = [(0, 10, 0), (1, 10, 30), (2, 10, 30), (3, 10, 30)]  # (layer, dense, expert) params
    buckets = grad_buckets(layers, {"dense": 25, "expert": 50})
    dense = [b for b in buckets if b.family == "dense"]
    expert = [b for b in buckets if b.family == "expert"]
    assert [(b.layers, b.num_params) for b in dense] == [((3, 2, 1), 30), ((0,), 10)]
    assert [(b.layers, b.num_params) for b in expert] == [((3, 2), 60), ((1,), 30)]
    # launch order: as soon as a bucket's last layer (in backward order) is done
    assert [(b.family, b.first_layer) for b in buckets] == [("expert", 2), ("dense", 1), ("expert", 1),
                                                            ("dense", 0)]


def sync_kinds(record):
    return {cid.kind for cid in record.collectives if COLLECTIVES[cid.kind].group != "ep"}


def test_ep4_dp2_all_reduces_dense_grads_over_8_gpus_and_expert_grads_over_pairs():
    s = make_scenario(parallel={"ep_size": 4})
    r = simulate(s)
    assert sync_kinds(r) == {"grad_allreduce", "expert_grad_allreduce"}
    expert = [c for c in r.collectives.values() if c.kind == "expert_grad_allreduce"]
    assert sorted(c.gpus.tolist() for c in expert) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    m = s.model
    expert_params = 2 * (m.num_experts // 4) * m.expert_params  # 2 MoE layers, 4 experts each
    fp32 = 4
    for c in expert:  # one bucket (under 40M parameters), all-reduced in FP32 over 2 GPUs on 2 nodes
        assert c.ib_bytes_per_gpu == pytest.approx(np.full(2, 2 * 1 / 2 * expert_params * fp32))
    dense = [c for c in r.collectives.values() if c.kind == "grad_allreduce"]
    assert len(dense) == 1 and dense[0].gpus.tolist() == list(range(8))
    assert dense[0].bytes_out / 8 == pytest.approx(2 * 7 / 8 * m.replicated_params("model") * fp32)


def test_distributed_optimizer_reduce_scatters_gathers_params_and_shards_the_optimizer():
    plain = Run(make_scenario(parallel={"ep_size": 4}))
    plain_record = plain.simulate()
    zero = Run(make_scenario(parallel={"ep_size": 4}, training={"distributed_optimizer": True}))
    zero_record = zero.simulate()
    assert sync_kinds(zero_record) == {"grad_reducescatter", "expert_grad_reducescatter", "param_allgather",
                                       "expert_param_allgather"}
    program = zero.programs[0]
    dense = sum(b.num_params for b in program.buckets if b.family == "dense")
    expert = sum(b.num_params for b in program.buckets if b.family == "expert")
    compute = zero.compute_model
    # the shard: dense parameters over dense DP 8, expert parameters over expert DP 2; the gradient
    # norm (clipping) reads each FP32 gradient once, Adam moves 30 B per parameter
    shard, whole = dense / 8 + expert / 2, dense + expert
    assert zero.dp.optimizer_s(compute, program) == pytest.approx(
        compute.memory_s(shard * 4) + compute.memory_s(shard * 30))
    assert plain.dp.optimizer_s(compute, program) == pytest.approx(
        compute.memory_s(whole * 4) + compute.memory_s(whole * 30))
    unclipped = Run(make_scenario(parallel={"ep_size": 4}, training={"grad_clipping": False}))
    assert unclipped.dp.optimizer_s(compute, program) == pytest.approx(compute.memory_s(whole * 30))
    optimizer = [iv for iv in zero_record.intervals[0] if iv.op.op == "optimizer"]
    assert len(optimizer) == 1 and optimizer[0].op.phase == UPDATE
    # overlapped param all-gathers run before each layer's first forward
    gathers = [iv for iv in zero_record.intervals[0] if iv.op.op.endswith("param_allgather")]
    first_forward = min(iv.start_s for iv in zero_record.intervals[0] if iv.op.op == "attention")
    assert max(iv.end_s for iv in gathers if iv.op.layer == 0) <= first_forward + 1e-12
    assert zero_record.step_time_s < plain_record.step_time_s  # a sharded optimizer step is shorter


def test_without_grad_overlap_the_sync_starts_after_the_whole_backward():
    small = {"grad_bucket_params": 100_000}  # every layer's gradients fill a bucket of their own
    overlapped = simulate(make_scenario(parallel={"ep_size": 4}, training=small))
    serial = simulate(make_scenario(parallel={"ep_size": 4}, training={**small, "grad_overlap": False}))
    for record, overlaps in ((overlapped, True), (serial, False)):
        ivs = record.intervals[0]
        backward_end = max(iv.end_s for iv in ivs if iv.op.phase == BACKWARD)
        sync = [iv for iv in ivs if iv.op.phase == UPDATE and iv.op.op != "optimizer"]
        assert len(sync) > 2  # one bucket per layer and family
        assert (min(iv.start_s for iv in sync) < backward_end) == overlaps
    assert overlapped.step_time_s < serial.step_time_s


def test_prefill_has_no_gradient_sync_and_no_optimizer():
    r = simulate(make_scenario(parallel={"ep_size": 4}, workload={"mode": "prefill"}))
    assert sync_kinds(r) == set()
    assert not [iv for ivs in r.intervals for iv in ivs if iv.op.phase == UPDATE]


def test_gradient_sync_shows_in_the_summary_per_kind_with_calls_per_gpu():
    summary = summarize(simulate(make_scenario(parallel={"ep_size": 4}, training={"grad_bucket_params": 100_000})))
    dense, expert = summary["collectives"]["grad_allreduce"], summary["collectives"]["expert_grad_allreduce"]
    assert dense["count"] == 2 and expert["count"] == 2  # one bucket per layer, two layers
    assert dense["mean_time_s"] > 0 and expert["mean_bytes_per_gpu"] > 0


def test_fp8_training_casts_every_held_gemm_weight_once_a_step():
    # 5 B per weight: read BF16, write FP8 (+ a scale per 128x128 block), the transposed FP8 copy
    from simulator.engine.data_parallel import WEIGHT_CAST_BYTES
    s = make_scenario(workload={"gemm_dtype": "fp8"}, training={"distributed_optimizer": True})
    run = Run(s)
    r = run.simulate()
    for gpu in (0, s.num_gpus - 1):
        casts = [iv for iv in r.intervals[gpu] if iv.op.op == "weight_cast"]
        assert len(casts) == 1
        held = sum(b.num_params for b in run.programs[gpu].buckets)  # all it holds, not its ZeRO-1 shard
        assert casts[0].end_s - casts[0].start_s == pytest.approx(
            run.compute_model.memory_s(held * WEIGHT_CAST_BYTES), rel=1e-9)
    assert WEIGHT_CAST_BYTES == pytest.approx(5.0, abs=1e-3)
    assert summarize(r)["compute_by_kernel_class_s"]["quantisation"] > 0
    bf16 = Run(make_scenario(training={"distributed_optimizer": True})).simulate()
    assert not any(iv.op.op == "weight_cast" for ivs in bf16.intervals for iv in ivs)


def test_embedding_and_lm_head_stay_bf16_in_the_weight_cast():
    s = make_scenario(workload={"gemm_dtype": "fp8", "embedding_and_head": True})
    run = Run(s)
    program = run.programs[0]
    held = sum(b.num_params for b in program.buckets)
    vocab = 2 * s.model.vocab_params(1)  # PP = 1: the one stage holds the embedding and the head
    from simulator.engine.data_parallel import WEIGHT_CAST_BYTES
    assert run.dp.weight_cast_s(run.compute_model, program) == pytest.approx(
        run.compute_model.memory_s((held - vocab) * WEIGHT_CAST_BYTES), rel=1e-12)
