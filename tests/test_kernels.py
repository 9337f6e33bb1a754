"""The kernels around the GEMMs: each one's bytes against its closed form, the split by kernel
class, and MFU against the GEMM dtype's own peak."""
import pytest

from simulator.engine import Run
from simulator.metrics import summarize
from simulator.workload.costs import QUANT_BYTES, dense_kernels
from tests.conftest import make_scenario

ROOFLINE = {"calibration": None}  # the preset's roofline: every kernel's bytes at one HBM rate


def test_norms_rotary_and_residuals_are_memory_bound_kernels_of_their_bytes():
    s = make_scenario(hardware=ROOFLINE)
    compute = Run(s).compute_model
    n, h, a = 128, s.model.hidden_size, s.model.attention  # tiny-moe: GQA 4 heads, 2 KV heads of 64
    k = dense_kernels(s, compute, n)
    norm = compute.memory_s(n * h * 2 * 2)  # read and write the hidden state, BF16
    rope = compute.memory_s(n * (a.num_heads + a.num_kv_heads) * a.head_dim * 2 * 2)
    residual = compute.memory_s(n * h * 3 * 2)  # read two, write one
    assert k["attention"]["elementwise"] == pytest.approx(norm + rope + residual, rel=1e-12)
    softmax_topk = compute.memory_s(n * s.model.num_experts * 4 * 2)
    assert k["router"]["elementwise"] == pytest.approx(softmax_topk + norm + residual, rel=1e-12)
    assert k["attention_bwd"]["elementwise"] == pytest.approx(2 * k["attention"]["elementwise"], rel=1e-12)
    assert "quantisation" not in k["attention"]  # BF16 GEMMs quantise nothing


def test_lm_head_is_its_gemm_the_cross_entropy_passes_and_the_final_norm():
    s = make_scenario(hardware=ROOFLINE)
    compute = Run(s).compute_model
    n, h, v = 128, s.model.hidden_size, s.model.vocab_size
    head = dense_kernels(s, compute, n)["lm_head"]
    assert head["gemm"] == pytest.approx(compute.gemm_s(n, v, h), rel=1e-12)
    assert head["elementwise"] == pytest.approx(compute.memory_s(3 * n * v * 2) + compute.memory_s(n * h * 4),
                                                rel=1e-12)


def test_fp8_gemms_quantise_each_gemm_input():
    s = make_scenario(hardware=ROOFLINE, workload={"gemm_dtype": "fp8"})
    compute = Run(s).compute_model
    n, h, a = 128, s.model.hidden_size, s.model.attention
    k = dense_kernels(s, compute, n)
    inputs = n * (h + a.num_heads * a.head_dim)  # the QKV projection's input and the output projection's
    assert k["attention"]["quantisation"] == pytest.approx(compute.memory_s(inputs * QUANT_BYTES), rel=1e-12)
    assert k["router"]["quantisation"] == pytest.approx(compute.memory_s(n * h * QUANT_BYTES), rel=1e-12)
    assert QUANT_BYTES == 2 + 1 + 4 / 128


