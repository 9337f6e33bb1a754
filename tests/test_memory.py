"""Memory per GPU, term by term, against hand counts; the rule that rejects a layout that does not fit."""
import pytest

from simulator.engine import simulate
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.scenario.memory import RESERVED_BYTES, activation_bytes_per_token, memory_per_gpu
from tests.conftest import make_scenario

# DeepSeek-V3 (config_671B.json): hidden 7168, MLA 128 heads, q_lora 1536, kv_lora 512, rope 64,
# nope 128, v 128; 256 experts of 3 x 7168 x 2048; one shared expert.
MLA = 7168 * 1536 + 1536 * 128 * 192 + 7168 * (512 + 64) + 512 * 128 * 256 + 128 * 128 * 7168
ROUTER = 7168 * 256
EXPERT = 3 * 7168 * 2048


def dsv3_stage(**sections):
    """One 4-layer pipeline stage of DeepSeek-V3 at EP 64 (DeepSeek's own layout: PP 16 x EP 64)."""
    base = dict(hardware={"preset": "h800", "nodes": 8, "gpus_per_node": 8},
                model={"preset": "deepseek-v3", "num_layers": 4, "num_dense_layers": 0},
                parallel={"ep_size": 64}, workload={"tokens_per_gpu": 4096, "micro_batches": 2})
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return make_scenario(**base)


