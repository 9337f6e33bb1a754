"""Compute model fitted to a calibration file (hardware/calibration.py writes them; no torch here).

Two fitted forms, per dtype in the file:
- `additive` (measured): each kernel's time is a sum of terms, each linear in one parameter, so a
  non-negative least-squares fit on relative error settles them. A GEMM: overhead + weight bytes at
  one of two rates (one token streams them through a matrix-vector product; more tokens pack them
  for a blocked GEMM) + FLOP x (a + b / sqrt(m)), an efficiency curve rising with the tokens m (its
  arithmetic intensity); narrow GEMMs (n < NARROW_N) have their FLOP on a rate of their own. The
  expert block is fitted whole, as the engine calls it, together with the permute-only kernel: a
  layer constant (argsort, bincount, launches), a cost per active expert (loop, slicing, SiLU
  launch), each expert's weight and FLOP terms, the SwiGLU activation bytes, the permute/combine
  bytes and the bytes of allocations at or above the file's page-fault threshold (host memory that
  glibc maps fresh on every call; none on GPUs).
- `roofline` (derived from publications): max(FLOP / flop_per_s, bytes / bytes_per_s) + overhead,
  the RooflineCompute formulas with the published rates in place of the preset's efficiencies.
Outside the measured range (tokens per expert, hidden and intermediate sizes) the model falls back to
RooflineCompute, warns once and records the shape for the run's provenance.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from hardware.compute import (
    ATTENTION_CORE_BACKWARD_FACTOR,
    BACKWARD_FACTOR,
    BF16_BYTES,
    GradientGemms,
    RooflineCompute,
)
from hardware.presets import resolve_data_file
from hardware.safe_yaml import quote, read_bytes_bounded
from hardware.spec import GPUSpec

SCHEMA = "epsim-calibration/2"
CONTENDED_CPU_SHARE = 0.25  # other processes' share of the CPUs above which a timing is left out
CALIBRATION_DIR = Path(__file__).parent / "calibrations"
ELEMENT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp32": 4.0}
GEMM_TERMS = ("overhead_s", "s_per_weight_byte_gemv", "s_per_weight_byte_gemm", "s_per_flop",
              "s_per_flop_sqrt_m", "s_per_flop_narrow_n")
NARROW_N = 16  # GEMMs with fewer output columns than one micro-kernel tile run another, slower path
BLOCK_TERMS = ("layer_overhead_s", "expert_overhead_s", "s_per_weight_byte_gemv", "s_per_weight_byte_gemm",
               "s_per_flop", "s_per_flop_sqrt_m", "s_per_act_byte", "s_per_permute_byte", "s_per_fault_byte")


# -- features: what a kernel does, shared by the fit and the prediction ---------------------------
def _weight_and_flop_terms(m: np.ndarray, weight_bytes: np.ndarray, flop: np.ndarray) -> np.ndarray:
    """[gemv weight bytes, gemm weight bytes, FLOP, FLOP / sqrt(m)] per row.

    One token (m = 1) runs as a matrix-vector product that streams the weights once; more tokens
    run a blocked GEMM that first packs the weights (read + write), so weight bytes carry two rates.
    Efficiency then rises with m: FLOP / sqrt(m) is the term that fades as tiles fill."""
    one = m <= 1
    return np.stack([np.where(one, weight_bytes, 0.0), np.where(one, 0.0, weight_bytes), flop,
                     flop / np.sqrt(np.maximum(m, 1.0))], axis=-1)


def gemm_features(m, n: int, k: int, elem_bytes: float) -> np.ndarray:
    """GEMM_TERMS features of [m, k] x [k, n] GEMMs; an array m gives one row each. A narrow GEMM
    (n < NARROW_N: a router over a few experts) has its FLOP on their own rate: CPU BLAS runs it
    without the vectorised micro-kernel (5x slower per FLOP at n = 8 than at n = 16 here)."""
    scalar = np.ndim(m) == 0
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    flop = 2.0 * m * n * k
    narrow = n < NARROW_N
    none = np.zeros_like(flop)
    terms = _weight_and_flop_terms(m, np.full(m.shape, k * n * elem_bytes), none if narrow else flop)
    out = np.concatenate([np.ones((m.size, 1)), terms, (flop if narrow else none)[:, None]], axis=1)
    return out[0] if scalar else out


def block_allocations(m: np.ndarray, hidden_size: int, intermediate_size: int, elem_bytes: float,
                      permute: bool, ffn: bool) -> np.ndarray:
    """Bytes of each fresh tensor one call of the block allocates (calibration.expert_block): the
    gathered rows, the output of each expert's FFN and the weighted rows (permute); per expert the
    gate+up product, SiLU(gate), SiLU(gate) x up and the down projection's output (ffn)."""
    h, i = hidden_size, intermediate_size
    sizes = []
    if permute:
        rows = float(m.sum()) * h * elem_bytes
        sizes += [rows, rows] + ([rows] if ffn else [])
    if ffn:
        sizes += [*(2.0 * m * i * elem_bytes), *(m * i * elem_bytes), *(m * i * elem_bytes), *(m * h * elem_bytes)]
    return np.asarray(sizes)


