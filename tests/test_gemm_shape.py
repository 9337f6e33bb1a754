"""GEMM time by shape (hardware/gemm_shape.py): the law's closed forms, its fit to DeepGEMM's
published FP8 table, and the numbers the H100 calibration keeps."""
import json
from pathlib import Path

import numpy as np
import pytest

from hardware.gemm_shape import (
    H100_SMS,
    STAS00_BF16,
    deepgemm_rows,
    grouped_time_s,
    predict,
    published_laws,
    table_rows,
    wave_efficiency,
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
