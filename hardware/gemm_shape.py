"""GEMM time by shape: wave quantisation, the per-tile cost of a short K, and the weight-read bound
at small M, fitted once per GPU kind from published measurements.

A Hopper GEMM kernel cuts the [m, n] output into 128 x 128 tiles and runs them in waves over the
SMs; each tile streams its K dimension through the tensor cores and pays a fixed cost (pipeline
fill, epilogue, the output write) that a long K hides and a short one does not. So

    compute_s = 2 m n k / (rate x k / (k + k_half) x waves(m, n))
    waves(m, n) = tiles / (ceil(tiles / SMs) x SMs),   tiles = ceil(m / 128) x ceil(n / 128)
    time_s    = max(compute_s, bytes / bytes_per_s) + overhead_s
    bytes     = (m k + k n) x input bytes + m n x 2 (BF16 output)

A grouped GEMM (the experts of one GPU) schedules every group's tiles in one launch: its waves count
the tiles of all groups; each group is its own roofline (a group of a few tokens is bound by reading
its weights).

The four numbers (rate, k_half, bytes_per_s, overhead_s) are fitted in log time to DeepGEMM's
published FP8 table (H800 SXM5, deepseek-ai/DeepGEMM README at its first commit a6d97a1: 18 dense,
4 contiguous-grouped and 6 masked-grouped shapes), which hardware/calibrations/h100-sxm.json keeps
as its measurements. BF16 has no such table: it takes the FP8 fit's shape law with the rate set so
that stas00's best BF16 matmul (794.5 TFLOPS at 2048 x 2048 x 13312, ml-engineering) is reproduced
at its shape, and k_half scaled by the BF16 / FP8 rate ratio (the per-tile cost is a fixed time, and
a BF16 tensor core takes twice as long per K). That transfer is an assumption, named in provenance.

The backward of a GEMM [m, k] x [k, n] runs two: the input gradient (dgrad) [m, n] x [n, k], the
same kernel at that shape, and the weight gradient (wgrad) [k, m] x [m, n], which reduces over the
m tokens into the [k, n] FP32 main gradient. DeepSeek's FP8 wgrad kernels run slower than the
forward law gives at their shape (11-25 % on DeepGEMM's wgrad table: both operands carry scales
along the reduced K), so FP8 wgrad has its own rate and k_half, fitted to that table (pull request
#95, 14 shapes) with the forward fit's HBM rate and overhead. An MoE layer's experts reduce each
over its own tokens in one K-grouped launch (wgrad_time_s).
"""
from __future__ import annotations

import math

import numpy as np

TILE_M = TILE_N = 128
OUT_BYTES = 2  # BF16 output
# A weight-gradient GEMM accumulates into the FP32 main gradient (D = C + A @ B: DeepGEMM's wgrad
# kernels, Megatron's gradient-accumulation fusion): each output element is read and written in FP32
WGRAD_OUT_BYTES = 8


def wave_efficiency(tiles, num_sms: int):
    """The fraction of the SM-slots of its waves that `tiles` output tiles fill."""
    tiles = np.asarray(tiles, dtype=np.float64)
    return tiles / (np.ceil(tiles / num_sms) * num_sms)


def wave_factor(tiles: float, num_sms: int) -> float:
    """The wave efficiency a GEMM of `tiles` 128 x 128 tiles runs at: with fewer tiles than SMs the
    kernel is assumed to pick smaller tiles that fill the SMs (no wave loss)."""
    return float(wave_efficiency(tiles, num_sms)) if tiles >= num_sms else 1.0


def tiles_of(m, n: int):
    return np.ceil(np.asarray(m, dtype=np.float64) / TILE_M) * math.ceil(n / TILE_N)


def grouped_time_s(ms, n: int, k: int, params: dict, num_sms: int, in_bytes: float) -> float:
    """One launch over groups of ms rows each (a dense GEMM is one group)."""
    ms = np.asarray(ms, dtype=np.float64)
    ms = ms[ms > 0]
    if ms.size == 0:
        return 0.0
    rate = params["flop_per_s"] * k / (k + params["k_half"]) * wave_factor(tiles_of(ms, n).sum(), num_sms)
    compute = 2.0 * ms * n * k / rate
    memory = ((ms * k + k * n) * in_bytes + ms * n * OUT_BYTES) / params["bytes_per_s"]
    return float(np.maximum(compute, memory).sum()) + params["overhead_s"]