def block_features(tokens_per_expert, hidden_size: int, intermediate_size: int, elem_bytes: float,
                   permute: bool = True, ffn: bool = True, fault_threshold: float | None = None) -> np.ndarray:
    """The SwiGLU expert block's terms, in BLOCK_TERMS order, summed over active experts.

    `ffn=False` is the block without its experts (the permute-only kernel the calibration times).
    `fault_threshold`: allocations of at least this many bytes get fresh pages from the OS on every
    call (glibc serves them by mmap), so each of their bytes pays a page fault; None: no such cost."""
    m = np.asarray(tokens_per_expert, dtype=np.float64)
    m = m[m > 0]
    h, i = hidden_size, intermediate_size
    total = float(m.sum())
    on = 1.0 if ffn else 0.0
    flop = 6.0 * m * h * i  # per expert: gate+up 2 m h (2i), down 2 m i h
    weights = np.full(m.shape, 3.0 * h * i * elem_bytes)
    terms = _weight_and_flop_terms(m, weights, flop).sum(axis=0) * on
    act_bytes = 3.0 * total * i * elem_bytes * on  # read gate and up, write their product
    permute_bytes = 4.0 * total * h * elem_bytes if permute else 0.0  # gather and weighted combine, read + write
    allocs = block_allocations(m, h, i, elem_bytes, permute, ffn)
    fault_bytes = float(allocs[allocs >= fault_threshold].sum()) if fault_threshold else 0.0
    return np.array([1.0 if permute else 0.0, float(m.size) * on, *terms, act_bytes, permute_bytes, fault_bytes])


