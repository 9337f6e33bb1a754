"""Tensor parallelism with sequence parallelism: split kernels and weights, the per-layer
all-gather / reduce-scatter over NVLink, and the rules."""
import numpy as np
import pytest

from simulator.engine import Run
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario.memory import local_params
from simulator.workload.costs import dense_work_s
from tests.conftest import make_scenario

TP2 = dict(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 2, "num_dense_layers": 1},
           parallel={"ep_size": 8, "tp_size": 2}, workload={"tokens_per_gpu": 256, "micro_batches": 2})


def test_each_tp_kernel_is_wrapped_in_an_all_gather_and_a_reduce_scatter():
    run = Run(make_scenario(**TP2))
    forward = [op.op for op in run.programs[0].phases[0] if op.layer == 0]  # the dense layer
    assert forward == ["tp_allgather", "attention", "tp_reducescatter", "tp_allgather", "dense_ffn",
                       "tp_reducescatter"]
    backward = [op.op for op in run.programs[0].phases[1] if op.layer == 0]
    # the output gradient gathered before, the input gradient reduce-scattered after, as forward
    assert backward == ["tp_allgather", "dense_ffn", "tp_reducescatter", "tp_allgather", "attention",
                        "tp_reducescatter"]


def test_sequence_parallel_collectives_move_the_whole_sequence_over_nvlink():
    s = make_scenario(**TP2)
    summary = summarize(Run(s).simulate())
    chunk_tokens = 256 // 2  # two chunks of the rank's 256-token shard
    whole = chunk_tokens * 2 * s.model.hidden_size * 2  # the gathered sequence, BF16
    for kind in ("tp_allgather", "tp_reducescatter"):
        c = summary["collectives"][kind]
        # a ring of 2 on one node: each rank sends (t - 1) / t of the tensor, all over NVLink
        assert c["mean_nvlink_bytes_per_gpu"] == pytest.approx(whole / 2) and c["mean_ib_bytes_per_gpu"] == 0
        # 2 per TP kernel, 2 kernels in the dense layer and 1 in the MoE layer, x 2 mb x 2 chunks x fwd/bwd
        assert c["count"] == 3 * 2 * 2 * 2


def test_split_kernels_see_the_gathered_sequence_with_a_slice_of_the_width():
    one, two = make_scenario(**{**TP2, "parallel": {"ep_size": 8}}), make_scenario(**TP2)
    run = Run(two)
    n = 128
    split, whole = dense_work_s(two, run.compute_model, n), dense_work_s(one, run.compute_model, n)
    m = two.model
    compute = run.compute_model
    # the FFN on the gathered sequence at half the width; its RMSNorm and residual add on the local shard
    around = compute.memory_s(n * m.hidden_size * 2 * 2) + compute.memory_s(n * m.hidden_size * 3 * 2)
    assert split["dense_ffn"] == pytest.approx(
        compute.expert_ffn_s(np.array([2 * n]), m.hidden_size, m.dense_intermediate_size // 2, permute=False)
        + around)
    assert split["router"] == whole["router"]  # the router works on the local shard


def test_tensor_parallel_splits_attention_and_dense_ffn_weights_not_the_router_or_experts():
    one = local_params(make_scenario(**{**TP2, "parallel": {"ep_size": 8}}))
    two = local_params(make_scenario(**TP2))
    assert two["expert"] == one["expert"]
    m = make_scenario(**TP2).model
    h = m.hidden_size
    attention, ffn = m.attention.projection_params(h), 3 * h * m.dense_intermediate_size
    router_shared = h * m.num_experts + m.num_shared_experts * m.expert_params
    assert one["dense"] == 2 * attention + ffn + router_shared
    assert two["dense"] == 2 * attention // 2 + ffn // 2 + router_shared


def test_tensor_parallel_rules_name_their_keys():
    with pytest.raises(ScenarioError, match="gpus_per_node"):
        make_scenario(**{**TP2, "parallel": {"ep_size": 8, "tp_size": 8}})
    with pytest.raises(ScenarioError, match="num_kv_heads"):
        make_scenario(**{**TP2, "hardware": {"nodes": 1, "gpus_per_node": 8}, "parallel": {"ep_size": 8, "tp_size": 4}})
