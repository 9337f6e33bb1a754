"""GEMM time by shape (hardware/gemm_shape.py): the law's closed forms, its fit to DeepGEMM's
published FP8 table, and the numbers the H100 calibration keeps."""
import json
from pathlib import Path

import numpy as np
import pytest

from hardware.gemm_shape import (
    H100_SMS,
    STAS00_BF16,
    WGRAD_OUT_BYTES,
    deepgemm_rows,
    deepgemm_wgrad_rows,
    grouped_time_s,
    predict,
    published_laws,
    table_rows,
    wave_efficiency,
    wgrad_time_s,
)

CALIBRATION = Path(__file__).parents[1] / "hardware" / "calibrations" / "h100-sxm.json"
LAW = {"flop_per_s": 1e15, "k_half": 500.0, "bytes_per_s": 2e12, "overhead_s": 2e-6}


def test_waves_count_the_sm_slots_the_tiles_leave_empty():
    assert wave_efficiency(132, 132) == 1.0
    assert wave_efficiency(133, 132) == pytest.approx(133 / 264)
    assert wave_efficiency(264, 132) == 1.0


def test_a_compute_bound_gemm_runs_at_rate_x_k_over_k_plus_k_half_x_waves():
    m, n, k = 128 * 33, 128 * 4, 4096  # exactly one wave of 132 tiles
    expected = 2 * m * n * k / (1e15 * k / (k + 500)) + 2e-6
    assert grouped_time_s([m], n, k, LAW, 132, 1.0) == pytest.approx(expected, rel=1e-12)
    # one more row of tiles opens a second, almost empty wave
    m2 = m + 128
    waves = 136 / 264
    assert grouped_time_s([m2], n, k, LAW, 132, 1.0) == pytest.approx(
        2 * m2 * n * k / (1e15 * k / (k + 500) * waves) + 2e-6, rel=1e-12)


def test_a_small_m_gemm_is_bound_by_reading_its_weights():
    m, n, k = 8, 7168, 2048
    weights = (m * k + k * n) * 1.0 + m * n * 2
    assert grouped_time_s([m], n, k, LAW, 132, 1.0) == pytest.approx(weights / 2e12 + 2e-6, rel=1e-12)


def test_the_fit_reproduces_deepgemms_table_within_its_stated_error():
    rows = deepgemm_rows()
    law = json.loads(CALIBRATION.read_text())["fits"]["fp8"]["shape_law"]
    errors = predict(rows, law, H100_SMS, 1.0) / table_rows(rows)[1] - 1
    assert np.median(np.abs(errors)) <= law["median_abs_error"] + 1e-4 <= 0.05
    assert np.max(np.abs(errors)) <= law["max_abs_error"] + 1e-4 <= 0.3  # small m (memory-bound) is worst
    big = np.array([r["m"] >= 1024 for r in rows])
    assert np.max(np.abs(errors[big])) < 0.08  # the training regime: 1024 rows per group and more


def test_the_calibration_keeps_the_numbers_the_fit_gives():
    pytest.importorskip("scipy")
    fits = json.loads(CALIBRATION.read_text())["fits"]
    laws = published_laws()
    for dtype in ("fp8", "bf16"):
        for key in ("flop_per_s", "k_half", "bytes_per_s", "overhead_s"):
            assert fits[dtype]["shape_law"][key] == pytest.approx(laws[dtype][key], rel=1e-3), (dtype, key)
    for key in ("flop_per_s", "k_half", "bytes_per_s", "overhead_s"):
        assert fits["fp8"]["wgrad_law"][key] == pytest.approx(laws["fp8_wgrad"][key], rel=1e-3), key
    assert "wgrad_law" not in fits["bf16"]  # no published BF16 wgrad table: the BF16 law at the wgrad's shape


def wgrad_errors(law: dict) -> np.ndarray:
    rows = deepgemm_wgrad_rows()
    predicted = np.array([wgrad_time_s([r["k"]] * r["groups"], r["m"], r["n"], law, H100_SMS, 1.0) for r in rows])
    return predicted / table_rows(rows)[1] - 1


def test_the_wgrad_law_reproduces_deepgemms_wgrad_table_where_the_forward_law_does_not():
    fits = json.loads(CALIBRATION.read_text())["fits"]["fp8"]
    errors = wgrad_errors(fits["wgrad_law"])
    assert np.median(np.abs(errors)) <= fits["wgrad_law"]["median_abs_error"] + 1e-4 <= 0.05
    assert np.max(np.abs(errors)) <= fits["wgrad_law"]["max_abs_error"] + 1e-4 <= 0.1
    # the forward law at the wgrad shapes is 11-25 % too fast on every row: FP8 wgrad is its own kernel
    forward = wgrad_errors(fits["shape_law"])
    assert (forward < -0.10).all() and (forward > -0.26).all()


