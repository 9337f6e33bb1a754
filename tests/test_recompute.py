"""Activation recompute: full recompute re-runs each layer's forward inside the backward and keeps
only the layers' inputs; selective re-runs the modules it names (core attention changes nothing
FlashAttention does not do); FP8 training caches GEMM inputs in FP8."""
import pytest

from simulator.engine import Run
from simulator.engine.gpu import COMPUTE
from simulator.engine.program import RECOMPUTE
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario.memory import activation_bytes_per_token, memory_per_gpu
from simulator.workload.costs import dense_work_s
from tests.conftest import make_scenario
from tests.test_memory import dsv3_stage

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


# -- selective recompute modules (Megatron-Core --recompute-modules) and FP8 activation caching --

H, I, K = 7168, 2048, 8  # DeepSeek-V3: hidden, expert width, top-k
HEADS, QK, V, Q_LORA, KV_LORA, ROPE = 128, 192, 128, 1536, 512, 64
FP8 = 1 + 4 / 128  # E4M3 plus an FP32 scale per 1x128 tile


def per_token(fp8: bool, modules: set[str]) -> float:
    """Hand count of one DeepSeek-V3 MoE layer's saved bytes per token."""
    gemm_in = FP8 if fp8 else 2
    swiglu_in = FP8 if fp8 and "moe_act" in modules else 2
    total = 2 * H * 2  # both norms' inputs (the residual stream)
    total += 0 if "layernorm" in modules else H * gemm_in + H * 2  # attention input; router / shared input
    total += (Q_LORA + KV_LORA) * gemm_in + ROPE * 2  # latents, rotary key
    total += 0 if "mla_up_proj" in modules else HEADS * (2 * QK + V) * 2  # Q, K, V
    total += HEADS * V * gemm_in  # attention output
    total += K * (H * gemm_in + 2 * I * swiglu_in + 4)  # permuted input, SwiGLU input, gate probability
    total += 0 if "moe_act" in modules else (K + 1) * I * gemm_in  # SwiGLU outputs, routed and shared
    total += 2 * I * swiglu_in + 256 * 4  # shared expert's SwiGLU input, router probabilities
    return total


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("modules", [(), ("layernorm",), ("mla_up_proj",), ("moe_act",),
                                     ("layernorm", "mla_up_proj", "moe_act")])
def test_each_recompute_module_drops_its_outputs_and_fp8_training_caches_gemm_inputs_in_fp8(fp8, modules):
    s = dsv3_stage(training={"recompute": "selective", "recompute_modules": ["core_attn", *modules]},
                   workload={"gemm_dtype": "fp8" if fp8 else "bf16"})
    assert activation_bytes_per_token(s, moe=True) == pytest.approx(per_token(fp8, set(modules)), rel=1e-12)


def test_deepseeks_recompute_and_fp8_caching_halve_a_moe_layers_activations():
    plain = activation_bytes_per_token(dsv3_stage(), moe=True)
    deepseek = activation_bytes_per_token(dsv3_stage(
        training={"recompute": "selective", "recompute_modules": ["layernorm", "mla_up_proj", "moe_act"]},
        workload={"gemm_dtype": "fp8"}), moe=True)
    assert deepseek / plain == pytest.approx(per_token(True, {"layernorm", "mla_up_proj", "moe_act"})
                                             / per_token(False, set()))
    assert deepseek / plain < 0.5


def test_recompute_modules_cost_their_re_run_in_the_backward():
    base = dsv3_stage(training={"recompute": "selective"})
    s = dsv3_stage(training={"recompute": "selective", "recompute_modules": ["layernorm", "mla_up_proj", "moe_act"]})
    run = Run(s)
    compute, n = run.compute_model, 4096
    before, after = dense_work_s(base, compute, n), dense_work_s(s, compute, n)
    norm = compute.memory_s(2 * n * H * 2)
    up = compute.gemm_s(n, HEADS * (128 + V), KV_LORA) + compute.gemm_s(n, HEADS * QK, Q_LORA)
    assert after["attention_bwd"] - before["attention_bwd"] == pytest.approx(norm + up, rel=1e-9)
    assert after["router_bwd"] - before["router_bwd"] == pytest.approx(norm, rel=1e-9)
    assert after["shared_bwd"] - before["shared_bwd"] == pytest.approx(compute.memory_s(n * 3 * I * 2), rel=1e-9)
    assert after["attention"] == before["attention"]  # the forward is unchanged
    # routed experts: the SwiGLU re-run over the rows each GPU received
    key = next(iter(run.workload.expert_work_s))
    rows = run.workload.traffic[key].expert_tokens[run.workload.expert_gpu == 0].sum()
    without = Run(base).workload
    assert (without.traffic[key].expert_tokens == run.workload.traffic[key].expert_tokens).all()  # same routing
    assert run.workload.expert_bwd_s[key][0] - without.expert_bwd_s[key][0] == pytest.approx(
        compute.memory_s(rows * 3 * I * 2), rel=1e-9)


def test_recompute_modules_are_checked():
    with pytest.raises(ScenarioError) as err:
        make_scenario(training={"recompute_modules": ["layernorm"]})
    assert "training.recompute_modules" in str(err.value) and "needs training.recompute=selective" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        make_scenario(model={"preset": "mixtral-8x7b", "num_layers": 2},
                      training={"recompute": "selective", "recompute_modules": ["mla_up_proj"]})
    assert "mla_up_proj" in str(err.value) and "gqa" in str(err.value)