def fit_nonnegative(features: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Least squares on relative error with non-negative coefficients (scipy's exact NNLS, Lawson-
    Hanson), on columns scaled to a common magnitude so the active-set tolerance fits every term."""
    from scipy.optimize import nnls

    a = np.asarray(features, dtype=np.float64) / np.asarray(times_s)[:, None]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones(len(times_s)))
    return coef / scale


def uncontended(measurements: list[dict]) -> list[dict]:
    """Measurements during which this process had its cores (see timing.time_round)."""
    return [r for r in measurements if r.get("others_cpu_share", 0.0) <= CONTENDED_CPU_SHARE]


def block_rows(measurements: list[dict], block_impl: str) -> list[dict]:
    """The rows the expert-block fit uses: the block in `block_impl` and the permute-only kernel."""
    return [r for r in measurements if r["kind"] == "permute"
            or (r["kind"] == "expert_block" and r["impl"] == block_impl)]


def row_block_features(r: dict, elem_bytes: float, fault_threshold: float | None) -> np.ndarray:
    return block_features(r["tokens_per_expert"], r["hidden_size"], r.get("intermediate_size", 0), elem_bytes,
                          ffn=r["kind"] == "expert_block", fault_threshold=fault_threshold)


def fit_dtype(measurements: list[dict], dtype: str, block_impl: str, fault_threshold: float | None = None) -> dict:
    """Fit the gemm and expert-block parameters of one dtype from raw measurements."""
    eb = ELEMENT_BYTES[dtype]
    measurements = uncontended(measurements)
    gemms = [r for r in measurements if r["kind"] == "gemm"]
    rows = block_rows(measurements, block_impl)
    blocks = [r for r in rows if r["kind"] == "expert_block"]
    if not gemms or not blocks:
        raise ValueError(f"need gemm and expert_block ({block_impl}) measurements to fit")
    g_coef = fit_nonnegative(np.array([gemm_features(r["m"], r["n"], r["k"], eb) for r in gemms]),
                             np.array([r["median_s"] for r in gemms]))
    if not any(r["n"] < NARROW_N for r in gemms):  # no narrow GEMM measured: time them at the wide rate
        g_coef[GEMM_TERMS.index("s_per_flop_narrow_n")] = g_coef[GEMM_TERMS.index("s_per_flop")]
    b_coef = fit_nonnegative(np.array([row_block_features(r, eb, fault_threshold) for r in rows]),
                             np.array([r["median_s"] for r in rows]))
    tokens = [t for r in blocks for t in r["tokens_per_expert"] if t > 0]
    best_flop_per_s = max(2.0 * r["m"] * r["n"] * r["k"] / r["median_s"] for r in gemms)
    return {
        "form": "additive",
        "block_impl": block_impl,
        "gemm": dict(zip(GEMM_TERMS, map(float, g_coef))),
        "expert_block": dict(zip(BLOCK_TERMS, map(float, b_coef))),
        "page_fault_threshold_bytes": fault_threshold,
        "best_gemm_flop_per_s": best_flop_per_s,
        "valid_range": {
            "tokens_per_expert": [int(min(tokens)), int(max(tokens))],
            "hidden_size": [min(r["hidden_size"] for r in blocks), max(r["hidden_size"] for r in blocks)],
            "intermediate_size": [min(r["intermediate_size"] for r in blocks),
                                  max(r["intermediate_size"] for r in blocks)],
            "gemm_m": [min(r["m"] for r in gemms), max(r["m"] for r in gemms)],
            "gemm_nk": [min(min(r["n"], r["k"]) for r in gemms), max(max(r["n"], r["k"]) for r in gemms)],
        },
    }


# -- files ------------------------------------------------------------------------------------------
def calibration_path(name_or_path: str) -> Path:
    """A shipped calibration name (`cpu-local`) or a path to a .json file; KeyError says what exists."""
    return resolve_data_file(name_or_path, CALIBRATION_DIR, (".json",), "calibration")


MAX_CALIBRATION_BYTES = 16 << 20  # a measured file is ~0.3 MB
# Physical ranges of a fit's numbers (what the rule in an error says): rates past any device's,
# times past any kernel's are not a calibration.
RATE = (1e3, 1e18, "a finite rate in [1e3, 1e18] per second")
TIME_S = (0.0, 1.0, "a finite time in [0, 1] s")
PER_UNIT_S = (0.0, 1e-3, "a finite cost in [0, 1e-3] s per unit")
BYTES = (1.0, 1e15, "a finite size in [1, 1e15] bytes")
RANGE_KEYS = ("tokens_per_expert", "hidden_size", "intermediate_size", "gemm_m", "gemm_nk")


def _check_number(path: Path, key: str, value, bounds: tuple) -> None:
    lo, hi, rule = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"calibration {path}: {key} = {quote(value)}: must be {rule}")


def _check_terms(path: Path, key: str, terms: dict, names: tuple) -> None:
    if not isinstance(terms, dict):
        raise ValueError(f"calibration {path}: {key} = {quote(terms)}: must be a mapping of {', '.join(names)}")
    missing = [f"{key}.{t}" for t in names if t not in terms]
    if missing:
        raise ValueError(f"calibration {path}: lacks {', '.join(missing)}")
    for t in names:
        _check_number(path, f"{key}.{t}", terms[t], TIME_S if t.endswith("overhead_s") else PER_UNIT_S)
    if terms["s_per_flop"] + terms["s_per_flop_sqrt_m"] <= 0:
        raise ValueError(f"calibration {path}: {key}.s_per_flop = {terms['s_per_flop']!r} and s_per_flop_sqrt_m = "
                         f"{terms['s_per_flop_sqrt_m']!r}: one must be > 0 (FLOPs take time)")


def _check_fit(path: Path, name: str, fit) -> None:
    """Schema, types and physical ranges of one dtype's fit; ValueError names file, key, value, rule."""
    key = f"fits.{name}"
    if name not in ELEMENT_BYTES:
        raise ValueError(f"calibration {path}: {key}: unknown dtype; valid: {', '.join(ELEMENT_BYTES)}")
    if not isinstance(fit, dict) or fit.get("form") not in ("additive", "roofline"):
        raise ValueError(f"calibration {path}: {key} must have form 'additive' or 'roofline'")
    needed = {"additive": ("gemm", "expert_block", "valid_range", "best_gemm_flop_per_s"),
              "roofline": ("flop_per_s", "bytes_per_s", "overhead_s")}[fit["form"]]
    missing = [f"{key}.{k}" for k in needed if k not in fit]
    if missing:
        raise ValueError(f"calibration {path}: lacks {', '.join(missing)}")
    if fit["form"] == "roofline":
        _check_number(path, f"{key}.flop_per_s", fit["flop_per_s"], RATE)
        _check_number(path, f"{key}.bytes_per_s", fit["bytes_per_s"], RATE)
        _check_number(path, f"{key}.overhead_s", fit["overhead_s"], TIME_S)
        for law_key in ("shape_law", "wgrad_law"):  # GEMM time by shape (hardware/gemm_shape.py)
            law = fit.get(law_key)
            if law is None:
                continue
            if not isinstance(law, dict):
                raise ValueError(f"calibration {path}: {key}.{law_key} = {quote(law)}: must be a mapping")
            for name, bounds in (("flop_per_s", RATE), ("bytes_per_s", RATE), ("overhead_s", TIME_S),
                                 ("k_half", (0.0, 1e6, "a finite length in [0, 1e6] elements of K"))):
                if name not in law:
                    raise ValueError(f"calibration {path}: lacks {key}.{law_key}.{name}")
                _check_number(path, f"{key}.{law_key}.{name}", law[name], bounds)
        return
    _check_terms(path, f"{key}.gemm", fit["gemm"], GEMM_TERMS)
    _check_terms(path, f"{key}.expert_block", fit["expert_block"], BLOCK_TERMS)
    _check_number(path, f"{key}.best_gemm_flop_per_s", fit["best_gemm_flop_per_s"], RATE)
    if fit.get("page_fault_threshold_bytes") is not None:
        _check_number(path, f"{key}.page_fault_threshold_bytes", fit["page_fault_threshold_bytes"], BYTES)
    ranges = fit["valid_range"]
    for r in RANGE_KEYS:
        pair = ranges.get(r) if isinstance(ranges, dict) else None
        if (not isinstance(pair, list) or len(pair) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair)
                or not 0 < pair[0] <= pair[1] <= 1e15):
            raise ValueError(f"calibration {path}: {key}.valid_range.{r} = {quote(pair)}: must be [low, high] "
                             "with 0 < low <= high <= 1e15")