def test_a_k_grouped_wgrad_pays_each_experts_short_k_in_one_launch():
    rows, cols = 128 * 33, 128 * 8  # 264 tiles per expert: 4 experts fill 8 waves of 132 SMs
    ks = np.array([4096.0, 512.0, 64.0, 2048.0])
    compute = 2 * rows * cols * ks / (1e15 * ks / (ks + 500))
    memory = ((rows + cols) * ks + rows * cols * WGRAD_OUT_BYTES) / 2e12  # the FP32 main gradient read + written
    assert compute[0] > memory[0] and compute[2] < memory[2]  # 64 tokens: bound by the gradient's bytes
    expected = np.maximum(compute, memory).sum() + 2e-6
    assert wgrad_time_s(ks, rows, cols, LAW, 132, 1.0) == pytest.approx(expected, rel=1e-12)
    assert wgrad_time_s(np.append(ks, 0), rows, cols, LAW, 132, 1.0) == wgrad_time_s(ks, rows, cols, LAW, 132, 1.0)
    # a few tokens: bound by reading and writing the FP32 main gradient
    assert wgrad_time_s([1], 7168, 2048, LAW, 132, 1.0) == pytest.approx(
        ((7168 + 2048) * 1 + 7168 * 2048 * WGRAD_OUT_BYTES) / 2e12 + 2e-6, rel=1e-12)


def test_a_gemms_backward_is_its_input_gradient_and_its_weight_gradient_at_their_own_shapes():
    from hardware.calibrated import CALIBRATION_DIR, compute_model
    from tests.conftest import make_scenario

    gpu = make_scenario().cluster.gpu
    fits = json.loads(CALIBRATION.read_text())["fits"]
    m, n, k = 4096, 2112, 7168
    for dtype, law in (("fp8", fits["fp8"]["wgrad_law"]), ("bf16", fits["bf16"]["shape_law"])):
        model = compute_model(gpu, dtype, CALIBRATION_DIR / "h100-sxm.json")
        in_bytes = 1.0 if dtype == "fp8" else 2.0
        dgrad = grouped_time_s([m], k, n, fits[dtype]["shape_law"], gpu.num_sms, in_bytes)
        wgrad = wgrad_time_s([m], k, n, law, gpu.num_sms, in_bytes)
        assert model.gemm_bwd_s(m, n, k) == pytest.approx(dgrad + wgrad, rel=1e-12), dtype
        ms = np.array([900, 0, 3000])
        assert model.grouped_gemm_bwd_s(ms, n, k) == pytest.approx(
            grouped_time_s(ms[ms > 0], k, n, fits[dtype]["shape_law"], gpu.num_sms, in_bytes)
            + wgrad_time_s(ms, k, n, law, gpu.num_sms, in_bytes), rel=1e-12), dtype
    fp8 = compute_model(gpu, "fp8", CALIBRATION_DIR / "h100-sxm.json")
    assert fp8.gemm_bwd_s(m, n, k) > 2 * fp8.gemm_s(m, n, k)  # the FP8 wgrad runs below the forward's rate


def test_the_bf16_law_gives_stas00s_best_rate_at_its_shape():
    law = json.loads(CALIBRATION.read_text())["fits"]["bf16"]["shape_law"]
    m, n, k = STAS00_BF16["shape"]
    seconds = grouped_time_s([m], n, k, law, H100_SMS, 2.0) - law["overhead_s"]
    assert 2 * m * n * k / seconds == pytest.approx(STAS00_BF16["tflops"] * 1e12, rel=1e-4)


def test_the_attention_core_runs_at_flashattention_3s_published_rates_forward_and_backward():
    # h100-sxm.json attention_core: FA3 forward 590 TFLOPS (pytorch/benchmark ff65cb6), backward 542
    # (FA3 paper) on 2.5 x the forward's FLOPs; the roofline without a file keeps 2.5 x the forward
    from hardware.calibrated import CALIBRATION_DIR, compute_model
    from hardware.compute import ATTENTION_CORE_BACKWARD_FACTOR, RooflineCompute
    from tests.conftest import make_scenario

    gpu = make_scenario().cluster.gpu  # the tiny fixture runs on h100-sxm
    calibrated = compute_model(gpu, "fp8", CALIBRATION_DIR / "h100-sxm.json")
    flop = 4096 * 2 * 128 * 4096 * 192.0
    assert calibrated.attention_core_s(flop, 0.0) == pytest.approx(flop / 590e12 + 4e-6)
    assert calibrated.attention_core_bwd_s(flop, 0.0) == pytest.approx(2.5 * flop / 542e12 + 4e-6)
    roofline = RooflineCompute(gpu, "bf16")
    assert roofline.attention_core_bwd_s(flop, 0.0) == pytest.approx(
        ATTENTION_CORE_BACKWARD_FACTOR * roofline.attention_core_s(flop, 0.0))


def test_a_calibration_whose_attention_core_lacks_a_rate_is_rejected_naming_the_key(tmp_path):
    from hardware.calibrated import CALIBRATION_DIR, load_calibration

    path = tmp_path / "cal.json"
    path.write_text((CALIBRATION_DIR / "h100-sxm.json").read_text().replace('"flop_per_s": 542e12,', ''))
    with pytest.raises(ValueError, match=r"lacks attention_core.backward.flop_per_s"):
        load_calibration(path)
