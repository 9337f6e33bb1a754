"""Serving: decode and prefill workloads, their KV cache, two-batch overlap and their rules."""
import copy

import numpy as np
import pytest

from simulator.api import simulate_scenario
from simulator.errors import ScenarioError
from simulator.scenario import build_scenario
from simulator.scenario.memory import max_batch_per_gpu
from simulator.scenario.serving import kv_bytes_per_token_layer, kv_cache_bytes_per_sequence
from simulator.workload.serving import context_spread
from tests.conftest import TINY

DECODE = {
    **{k: copy.deepcopy(v) for k, v in TINY.items() if k not in ("workload", "pipeline")},
    "name": "tiny-decode",
    "workload": {"mode": "decode", "batch_per_gpu": 32, "context_len": 512},
    "network": {"all_to_all": "low_latency", "comm_sms": 0},
}


# one node of 8 with the memory rule relaxed (hbm_gb): closed forms on models that need more GPUs to fit
BIG_NODE = {"nodes": 1, "gpus_per_node": 8, "hbm_gb": 10_000}


def decode_dict(**sections) -> dict:
    data = copy.deepcopy(DECODE)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def decode(**sections):
    return build_scenario(decode_dict(**sections))


def run(scenario) -> dict:
    return simulate_scenario(scenario)[0]


# --- the batch a decode step runs -------------------------------------------------------------

def test_decode_runs_the_batch_as_one_micro_batch_of_one_token_per_sequence_in_one_chunk():
    s = decode()
    assert (s.workload.micro_batches, s.workload.tokens_per_gpu, s.pipeline.chunks) == (1, 32, 1)


def test_two_batch_overlap_splits_the_sequences_into_two_micro_batches():
    s = decode(workload={"two_batch_overlap": True})
    assert (s.workload.micro_batches, s.workload.tokens_per_gpu) == (2, 16)


def test_mtp_drafts_add_tokens_per_sequence_and_itl_divides_by_the_accepted_ones():
    s = decode(workload={"mtp_draft_tokens": 1, "accepted_tokens_per_step": 1.8})
    assert s.workload.tokens_per_gpu == 64
    summary = run(s)
    assert summary["itl_s"] == pytest.approx(summary["step_time_s"] / 1.8)
    assert summary["tokens_per_s"] == pytest.approx(32 * 1.8 * s.num_gpus / summary["step_time_s"])
    assert summary["tokens_per_s_per_node"] == pytest.approx(summary["tokens_per_s"] / s.cluster.num_nodes)


def test_decode_model_flops_attend_over_the_whole_context():
    """FLOP convention, decode: the attention core of a token counts c = context_len keys (GQA: 4 h d c)."""
    s = decode()
    summary = run(s)
    m, a = s.model, s.model.attention
    core = 4.0 * a.num_heads * a.head_dim * 512
    per_token = m.num_layers * (2.0 * a.projection_params(m.hidden_size) + core + m.moe_block_flop_per_token())
    assert summary["model_flop_per_token_forward"] == pytest.approx(per_token)
    assert summary["model_flop_per_step"] == pytest.approx(per_token * 32 * s.num_gpus)


# --- closed forms ------------------------------------------------------------------------------

def test_kv_bytes_per_token_follow_mla_latents_and_gqa_heads():
    mla = decode(model={"preset": "deepseek-v3"}, hardware=BIG_NODE, parallel={"ep_size": 8},
                 workload={"batch_per_gpu": 1})
    assert kv_bytes_per_token_layer(mla) == (512 + 64) * 2  # latent + rotary key, BF16
    assert kv_cache_bytes_per_sequence(mla) == 61 * 512 * (512 + 64) * 2
    fp8 = decode(model={"preset": "deepseek-v3"}, hardware=BIG_NODE, parallel={"ep_size": 8},
                 workload={"batch_per_gpu": 1, "kv_cache_dtype": "fp8"})
    assert kv_bytes_per_token_layer(fp8) == 512 + 64
    gqa = decode(model={"preset": "mixtral-8x7b"}, hardware=BIG_NODE, parallel={"ep_size": 8},
                 workload={"batch_per_gpu": 1})
    assert kv_bytes_per_token_layer(gqa) == 2 * 8 * 128 * 2  # K and V of 8 KV heads of 128, BF16
    assert kv_cache_bytes_per_sequence(gqa) == 32 * 512 * 2 * 8 * 128 * 2


def test_tp_attention_splits_gqa_heads_but_repeats_mla_latents_on_every_rank():
    common = {"hardware": BIG_NODE, "parallel": {"ep_size": 8, "tp_size": 2},
              "workload": {"batch_per_gpu": 1}}
    gqa = decode(model={"preset": "mixtral-8x7b"}, **common)
    assert kv_bytes_per_token_layer(gqa) == 2 * 4 * 128 * 2
    # a TP group of 2 serves 2 sequences per batch_per_gpu: each GPU holds half the heads of both
    assert kv_cache_bytes_per_sequence(gqa) == 32 * 512 * 2 * 8 * 128 * 2
    mla = decode(model={"preset": "deepseek-v3"}, **common)
    assert kv_cache_bytes_per_sequence(mla) == 2 * 61 * 512 * (512 + 64) * 2