def _check_kernel_rates(path: Path, where: str, rates: dict) -> None:
    """A published kernel's rates (flop_per_s, bytes_per_s, overhead_s): present and in range."""
    for key, bounds in (("flop_per_s", RATE), ("bytes_per_s", RATE), ("overhead_s", TIME_S)):
        if key not in rates:
            raise ValueError(f"calibration {path}: lacks {where}.{key}")
        _check_number(path, f"{where}.{key}", rates[key], bounds)


def _kernel_s(rates: dict, flop: float, num_bytes: float) -> float:
    """A published kernel's roofline: its FLOP and byte rates, plus its overhead."""
    return max(flop / rates["flop_per_s"], num_bytes / rates["bytes_per_s"]) + rates["overhead_s"]


def load_calibration(path: Path, dtype: str | None = None) -> dict:
    """Read and check a calibration file; ValueError names the file, the key, the value and the rule
    (and the dtypes it has)."""
    raw = read_bytes_bounded(path, MAX_CALIBRATION_BYTES, "calibration")
    try:
        data = json.loads(raw)  # NaN and Infinity parse; the range checks reject them by key
    except json.JSONDecodeError as exc:
        raise ValueError(f"calibration {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer, nesting past the parser's stack
        why = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ValueError(f"calibration {path} is not a valid calibration: {why}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an epsim calibration file (expected schema {SCHEMA!r})")
    fits = data.get("fits")
    if not isinstance(fits, dict) or not fits:
        raise ValueError(f"calibration {path} has no fitted parameters ('fits')")
    for name, fit in fits.items():
        _check_fit(path, name, fit)
    kernels = data.get("decode_attention", {})
    if not isinstance(kernels, dict):
        raise ValueError(f"calibration {path}: decode_attention = {quote(kernels)}: must be a mapping of kinds")
    for kind, rates in kernels.items():
        if kind not in ("mla", "gqa") or not isinstance(rates, dict):
            raise ValueError(f"calibration {path}: decode_attention.{quote(kind)} must be mla or gqa with its rates")
        _check_kernel_rates(path, f"decode_attention.{kind}", rates)
    cores = data.get("attention_core", {})
    if not isinstance(cores, dict) or not set(cores) <= {"forward", "backward"}:
        raise ValueError(f"calibration {path}: attention_core = {quote(cores)}: must map forward / backward to rates")
    for direction, rates in cores.items():
        if not isinstance(rates, dict):
            raise ValueError(f"calibration {path}: attention_core.{direction} must be a mapping of rates")
        _check_kernel_rates(path, f"attention_core.{direction}", rates)
    if dtype is not None and dtype not in fits:
        raise ValueError(f"calibration {path} was made for {', '.join(sorted(fits))}, not {dtype}")
    return data


# -- the model --------------------------------------------------------------------------------------
class Fp32Roofline(RooflineCompute):
    """RooflineCompute for FP32 GEMMs (CPUs without BF16 units): 4-byte inputs, a given peak."""

    def __init__(self, gpu: GPUSpec, peak_flop_per_s: float):
        super().__init__(replace(gpu, peak_bf16_flop_per_s=peak_flop_per_s), "bf16")
        self.dtype = "fp32"
        self._elem_bytes = ELEMENT_BYTES["fp32"]


class CalibratedCompute(GradientGemms):
    """The RooflineCompute interface, timed by a calibration file's fit for one dtype."""

    def __init__(self, gpu: GPUSpec, dtype: str, path: Path, data: dict):
        self.gpu = gpu
        self.dtype = dtype
        self.path = Path(path)
        self.data = data
        self.fit = data["fits"][dtype]
        self._eb = ELEMENT_BYTES[dtype]
        self.out_of_range: list[str] = []
        # Published rates have no measured grid: the roofline with those rates is the whole model.
        self.published = self.fit["form"] == "roofline"
        if self.published:
            self.fallback = self._published_roofline(gpu, dtype, self.fit)
            # Attention cores run in BF16 whatever the GEMM dtype: time them at the file's BF16 rate.
            bf16 = data["fits"].get("bf16")
            self.core_model = (self._published_roofline(gpu, "bf16", bf16)
                               if bf16 is not None and bf16["form"] == "roofline" else self.fallback)
        elif dtype == "fp32":
            self.fallback = Fp32Roofline(gpu, self.fit["best_gemm_flop_per_s"])
        else:
            self.fallback = RooflineCompute(gpu, dtype)
        # Attention cores run in BF16 whatever the GEMM dtype: an FP8 file's measured BF16 fit times them.
        bf16 = data["fits"].get("bf16")
        self.core_fit = bf16 if dtype == "fp8" and bf16 is not None and bf16["form"] == "additive" else self.fit

    @staticmethod
    def _published_roofline(gpu: GPUSpec, dtype: str, fit: dict) -> RooflineCompute:
        return RooflineCompute(replace(
            gpu, matmul_efficiency=fit["flop_per_s"] / gpu.peak_flop_per_s(dtype),
            memory_efficiency=fit["bytes_per_s"] / gpu.hbm_bytes_per_s,
            kernel_launch_s=fit["overhead_s"]), dtype, fit.get("shape_law"), fit.get("wgrad_law"))

    def describe(self) -> dict:
        return {
            "kind": "calibrated",
            "calibration_file": self.path.name,
            "device": self.data.get("device"),
            "source": self.data.get("source"),
            "torch_version": self.data.get("torch_version"),
            "date": self.data.get("date"),
            "gemm_dtype": self.dtype,
            "form": self.fit["form"],
            "valid_range": self.fit.get("valid_range"),
            "out_of_range": list(self.out_of_range),
            "fell_back_to_roofline": bool(self.out_of_range),
            "fallback": self.fallback.describe(),
        }

    # -- range ----------------------------------------------------------------------------------
    def _inside(self, label: str, **values) -> bool:
        """True when every value lies in the fit's measured range; else record the shape once."""
        rng = self.fit["valid_range"]
        for key, value in values.items():
            lo, hi = rng[key]
            values_ = np.atleast_1d(np.asarray(value))
            outside = values_[(values_ < lo) | (values_ > hi)]
            if outside.size:
                shape = f"{label}: {key}={int(outside.max())} outside the measured [{lo}, {hi}]"
                if not self.out_of_range:
                    warnings.warn(f"calibration {self.path.name}: {shape}; using roofline", stacklevel=3)
                if shape not in self.out_of_range:
                    self.out_of_range.append(shape)
                return False
        return True

    def _gemm_fit_s(self, m, n: int, k: int) -> np.ndarray:
        coef = np.array([self.fit["gemm"][t] for t in GEMM_TERMS])
        return gemm_features(m, n, k, self._eb) @ coef

    # -- RooflineCompute interface -----------------------------------------------------------------
    def gemm_s(self, m: int, n: int, k: int) -> float:
        if m <= 0 or self.published:
            return self.fallback.gemm_s(m, n, k)
        if not self._inside(f"gemm {m}x{n}x{k}", gemm_m=m, gemm_nk=[n, k]):
            return self.fallback.gemm_s(m, n, k)
        return float(self._gemm_fit_s(m, n, k))

    def grouped_gemm_s(self, ms: np.ndarray, n: int, k: int) -> float:
        ms = np.asarray(ms, dtype=np.float64)
        ms = ms[ms > 0]
        if ms.size == 0 or self.published:
            return self.fallback.grouped_gemm_s(ms, n, k)
        if not self._inside(f"grouped gemm n={n} k={k}", gemm_m=ms, gemm_nk=[n, k]):
            return self.fallback.grouped_gemm_s(ms, n, k)
        return float(np.sum(self._gemm_fit_s(ms, n, k)))

    def wgrad_s(self, ks: np.ndarray, rows: int, cols: int) -> float:
        """A measured fit times a weight gradient as the GEMM of its shape, [rows, K] x [K, cols]
        per group (the grid measured forward GEMMs only); a published file, by its wgrad law."""
        ks = np.asarray(ks, dtype=np.float64)
        ks = ks[ks > 0]
        if ks.size == 0 or self.published:
            return self.fallback.wgrad_s(ks, rows, cols)
        if not self._inside(f"wgrad gemm {rows}x{cols}", gemm_m=rows, gemm_nk=[cols, *ks]):
            return self.fallback.wgrad_s(ks, rows, cols)
        return float(np.sum([self._gemm_fit_s(rows, cols, int(k)) for k in ks]))

    def memory_s(self, num_bytes: float) -> float:
        if num_bytes <= 0 or self.published:
            return self.fallback.memory_s(num_bytes)
        block = self.fit["expert_block"]
        return block["s_per_act_byte"] * num_bytes + self.fit["gemm"]["overhead_s"]

    def _published_core_s(self, direction: str, flop: float, num_bytes: float) -> float | None:
        """The file's published attention-core rate for the forward or the backward, if it has one."""
        rates = self.data.get("attention_core", {}).get(direction)
        return None if rates is None else _kernel_s(rates, flop, num_bytes)

    def attention_core_s(self, flop: float, num_bytes: float) -> float:
        """The file's published core rate (attention_core.forward), else the roofline of the fitted
        GEMM rate and the fitted streaming rate."""
        if flop <= 0:
            return 0.0
        if self.published:
            published = self._published_core_s("forward", flop, num_bytes)
            return published if published is not None else self.core_model.attention_core_s(flop, num_bytes)
        fit = self.core_fit
        block, gemm = fit["expert_block"], fit["gemm"]
        return (max(flop * (gemm["s_per_flop"] or 1.0 / fit["best_gemm_flop_per_s"]),
                    num_bytes * block["s_per_act_byte"]) + gemm["overhead_s"])

    def attention_core_bwd_s(self, flop: float, num_bytes: float) -> float:
        """The core's backward (ATTENTION_CORE_BACKWARD_FACTOR x the forward's work) at the file's
        published backward rate (attention_core.backward), else at the forward's."""
        if flop <= 0:
            return 0.0
        if self.published:
            published = self._published_core_s("backward", ATTENTION_CORE_BACKWARD_FACTOR * flop,
                                                ATTENTION_CORE_BACKWARD_FACTOR * num_bytes)
            if published is not None:
                return published
        return ATTENTION_CORE_BACKWARD_FACTOR * self.attention_core_s(flop, num_bytes)

    def decode_attention_s(self, kind: str, flop: float, num_bytes: float) -> float:
        """A decode attention kernel at the file's published rates for it (decode_attention.<kind>:
        FlashMLA's for MLA), else the attention core's model."""
        rates = self.data.get("decode_attention", {}).get(kind)
        if rates is None or flop <= 0:
            return self.attention_core_s(flop, num_bytes)
        return _kernel_s(rates, flop, num_bytes)

    def expert_ffn_s(self, tokens_per_expert: np.ndarray, hidden_size: int, intermediate_size: int,
                     permute: bool = True) -> float:
        tokens = np.asarray(tokens_per_expert)
        if tokens.sum() <= 0 or self.published:
            return self.fallback.expert_ffn_s(tokens, hidden_size, intermediate_size, permute)
        if not self._inside(f"expert block h={hidden_size} i={intermediate_size}",
                            tokens_per_expert=tokens[tokens > 0], hidden_size=hidden_size,
                            intermediate_size=intermediate_size):
            return self.fallback.expert_ffn_s(tokens, hidden_size, intermediate_size, permute)
        coef = np.array([self.fit["expert_block"][t] for t in BLOCK_TERMS])
        return float(block_features(tokens, hidden_size, intermediate_size, self._eb, permute,
                                    fault_threshold=self.fit.get("page_fault_threshold_bytes")) @ coef)

    def expert_ffn_bwd_s(self, tokens_per_expert: np.ndarray, hidden_size: int, intermediate_size: int,
                         permute: bool = True) -> float:
        """A published file: the parts' gradients (ffn_bwd_parts). A measured fit timed forward
        blocks only: BACKWARD_FACTOR x the block (ASSUMED, as before the backward had shapes)."""
        tokens = np.asarray(tokens_per_expert)
        if tokens.sum() <= 0 or self.published:
            return self.fallback.expert_ffn_bwd_s(tokens, hidden_size, intermediate_size, permute)
        return BACKWARD_FACTOR * self.expert_ffn_s(tokens, hidden_size, intermediate_size, permute)


def compute_model(gpu: GPUSpec, dtype: str, calibration: str | Path | None):
    """The engine's compute model: RooflineCompute without a calibration, else the fitted one."""
    if calibration is None:
        return RooflineCompute(gpu, dtype)
    path = Path(calibration)
    return CalibratedCompute(gpu, dtype, path, load_calibration(path, dtype))


__all__ = ["CalibratedCompute", "compute_model", "load_calibration", "calibration_path", "fit_dtype",
           "BF16_BYTES"]