def test_weights_gradients_and_optimizer_of_a_deepseek_v3_stage_match_a_hand_count():
    s = dsv3_stage()
    dense = 4 * (MLA + ROUTER + EXPERT)  # attention, router and the shared expert of 4 layers
    expert = 4 * (256 // 64) * EXPERT  # 4 routed experts per GPU and layer
    assert (dense, expert) == (931_921_920, 704_643_072)
    mem = memory_per_gpu(s)
    # BF16 weight 2 B + FP32 grad 4 B + FP32 master and two Adam moments 12 B = 18 B per parameter
    assert mem.weights == 2 * (dense + expert)
    assert mem.gradients == 4 * (dense + expert)
    assert mem.optimizer == 12 * (dense + expert)
    zero = memory_per_gpu(dsv3_stage(training={"distributed_optimizer": True}))
    # ZeRO-1: dense state over dense DP 64, expert state over expert DP 1 (EP 64 on 64 GPUs)
    assert zero.optimizer == pytest.approx(12 * (dense / 64 + expert / 1))
    assert zero.weights == mem.weights and zero.gradients == mem.gradients


def test_activations_scale_with_the_micro_batches_the_schedule_holds():
    # lockstep: every forward runs before any backward, so all micro-batches are held
    two = memory_per_gpu(dsv3_stage(pipeline={"schedule": "lockstep"})).activations
    four = memory_per_gpu(dsv3_stage(workload={"micro_batches": 4}, pipeline={"schedule": "lockstep"})).activations
    assert four == pytest.approx(2 * two)
    # dualpipe: the forward of micro-batch m runs beside the backward of m-1: two held, not eight
    dualpipe = memory_per_gpu(dsv3_stage(workload={"micro_batches": 8}, pipeline={"schedule": "dualpipe"}))
    assert dualpipe.activations == pytest.approx(two)
    # and it is what a training step on one stage runs unless told otherwise (pipeline.schedule auto)
    auto = dsv3_stage(workload={"micro_batches": 8})
    assert auto.pipeline.schedule == "dualpipe" and memory_per_gpu(auto).activations == pytest.approx(two)


def test_an_mla_moe_layer_saves_what_its_backward_reads_per_token():
    s = dsv3_stage()
    h, i, k = 7168, 2048, 8
    attention = h + 1536 + 512 + 64 + 128 * (2 * 192 + 2 * 128)  # input, latents, Q K V O
    moe = h + k * (h + 2 * i + i) + 1 * (2 * i + i)  # router input, 8 routed copies, shared expert
    expected = 2 * (2 * h + attention + moe) + 4 * 256 + 4 * k  # BF16, FP32 router and gate probabilities
    assert activation_bytes_per_token(s, moe=True) == expected


def test_summary_reports_every_term_and_the_peak_is_their_sum():
    summary = summarize(simulate(make_scenario()))
    mem = summary["memory_per_gpu"]
    assert set(mem) == {"weights", "gradients", "optimizer", "activations", "kv_cache", "buffers", "other", "peak",
                        "capacity"}
    parts = sum(mem[t] for t in ("weights", "gradients", "optimizer", "activations", "buffers", "other"))
    assert mem["peak"] == pytest.approx(parts)
    assert mem["other"] == RESERVED_BYTES and 0 < mem["peak"] <= mem["capacity"]
    assert mem["buffers"] > 0  # all-to-all receive buffers


def test_ep8_training_fits_an_80_gb_gpu_only_with_the_distributed_optimizer():
    four_layers = dict(hardware={"preset": "h100-sxm", "nodes": 8, "gpus_per_node": 8},
                       model={"preset": "deepseek-v3", "num_layers": 4, "num_dense_layers": 0},
                       parallel={"ep_size": 8}, workload={"tokens_per_gpu": 4096, "micro_batches": 2})
    with pytest.raises(ScenarioError) as err:
        make_scenario(**four_layers)
    # the optimizer state of 32 experts per GPU is the biggest term; ZeRO-1 shards it over expert DP 8
    assert err.value.key == "training.distributed_optimizer"
    assert "the biggest is optimizer" in err.value.rule
    s = make_scenario(**four_layers, training={"distributed_optimizer": True})
    assert memory_per_gpu(s).before_buffers <= 80e9


def test_too_many_micro_batches_in_flight_name_the_activations_and_the_knob_that_shrinks_them():
    with pytest.raises(ScenarioError) as err:
        dsv3_stage(workload={"micro_batches": 16}, pipeline={"schedule": "lockstep"})
    assert err.value.key == "training.recompute" and "the biggest is activations" in err.value.rule
    with pytest.raises(ScenarioError) as err:  # even with full recompute, 256 micro-batches of inputs do not fit
        dsv3_stage(workload={"micro_batches": 256}, training={"recompute": "full"}, pipeline={"schedule": "lockstep"})
    assert err.value.key == "workload.micro_batches"


def test_expert_tp_auto_applies_seed_4_1_and_says_what_it_found():
    s = make_scenario(parallel={"ep_size": 8, "expert_tp_size": "auto"})
    layout = summarize(simulate(s))["layout"]
    assert layout["expert_tp_size"] == 1 and "seed 4.1" in layout["expert_tp_auto"]
    # an expert of 1.5 G parameters (25.7 GiB with grads and Adam state) on a 20 GiB GPU needs two,
    # and EP 8 x expert TP 2 does not fit the 8 GPUs (tests/test_expert_tp.py runs one that does)
    with pytest.raises(ScenarioError) as err:
        make_scenario(parallel={"ep_size": 8, "expert_tp_size": "auto"}, hardware={"hbm_gb": 20},
                      model={"moe_intermediate_size": 2_000_000, "num_shared_experts": 0},
                      workload={"tokens_per_gpu": 16, "micro_batches": 1}, pipeline={"chunks": 1})
    assert err.value.key == "parallel.ep_size" and "expert_tp_size=2 (auto: seed 4.1" in err.value.rule


def test_bf16_adam_moments_hold_8_bytes_per_parameter_and_adam_moves_22():
    from simulator.engine.data_parallel import adam_bytes_per_param
    fp32, bf16 = dsv3_stage(), dsv3_stage(training={"adam_moments_dtype": "bf16"})
    assert memory_per_gpu(bf16).optimizer == pytest.approx(memory_per_gpu(fp32).optimizer * 8 / 12)
    assert adam_bytes_per_param(fp32) == 30 and adam_bytes_per_param(bf16) == 22


def test_deepseeks_own_layout_fits_an_h800_only_with_its_memory_savings():
    """DeepSeek-V3 on 2048 H800 (PP 16 DualPipe, EP 64, ZeRO-1, 120 micro-batches): its report's
    recompute, FP8 caching and BF16 moments are what make the 61 layers fit 80 GiB."""
    from pathlib import Path

    import yaml

    from simulator.scenario.load import build_scenario
    data = yaml.safe_load(Path("benchmarks/deepseek-v3-2048-h800-dualpipe.yaml").read_text())
    mem = memory_per_gpu(build_scenario(data))
    assert mem.peak < mem.capacity == 80 * 2**30
    plain = {**data, "training": {k: v for k, v in data["training"].items()
                                  if k not in ("recompute", "recompute_modules", "adam_moments_dtype")},
             "workload": {**data["workload"], "gemm_dtype": "bf16"}}
    with pytest.raises(ScenarioError) as err:
        build_scenario(plain)
    assert "training.recompute" in str(err.value) and "the biggest is activations" in str(err.value)