def wgrad_time_s(ks, rows: int, cols: int, params: dict, num_sms: int, in_bytes: float) -> float:
    """One weight-gradient launch over groups (experts) that share the output shape [rows, cols] and
    reduce over their own K (the tokens each group saw): DeepGEMM's K-grouped wgrad, a dense wgrad
    being one group. The same law as grouped_time_s with K per group: every group's tiles in one
    launch (their waves), each group's rate k / (k + k_half) at its own K, its own roofline."""
    ks = np.asarray(ks, dtype=np.float64)
    ks = ks[ks > 0]
    if ks.size == 0:
        return 0.0
    waves = wave_factor(float(tiles_of(rows, cols)) * ks.size, num_sms)
    compute = 2.0 * rows * cols * ks / (params["flop_per_s"] * ks / (ks + params["k_half"]) * waves)
    memory = ((rows + cols) * ks * in_bytes + rows * cols * WGRAD_OUT_BYTES) / params["bytes_per_s"]
    return float(np.maximum(compute, memory).sum()) + params["overhead_s"]


def table_rows(rows: list[dict]) -> tuple[list[tuple], np.ndarray]:
    """(groups' rows, n, k) and the measured seconds of each row of a published table (TFLOPS given)."""
    shapes, times = [], []
    for r in rows:
        groups, m = r.get("groups", 1), r["m"]
        shapes.append(([m] * groups, r["n"], r["k"]))
        times.append(2.0 * groups * m * r["n"] * r["k"] / (r["tflops"] * 1e12))
    return shapes, np.array(times)


def predict(rows: list[dict], params: dict, num_sms: int, in_bytes: float) -> np.ndarray:
    shapes, _ = table_rows(rows)
    return np.array([grouped_time_s(ms, n, k, params, num_sms, in_bytes) for ms, n, k in shapes])


def _fit_in_log_time(rows: list[dict], predicted, unpack, x0: list[float], low: list[float],
                     high: list[float]) -> dict:
    """Least squares in log time (scipy) of predicted(params) against a published table's measured
    seconds, params = unpack(x); the fitted numbers with their median and worst relative error."""
    from scipy.optimize import least_squares

    _, measured = table_rows(rows)
    result = least_squares(lambda x: np.log(predicted(unpack(x)) / measured), x0=x0, bounds=(low, high))
    params = unpack(result.x)
    errors = predicted(params) / measured - 1
    return {**{key: float(v) for key, v in params.items()},
            "median_abs_error": float(np.median(np.abs(errors))), "max_abs_error": float(np.max(np.abs(errors)))}


def fit_shape_law(rows: list[dict], num_sms: int, in_bytes: float) -> dict:
    """The four numbers, least squares in log time over the table's rows (scipy)."""
    def unpack(x):
        return {"flop_per_s": x[0] * 1e12, "k_half": x[1], "bytes_per_s": x[2] * 1e9, "overhead_s": x[3] * 1e-6}

    return _fit_in_log_time(rows, lambda params: predict(rows, params, num_sms, in_bytes), unpack,
                            [1400.0, 500.0, 2800.0, 3.0], [100.0, 0.0, 100.0, 0.0], [5000.0, 10000.0, 10000.0, 100.0])


def fit_wgrad_law(rows: list[dict], law: dict, num_sms: int, in_bytes: float) -> dict:
    """The wgrad law: the rate and k_half fitted in log time to a weight-gradient table (rows:
    groups, m, n = the output shape, k = tokens), the HBM rate and overhead kept from `law` (the
    forward fit's): every shape of the table is compute-bound, so it cannot tell them."""
    def unpack(x):
        return {"flop_per_s": x[0] * 1e12, "k_half": x[1], "bytes_per_s": law["bytes_per_s"],
                "overhead_s": law["overhead_s"]}

    def predicted(params):
        return np.array([wgrad_time_s([r["k"]] * r.get("groups", 1), r["m"], r["n"], params, num_sms, in_bytes)
                         for r in rows])

    return _fit_in_log_time(rows, predicted, unpack, [1400.0, 500.0], [100.0, 0.0], [5000.0, 1e5])


def transfer(params: dict, rate_at_shape: float, shape: tuple[int, int, int], num_sms: int,
             in_bytes: float, rate_ratio: float) -> dict:
    """The shape law for another dtype: k_half scaled by the rate ratio, the rate set so that the
    law gives `rate_at_shape` FLOP/s at `shape`."""
    m, n, k = shape
    k_half = params["k_half"] * rate_ratio
    # at a compute-bound shape the achieved rate is flop_per_s x k / (k + k_half) x waves
    waves = wave_factor(float(tiles_of(m, n)), num_sms)
    return {**params, "k_half": k_half, "flop_per_s": rate_at_shape / (k / (k + k_half) * waves)}


# -- the published table and its fit, kept in the H100 calibration file -------------------------------
DEEPGEMM_SOURCE = ("deepseek-ai/DeepGEMM README at commit a6d97a1 (2025-02-25): FP8 GEMMs with fine-grained "
                   "scaling on H800 SXM5 (NVCC 12.8), TFLOPS per shape")
