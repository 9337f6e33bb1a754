"""Activation recompute: full recompute re-runs each layer's forward inside the backward and keeps
only the layers' inputs; selective (core attention) changes nothing FlashAttention does not do."""
import pytest

from simulator.engine import Run
from simulator.engine.gpu import COMPUTE
from simulator.engine.program import RECOMPUTE
from simulator.metrics import summarize
from simulator.scenario.memory import activation_bytes_per_token, memory_per_gpu
from tests.conftest import make_scenario

SERIAL = dict(pipeline={"overlap": "none", "chunks": 1}, parallel={"ep_size": 8})


def compute_seconds(record) -> float:
    return sum(iv.end_s - iv.start_s for iv in record.intervals[0] if iv.stream == COMPUTE)


def test_full_recompute_starts_each_layers_backward_with_its_forward_all_to_alls_included():
    run = Run(make_scenario(training={"recompute": "full"}))
    backward = run.programs[0].phases[1]
    last_layer = [op for op in backward if op.layer == 1]
    assert [op.name for op in last_layer][:5] == ["attention_recompute", "router_recompute", "dispatch_recompute",
                                                 "experts_recompute", "combine_recompute"]
    assert all(op.phase == RECOMPUTE for op in last_layer[:5])


def test_full_recompute_costs_one_more_forward_per_chain_and_no_model_flops():
    plain = Run(make_scenario(**SERIAL))
    full = Run(make_scenario(**SERIAL, training={"recompute": "full"}))
    a, b = plain.simulate(), full.simulate()
    program = plain.programs[0]
    forward_kernels = [op.side_kernel() if op.collective else op for op in program.phases[0]
                       if not op.collective or op.overlapped]
    extra = sum(plain.work_s(op, 0, 0, mb, c) for mb, c in program.chains for op in forward_kernels)
    assert compute_seconds(b) - compute_seconds(a) == pytest.approx(extra, rel=1e-9)
    sa, sb = summarize(a), summarize(b)
    assert sa["model_flop_per_step"] == sb["model_flop_per_step"] and sb["mfu"] < sa["mfu"]
    assert sb["collectives"]["dispatch_recompute"]["count"] == sb["collectives"]["dispatch"]["count"]


def test_full_recompute_keeps_layer_inputs_and_one_layer_of_activations():
    s = make_scenario(training={"recompute": "full"})
    tokens, h, layers, in_flight = 256, s.model.hidden_size, 2, 2  # tiny: 2 MoE layers, 2 micro-batches
    expected = layers * in_flight * tokens * 2 * h + tokens * activation_bytes_per_token(s, moe=True)
    assert memory_per_gpu(s).activations == pytest.approx(expected)
    assert memory_per_gpu(s).activations < memory_per_gpu(make_scenario()).activations


def test_selective_recompute_of_core_attention_changes_nothing_with_flash_attention():
    plain, selective = make_scenario(), make_scenario(training={"recompute": "selective"})
    assert memory_per_gpu(selective).activations == memory_per_gpu(plain).activations
    assert summarize(Run(selective).simulate())["step_time_s"] == summarize(Run(plain).simulate())["step_time_s"]