def test_sliding_window_layers_keep_at_most_their_window():
    s = decode(model={"preset": "gpt-oss-120b"}, hardware=BIG_NODE, parallel={"ep_size": 8},
               workload={"batch_per_gpu": 1, "context_len": 4096})
    full, sliding = 18, 18  # layers alternate sliding (128 tokens) and full
    assert kv_cache_bytes_per_sequence(s) == (full * 4096 + sliding * 128) * 2 * 8 * 64 * 2


def test_decode_at_batch_one_is_weight_read_bound():
    """One token on one GPU: the step's GEMMs take the bytes of the weights they read over the HBM rate
    (attention projections, dense FFN, router, shared and the top-k routed experts), not their FLOPs."""
    s = decode(hardware={"preset": "h100-seed", "nodes": 1, "gpus_per_node": 1, "kernel_launch_us": 0.0},
               model={"preset": "deepseek-v3", "num_layers": 2, "num_dense_layers": 1}, parallel={"ep_size": 1},
               workload={"batch_per_gpu": 1, "context_len": 64}, network={"all_to_all": "direct"})
    m, gpu = s.model, s.cluster.gpu
    params = (m.num_layers * m.attention.projection_params(m.hidden_size) + 3 * m.hidden_size * m.dense_intermediate_size
              + m.hidden_size * m.num_experts + (m.num_shared_experts + m.top_k) * m.expert_params)
    weight_read_s = params * 2 / (gpu.hbm_bytes_per_s * gpu.memory_efficiency)
    summary = run(s)
    assert summary["compute_by_kernel_class_s"]["gemm"] == pytest.approx(weight_read_s, rel=0.01)
    flop_bound_s = summary["model_flop_per_step"] / (gpu.peak_bf16_flop_per_s * gpu.matmul_efficiency)
    assert flop_bound_s < 0.01 * weight_read_s
    # twice the batch reads the same weights (the experts of the second token aside): far from twice the time
    two = run(decode(hardware={"preset": "h100-seed", "nodes": 1, "gpus_per_node": 1, "kernel_launch_us": 0.0},
                     model={"preset": "deepseek-v3", "num_layers": 2, "num_dense_layers": 1}, parallel={"ep_size": 1},
                     workload={"batch_per_gpu": 2, "context_len": 64}, network={"all_to_all": "direct"}))
    assert two["step_time_s"] < 1.6 * summary["step_time_s"]


def test_mla_decode_attention_reads_the_latents_at_flashmlas_published_rate():
    """FlashMLA (h100-sxm calibration): compute-bound at 128 heads, 2 h s_k (576 + 512) FLOPs at 660 TFLOPS."""
    from hardware.calibrated import compute_model
    from simulator.workload.costs import decode_attention_s

    s = decode(model={"preset": "deepseek-v3"}, hardware=BIG_NODE, parallel={"ep_size": 8},
               workload={"batch_per_gpu": 64, "context_len": 4096, "gemm_dtype": "fp8"})
    compute = compute_model(s.cluster.gpu, "fp8", s.calibration_path)
    flop = 64 * 128 * 2.0 * 4096 * (576 + 512)
    assert decode_attention_s(s, compute, 64) == pytest.approx(flop / 660e12 + 4e-6)


# --- two-batch overlap ---------------------------------------------------------------------------

def test_two_batch_overlap_is_never_slower_than_running_its_micro_batches_unoverlapped_nor_faster_than_either_stream():
    tbo = run(decode(workload={"two_batch_overlap": True, "batch_per_gpu": 64}))
    serial = run(decode(workload={"two_batch_overlap": True, "batch_per_gpu": 64}, pipeline={"overlap": "none"}))
    assert tbo["step_time_s"] <= serial["step_time_s"]
    hidden = tbo["serving"]["two_batch_overlap"]
    assert tbo["step_time_s"] >= max(tbo["breakdown_s"]["compute"], hidden["comm_in_flight_s"]) - 1e-12
    assert hidden["hidden_comm_s"] > 0
    assert serial["serving"]["two_batch_overlap"]["hidden_comm_s"] == pytest.approx(0.0, abs=1e-12)
    # what TBO hid is what the serial run exposes beyond TBO's own exposed communication
    assert hidden["hidden_comm_s"] == pytest.approx(hidden["comm_in_flight_s"] - hidden["exposed_comm_s"])


# --- context lengths ---------------------------------------------------------------------------

def test_uniform_context_lengths_average_to_context_len_and_differ_between_gpus():
    s = decode(workload={"batch_per_gpu": 256, "context_len_distribution": "uniform"})
    scales = np.array(list(context_spread(s).values()))
    assert len(scales) == s.num_gpus
    assert scales.mean() == pytest.approx(1.0, abs=0.05)
    assert scales.std() > 0
    assert context_spread(s) == context_spread(decode(workload={"batch_per_gpu": 256,
                                                                "context_len_distribution": "uniform"}))
    assert context_spread(decode()) == {}