DEEPGEMM_FP8_H800 = (  # (groups, m per group, n, k, TFLOPS); groups 1 without a layout: normal GEMMs
    *[(1, m, n, k, t) for m, n, k, t in (
        (64, 2112, 7168, 206), (64, 24576, 1536, 289), (64, 32768, 512, 219), (64, 7168, 16384, 336),
        (64, 4096, 7168, 287), (64, 7168, 2048, 295), (128, 2112, 7168, 352), (128, 24576, 1536, 535),
        (128, 32768, 512, 358), (128, 7168, 16384, 645), (128, 4096, 7168, 533), (128, 7168, 2048, 510),
        (4096, 2112, 7168, 1058), (4096, 24576, 1536, 990), (4096, 32768, 512, 590), (4096, 7168, 16384, 1358),
        (4096, 4096, 7168, 1304), (4096, 7168, 2048, 1025))],
    # contiguous layout
    (4, 8192, 4096, 7168, 1297), (4, 8192, 7168, 2048, 1099), (8, 4096, 4096, 7168, 1288), (8, 4096, 7168, 2048, 1093),
    # masked layout
    (1, 1024, 4096, 7168, 1233), (1, 1024, 7168, 2048, 925), (2, 512, 4096, 7168, 1040), (2, 512, 7168, 2048, 916),
    (4, 256, 4096, 7168, 932), (4, 256, 7168, 2048, 815),
)
DEEPGEMM_WGRAD_SOURCE = ("deepseek-ai/DeepGEMM pull request #95 (2025-05-06, merged): FP8 weight-gradient GEMMs "
                         "(wgrad_gemm_fp8_fp8_fp32_nt, k_grouped_wgrad_gemm_fp8_fp8_fp32_nt) on H800, TFLOPS per "
                         "shape; the K-grouped rows as issue #107 quotes the pull request's table")
DEEPGEMM_WGRAD_FP8_H800 = (  # (groups, m, n, k = tokens, TFLOPS): the output is [m, n], K is reduced
    *[(1, m, n, k, t) for m, n, k, t in (
        (7168, 2112, 4096, 920), (1536, 24576, 4096, 986), (512, 32768, 4096, 878), (16384, 7168, 4096, 994),
        (7168, 4096, 4096, 942), (2048, 7168, 4096, 920), (7168, 2112, 8192, 1052), (1536, 24576, 8192, 1092),
        (512, 32768, 8192, 1014))],
    (4, 7168, 4096, 4096, 939), (4, 2048, 7168, 4096, 900), (4, 7168, 4096, 8192, 1044),
    (4, 2048, 7168, 8192, 1033), (8, 7168, 4096, 4096, 942),
)
STAS00_BF16 = {"tflops": 794.5, "shape": (2048, 2048, 13312),
               "source": "stas00/ml-engineering compute/accelerator (maximum achievable matmul FLOPS, torch 2.7)"}
H100_SMS = 132


def _table(rows: tuple) -> list[dict]:
    return [{"groups": g, "m": m, "n": n, "k": k, "tflops": t} for g, m, n, k, t in rows]


def deepgemm_rows() -> list[dict]:
    return _table(DEEPGEMM_FP8_H800)


def deepgemm_wgrad_rows() -> list[dict]:
    return _table(DEEPGEMM_WGRAD_FP8_H800)


def published_laws(peak_bf16: float = 989e12, peak_fp8: float = 1979e12) -> dict:
    """The FP8 law fitted to DeepGEMM's table, the FP8 wgrad law fitted to DeepGEMM's wgrad table,
    and the BF16 law transferred to stas00's best BF16 rate (BF16 has no wgrad table: its weight
    gradients take the BF16 law at their own shape)."""
    fp8 = fit_shape_law(deepgemm_rows(), H100_SMS, 1.0)
    law = {key: fp8[key] for key in ("flop_per_s", "k_half", "bytes_per_s", "overhead_s")}
    wgrad = fit_wgrad_law(deepgemm_wgrad_rows(), law, H100_SMS, 1.0)
    bf16 = transfer(law, STAS00_BF16["tflops"] * 1e12, STAS00_BF16["shape"], H100_SMS, 2.0, peak_bf16 / peak_fp8)
    return {"fp8": {**law, "median_abs_error": fp8["median_abs_error"], "max_abs_error": fp8["max_abs_error"],
                    "source": DEEPGEMM_SOURCE},
            "fp8_wgrad": {**wgrad, "source": DEEPGEMM_WGRAD_SOURCE},
            "bf16": {**bf16, "source": (f"the FP8 law with k_half x (989 / 1979) and the rate that gives "
                                        f"{STAS00_BF16['tflops']} TFLOPS at {STAS00_BF16['shape']} "
                                        f"({STAS00_BF16['source']}): a transfer, not a BF16 measurement")}}


if __name__ == "__main__":  # refit and print (the numbers hardware/calibrations/h100-sxm.json keeps)
    import json
    print(json.dumps(published_laws(), indent=1))