def test_fp8_backward_casts_each_output_gradient_twice_and_re_tiles_each_saved_input():
    s = make_scenario(hardware=ROOFLINE, workload={"gemm_dtype": "fp8"})
    run = Run(s)
    compute = run.compute_model
    n, h, a, i = 128, s.model.hidden_size, s.model.attention, s.model.moe_intermediate_size
    k = dense_kernels(s, compute, n)
    qkv, o = (a.num_heads + 2 * a.num_kv_heads) * a.head_dim, a.num_heads * a.head_dim  # GQA: two GEMMs

    def cast(elements):
        return compute.memory_s(elements * QUANT_BYTES)

    def re_tile(elements):  # read and write a saved FP8 tensor (1 + 4/128 bytes per element)
        return compute.memory_s(elements * 2 * (1 + 4 / 128))

    assert k["attention_bwd"]["quantisation"] == pytest.approx(
        2 * cast(n * qkv) + 2 * cast(n * h) + re_tile(n * h) + re_tile(n * o), rel=1e-12)
    assert "quantisation" not in k["router_bwd"]  # the gate stays BF16; the routed tokens' GEMMs are the experts'

    def ffn(rows, width):  # gate+up: output 2 x width from h; down: output h from width
        return 2 * cast(rows * 2 * width) + re_tile(rows * h) + 2 * cast(rows * h) + re_tile(rows * width)

    assert k["shared_bwd"]["quantisation"] == pytest.approx(ffn(n * s.model.num_shared_experts, i), rel=1e-12)
    # routed experts: the casts of the rows each GPU received, beside their GEMMs' gradients
    key = next(iter(run.workload.expert_bwd_s))
    tokens = run.workload.traffic[key].expert_tokens[run.workload.expert_gpu == 0]
    gradients = compute.expert_ffn_bwd_s(tokens, h, i)
    assert run.workload.expert_bwd_s[key][0] == pytest.approx(gradients + ffn(int(tokens.sum()), i), rel=1e-12)
    bf16 = Run(make_scenario(hardware=ROOFLINE))
    assert "quantisation" not in dense_kernels(bf16.s, bf16.compute_model, n)["attention_bwd"]
    tokens = bf16.workload.traffic[key].expert_tokens[bf16.workload.expert_gpu == 0]
    assert bf16.workload.expert_bwd_s[key][0] == pytest.approx(
        bf16.compute_model.expert_ffn_bwd_s(tokens, h, i), rel=1e-12)


def test_the_kernel_classes_add_up_to_the_compute_time():
    summary = summarize(Run(make_scenario()).simulate())
    classes = summary["compute_by_kernel_class_s"]
    assert set(classes) == {"gemm", "attention", "elementwise", "permute", "quantisation", "optimizer", "other"}
    assert sum(classes.values()) == pytest.approx(summary["breakdown_s"]["compute"], rel=1e-9)
    assert classes["gemm"] > 0 and classes["elementwise"] > 0 and classes["permute"] > 0 and classes["optimizer"] > 0


def test_fp8_mfu_is_also_reported_against_the_fp8_peak():
    s = make_scenario(workload={"gemm_dtype": "fp8"})
    summary = summarize(Run(s).simulate())
    gpu = s.cluster.gpu
    assert summary["mfu_vs_gemm_dtype_peak"] == pytest.approx(
        summary["mfu"] * gpu.peak_bf16_flop_per_s / gpu.peak_fp8_flop_per_s, rel=1e-12)
    assert 0 < summary["mfu_vs_gemm_dtype_peak"] < summary["mfu"] < 1


@pytest.mark.parametrize("all_to_all, permutes", [("direct", True), ("hierarchical", True), ("low_latency", False)])
def test_routed_experts_permute_their_rows_unless_deepep_low_latency_delivers_them_by_expert(all_to_all, permutes):
    """DeepEP LL's dispatch returns the rows grouped by local expert and its combine reduces each
    token's copies with their weights (deep_ep/buffer.py): no permute / un-permute kernels there."""
    s = make_scenario(hardware=ROOFLINE, network={"all_to_all": all_to_all})
    run = Run(s)
    w, compute = run.workload, run.compute_model
    h, i = s.model.hidden_size, s.model.moe_intermediate_size
    for key, t in w.traffic.items():
        for gpu, seconds in enumerate(w.expert_work_s[key]):
            rows = t.expert_tokens[w.expert_gpu == gpu]
            assert seconds == pytest.approx(compute.expert_ffn_s(rows, h, i, permute=permutes), rel=1e-12)
            assert seconds != pytest.approx(compute.expert_ffn_s(rows, h, i, permute=not permutes), rel=1e-6)
    classes = summarize(run.simulate())["compute_by_kernel_class_s"]
    assert (classes["permute"] > 0) == permutes