# --- memory --------------------------------------------------------------------------------------

def test_the_largest_batch_that_fits_is_accepted_and_one_more_pair_is_rejected_naming_the_kv_cache():
    common = {"model": {"preset": "deepseek-v3"}, "hardware": {"preset": "h100-sxm", "nodes": 4, "gpus_per_node": 8},
              "parallel": {"ep_size": 32}}
    probe = decode(workload={"batch_per_gpu": 2, "context_len": 8192, "gemm_dtype": "fp8"}, **common)
    most = max_batch_per_gpu(probe)
    assert most > 2
    fits = decode(workload={"batch_per_gpu": most, "context_len": 8192, "gemm_dtype": "fp8"}, **common)
    assert fits.workload.batch_per_gpu == most
    with pytest.raises(ScenarioError) as exc:
        decode(workload={"batch_per_gpu": most + 2, "context_len": 8192, "gemm_dtype": "fp8"}, **common)
    err = exc.value
    assert err.key == "workload.batch_per_gpu" and err.value == most + 2
    assert "KV cache" in err.rule and "MiB per sequence" in err.rule and f"at most {most}" in err.rule


def test_serving_holds_fp8_weights_when_its_gemms_run_in_fp8():
    bf16 = run(decode())["memory_per_gpu"]
    fp8 = run(decode(workload={"gemm_dtype": "fp8"}))["memory_per_gpu"]
    assert fp8["weights"] == pytest.approx(bf16["weights"] / 2 * (1 + 4 / 128**2))
    assert bf16["kv_cache"] == pytest.approx(32 * kv_cache_bytes_per_sequence(decode()))


# --- rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sections, key, words", [
    ({"workload": {"tokens_per_gpu": 64}}, "workload.tokens_per_gpu", "derived in decode"),
    ({"workload": {"micro_batches": 2}}, "workload.micro_batches", "derived in decode"),
    ({"workload": {"two_batch_overlap": True, "batch_per_gpu": 33}}, "workload.batch_per_gpu", "must be even"),
    ({"workload": {"mtp_draft_tokens": 1, "accepted_tokens_per_step": 2.5}}, "workload.accepted_tokens_per_step",
     "at most"),
    ({"workload": {"chunked_prefill_tokens": 64}}, "workload.chunked_prefill_tokens", "mode=prefill"),
])
def test_bad_decode_input_names_the_key(sections, key, words):
    with pytest.raises(ScenarioError) as exc:
        decode(**sections)
    assert exc.value.key == key and words in exc.value.rule


def test_decode_keys_in_training_are_rejected():
    data = copy.deepcopy(TINY)
    data["workload"] = {**data["workload"], "batch_per_gpu": 8}
    with pytest.raises(ScenarioError) as exc:
        build_scenario(data)
    assert exc.value.key == "workload.batch_per_gpu" and "serving" in exc.value.rule


def test_pipeline_parallel_decode_is_rejected_with_the_reason():
    with pytest.raises(ScenarioError) as exc:
        decode(parallel={"ep_size": 4, "pp_size": 2})
    assert exc.value.key == "parallel.pp_size" and "not simulated" in exc.value.rule


# --- prefill serving -----------------------------------------------------------------------------

def prefill(**workload):
    data = copy.deepcopy(TINY)
    data["name"] = "tiny-prefill"
    data["workload"] = {"mode": "prefill", "seq_len": 1024, **workload}
    return build_scenario(data)


def test_chunked_prefill_needs_one_pass_per_chunk_of_the_prompt_for_its_first_token():
    s = prefill(chunked_prefill_tokens=256)
    assert (s.workload.tokens_per_gpu, s.workload.micro_batches) == (128, 2)
    summary = run(s)
    assert summary["serving"]["passes_per_prompt"] == 4
    assert summary["ttft_s"] == pytest.approx(4 * summary["step_time_s"])
    whole = run(prefill(tokens_per_gpu=512, micro_batches=2))
    assert whole["ttft_s"] == pytest.approx(whole["step_time_s"])


def test_prefill_two_batch_overlap_runs_two_micro_batches():
    assert prefill(tokens_per_gpu=512, micro_batches=1, two_batch_overlap=False).workload.micro_batches == 1
    assert prefill(tokens_per_gpu=512, two_batch_overlap=True).workload.micro_batches == 2
    with pytest.raises(ScenarioError) as exc:
        prefill(tokens_per_gpu=512, micro_batches=3, two_batch_overlap=True)
    assert exc.value.key == "workload.micro_batches"


def test_a_calibration_whose_decode_attention_rate_is_not_finite_is_rejected_naming_the_key(tmp_path):
    from hardware.calibrated import CALIBRATION_DIR, load_calibration

    path = tmp_path / "cal.json"
    path.write_text((CALIBRATION_DIR / "h100-sxm.json").read_text().replace('"flop_per_s": 660e12', '"flop_per_s": NaN'))
    with pytest.raises(ValueError, match=r"decode_attention.mla.flop_per_s = nan: must be a finite rate"):
        load_calibration(path)
