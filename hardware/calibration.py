"""The torch benchmark behind a calibration file: the expert block a real MoE layer runs.

What it times, per measurement: permute (argsort by expert, gather rows), per expert a SwiGLU FFN
(one GEMM hidden -> 2 x intermediate for gate and up, SiLU(gate) x up, one GEMM back), and the
weighted combine (scale by the gate weight, index_add into token order). Experts run as a loop of
per-expert GEMMs and, where torch offers it, as one grouped GEMM (torch._grouped_mm). Tokens are
routed by sampled top-k with ragged counts (balanced, uniform or Zipf-skewed). Single GEMMs are
timed too (routers, shared experts, dense layers use them).

FP8 (where the device has it, measured beside BF16 on CUDA): expert weights stored in e4m3 with one
scale per matrix, activations quantised before each GEMM (per-tensor scale), torch._scaled_mm with
BF16 output; SiLU, permute and combine stay in BF16. cuBLASLt's per-tensor scaling, not DeepGEMM's
1 x 128 blocks: the GEMM rate is comparable, the quantisation a little cheaper.

torch is imported only inside functions, here and in hardware/timing.py (which times the grid);
the engine never imports it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware.atomic import write_atomic
from hardware.calibrated import CONTENDED_CPU_SHARE, SCHEMA, fit_dtype
from hardware.timing import combine_rounds, machine_speed, time_round

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp8": "bfloat16"}  # fp8: activations stay BF16
FP8_MAX = 448.0  # largest finite float8_e4m3fn
ZIPF_ALPHA = 1.2


class DeviceUnavailable(RuntimeError):
    """The requested device cannot run the benchmark on this machine."""


class TooContended(RuntimeError):
    """Other processes took the CPUs during too many timings for a fit worth writing."""


MIN_CLEAN_POINT_SHARE = 0.5  # refuse a calibration fitted on fewer of its points than this


def contention(measurements: dict[str, list[dict]]) -> dict:
    """How much the machine's other load cost the benchmark: timing rounds dropped (others took more
    than CONTENDED_CPU_SHARE of the CPUs while they ran) and points left with no clean round, which
    the fit leaves out (see timing.combine_rounds and calibrated.uncontended)."""
    points = [m for rows in measurements.values() for m in rows]
    rounds = [r for m in points for r in m.get("rounds", [])]
    return {"rounds": len(rounds),
            "dropped_rounds": sum(r["others_cpu_share"] > CONTENDED_CPU_SHARE for r in rounds),
            "points": len(points),
            "points_left_out": sum(m["others_cpu_share"] > CONTENDED_CPU_SHARE for m in points),
            "rule": f"a round is dropped when other processes took more than {CONTENDED_CPU_SHARE:.0%} of the CPUs"}


def describe_contention(c: dict) -> str:
    return (f"dropped {c['dropped_rounds']} of {c['rounds']} timing rounds ({c['rule']}); "
            f"{c['points_left_out']} of {c['points']} points had no clean round and are left out of the fit")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to measure. Shapes come from the model presets, scaled down where the device must."""
    dtypes: tuple  # GEMM dtypes, each measured and fitted on its own
    block_shapes: tuple  # (hidden_size, intermediate_size, source)
    block_points: tuple  # (num_experts, top_k, num_tokens, distribution)
    permute_points: tuple  # (hidden_size, num_tokens, top_k): the permute-only kernel, 16 experts
    gemm_shapes: tuple  # (n, k)
    gemm_tokens: tuple  # m values
    grouped_points: int  # how many block points (per shape) also run as one grouped GEMM
    passes: int  # sweeps over the whole grid, each in a fresh shuffled order
    warmup: int  # untimed calls before each pass's timing of a point
    reps: int  # timed calls per point per pass
    drift_window_s: float  # rounds this close in time share the machine's speed (machine_speed)
    max_block_flop: float  # skip points above this many FLOP (keeps the CPU run short)


# CPU: AVX2 cores run torch's BF16 matmul emulated (< 1 GFLOP/s on the Zen 3 this was written on), so
# the CPU computes in FP32. Shapes: tiny-moe as is; Mixtral-8x7B / 8 and DeepSeek-V3 / 4 and / 7.
CPU_PLAN = Plan(
    dtypes=("fp32",),
    block_shapes=((256, 512, "tiny-moe"), (512, 1792, "mixtral-8x7b / 8"), (1024, 288, "deepseek-v3 / 7"),
                  (1792, 512, "deepseek-v3 / 4")),
    block_points=((16, 2, 8, "uniform"), (16, 2, 16, "zipf"), (16, 2, 32, "balanced"), (16, 2, 64, "uniform"),
                  (16, 2, 128, "uniform"), (8, 2, 128, "balanced"), (8, 2, 256, "zipf"), (8, 2, 512, "balanced"),
                  (8, 2, 768, "zipf"), (8, 2, 1024, "uniform"), (4, 1, 1024, "uniform"), (4, 1, 2048, "zipf"),
                  (2, 1, 2048, "zipf"), (2, 1, 4096, "balanced")),
    # Gathered rows from 1.5 to 96 MiB: across the last-level cache and glibc's 32 MiB mmap threshold.
    permute_points=((384, 1024, 4), (768, 2048, 2), (768, 4096, 4), (1536, 1024, 2), (1536, 2048, 4),
                    (2560, 1024, 8), (2560, 4096, 2)),
    gemm_shapes=((8, 1024), (8, 2048), (1024, 1024), (2048, 512), (512, 2048), (256, 1024), (1536, 384),
                 (64, 256)),  # n = 8: routers
    gemm_tokens=(1, 8, 64, 512, 2048),
    grouped_points=3,
    passes=7,
    warmup=1,
    reps=2,
    drift_window_s=1.0,
    max_block_flop=12e9,
)
# CUDA: the presets' real expert shapes, tokens per expert 1 .. 8192.
CUDA_PLAN = Plan(
    dtypes=("bf16", "fp8"),
    block_shapes=((7168, 2048, "deepseek-v3"), (4096, 14336, "mixtral-8x7b"), (2048, 1408, "qwen-moe-like")),
    block_points=((32, 8, 128, "uniform"), (32, 8, 1024, "balanced"), (32, 8, 4096, "uniform"),
                  (32, 8, 16384, "zipf"), (8, 2, 32768, "balanced"), (4, 1, 32768, "uniform")),
    permute_points=((7168, 4096, 8), (7168, 16384, 8), (4096, 32768, 2)),
    gemm_shapes=((8, 4096), (256, 7168), (4096, 7168), (7168, 2048), (14336, 4096), (4096, 14336)),  # n=8: router
    gemm_tokens=(1, 16, 128, 1024, 4096, 16384),
    grouped_points=6,
    passes=3,
    warmup=2,
    reps=5,
    drift_window_s=1.0,
    max_block_flop=5e13,
)
PLANS = {"cpu": CPU_PLAN, "cuda": CUDA_PLAN}


def route(num_tokens: int, num_experts: int, top_k: int, distribution: str, rng: np.random.Generator) -> np.ndarray:
    """[num_tokens, top_k] distinct experts per token: balanced (round robin), uniform or Zipf."""
    if distribution == "balanced":
        flat = np.arange(num_tokens * top_k) % num_experts
        return flat.reshape(num_tokens, top_k)
    logits = np.zeros(num_experts) if distribution == "uniform" else -ZIPF_ALPHA * np.log1p(np.arange(num_experts))
    gumbel = rng.gumbel(size=(num_tokens, num_experts)) + logits
    return np.argsort(-gumbel, axis=1)[:, :top_k]


def fp8_quantize(t):
    """e4m3 values and the one float32 scale that maps t's largest magnitude onto FP8_MAX."""
    import torch

    scale = (t.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Experts:
    """One expert matrix per expert ([experts, k, n] given) in e4m3 with its scale, stored [n, k] so
    that .t() is the column-major operand torch._scaled_mm takes."""

    def __init__(self, weights):
        self.shape = tuple(weights.shape)
        pairs = [fp8_quantize(weights[e].t().contiguous()) for e in range(weights.shape[0])]
        self.q, self.scales = [q for q, _ in pairs], [s for _, s in pairs]

    def matmul(self, a, e: int):
        """a @ expert e's matrix: quantise a (per-tensor scale), FP8 GEMM, BF16 out."""
        import torch

        aq, scale = fp8_quantize(a)
        return torch._scaled_mm(aq, self.q[e].t(), scale_a=scale, scale_b=self.scales[e], out_dtype=torch.bfloat16)


def expert_matmul(a, weights, e: int):
    return weights.matmul(a, e) if isinstance(weights, Fp8Experts) else a @ weights[e]


def expert_block(x, experts, gate_weights, w_gate_up, w_down, impl: str):
    """One MoE layer's expert work: permute, SwiGLU per expert (loop or grouped), weighted combine.
    impl "none" skips the experts (w_gate_up only gives their count): the permutation's own cost.
    Fp8Experts weights run the loop in FP8."""
    import torch
    import torch.nn.functional as F

    num_tokens, top_k = experts.shape
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w_gate_up.shape[0])
    src = order // top_k
    xs = x.index_select(0, src)
    if impl == "none":  # the permute-only kernel: gather and weighted combine around no experts
        ys = xs
    elif impl == "grouped":
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gate, up = torch._grouped_mm(xs, w_gate_up, offs=offs).chunk(2, dim=-1)
        ys = torch._grouped_mm(F.silu(gate) * up, w_down, offs=offs)
    else:
        ys = torch.empty_like(xs)
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            gate, up = expert_matmul(xs[start:start + count], w_gate_up, e).chunk(2, dim=-1)
            ys[start:start + count] = expert_matmul(F.silu(gate) * up, w_down, e)
            start += count
    ys = ys * gate_weights.reshape(-1)[order].unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, src, ys)


def fp8_unavailable(device: str) -> str | None:
    """Why FP8 GEMMs cannot run on `device` (None: they can)."""
    import torch

    try:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as exc:
        return f"torch._scaled_mm with float8_e4m3fn failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def pick_device(device: str) -> str:
    """Check the device can run; set torch's threads to the cores this process may use."""
    import torch

    if device not in PLANS:
        raise DeviceUnavailable(f"--device = {device!r}: unknown device; valid: {', '.join(PLANS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device = 'cuda': CUDA is not available on this machine "
                                f"(torch {torch.__version__}); use --device cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def fault_threshold(device: str) -> float | None:
    """Bytes from which a host allocation is a fresh mmap on every call (glibc's largest dynamic mmap
    threshold on 64-bit, 32 MiB), so its pages fault each time; None where that does not happen
    (GPU memory comes from torch's caching allocator)."""
    if device != "cpu":
        return None
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    return float(32 << 20) if libc.startswith("glibc") else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def tasks(plan: Plan) -> list[dict]:
    out = []
    for dtype in plan.dtypes:
        out += [{"kind": "gemm", "dtype": dtype, "m": m, "n": n, "k": k}
                for n, k in plan.gemm_shapes for m in plan.gemm_tokens
                if dtype != "fp8" or (n % 16 == 0 and k % 16 == 0)]  # _scaled_mm: n, k multiples of 16
        out += [{"kind": "permute", "dtype": dtype, "hidden_size": h, "num_experts": 16, "top_k": k,
                 "num_tokens": t, "distribution": "uniform"} for h, t, k in plan.permute_points]
        for h, i, source in plan.block_shapes:
            points = [p for p in plan.block_points if 6.0 * h * i * p[1] * p[2] <= plan.max_block_flop]
            for j, (e, k, t, dist) in enumerate(points):
                grouped = dtype != "fp8" and j % max(1, len(points) // plan.grouped_points) == 0
                for impl in ("loop", "grouped") if grouped else ("loop",):
                    out.append({"kind": "expert_block", "dtype": dtype, "impl": impl, "hidden_size": h,
                                "intermediate_size": i, "shape_source": source, "num_experts": e, "top_k": k,
                                "num_tokens": t, "distribution": dist})
    return out


def prepare(task: dict, device: str, rng: np.random.Generator, weights: dict):
    """The inputs of one measurement and the call that runs it: (fn, facts to record) or
    (None, {"skipped": why}). Expert weights are made once per (hidden, intermediate, experts, dtype)
    and shared by the points that use them, as one layer's weights serve all its batches."""
    import torch

    fp8 = task["dtype"] == "fp8"
    dtype = getattr(torch, TORCH_DTYPES[task["dtype"]])
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    if task["kind"] == "gemm":
        a, b = rand(task["m"], task["k"]), rand(task["k"], task["n"], scale=task["k"] ** -0.5)
        if not fp8:
            return (lambda: a @ b), {}
        (aq, sa), (bq, sb) = fp8_quantize(a), fp8_quantize(b.t().contiguous())
        return (lambda: torch._scaled_mm(aq, bq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)), {}
    h, e = task["hidden_size"], task["num_experts"]
    if task["kind"] == "permute":
        w_gate_up = w_down = torch.empty(e, 0, 0, device=device)  # expert_block reads only their count
        impl = "none"
    else:
        i, impl = task["intermediate_size"], task["impl"]
        key = (h, i, e, task["dtype"])
        if key not in weights:
            w_gate_up, w_down = rand(e, h, 2 * i, scale=h ** -0.5), rand(e, i, h, scale=i ** -0.5)
            weights[key] = (Fp8Experts(w_gate_up), Fp8Experts(w_down)) if fp8 else (w_gate_up, w_down)
        w_gate_up, w_down = weights[key]
    experts_np = route(task["num_tokens"], e, task["top_k"], task["distribution"], rng)
    experts = torch.from_numpy(experts_np).to(device)
    x = rand(task["num_tokens"], h)
    gate_weights = torch.softmax(rand(task["num_tokens"], task["top_k"]).float(), -1).to(dtype)
    if impl == "grouped":
        try:
            expert_block(x, experts, gate_weights, w_gate_up, w_down, "grouped")
        except (AttributeError, RuntimeError, NotImplementedError) as exc:
            return None, {"skipped": f"torch._grouped_mm unavailable: {exc}"}
    counts = np.bincount(experts_np.reshape(-1), minlength=e)
    return ((lambda: expert_block(x, experts, gate_weights, w_gate_up, w_down, impl)),
            {"tokens_per_expert": [int(c) for c in counts]})


def run_calibration(device: str = "cpu", progress=None, plan: Plan | None = None, seed: int = 0,
                    extra: dict | None = None) -> dict:
    """Benchmark `device` and fit; returns the calibration (not yet written).

    The grid is timed in `plan.passes` passes, each in its own shuffled order, and each point keeps
    the median of its passes: a shared VM's speed wanders by 10-30 % over tens of seconds (see
    benchmarks/noise_probe.py), and spreading every point over the whole run makes all points see
    the same mix of fast and slow spells, so their ratios (what the fit learns) hold.
    `progress(done, total, label)` is called after each timing. `extra` ({label: call}) are timed in
    the same passes and corrected by the same machine speeds but never fitted: the result's "extra"
    holds their timings (benchmarks/real_moe_check.py times its real layers so)."""
    import torch

    name = pick_device(device)
    plan = plan or PLANS[device]
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    todo, skipped = tasks(plan), {}
    if "fp8" in plan.dtypes and (why := fp8_unavailable(device)):
        skipped["fp8"] = why
        todo = [t for t in todo if t["dtype"] != "fp8"]
    measurements, kernels, weights = [], [], {}
    with torch.inference_mode():
        for task in todo:
            fn, facts = prepare(task, device, rng, weights)
            if fn is None:
                skipped.setdefault(f"{task['dtype']} {task['kind']} {task.get('impl', '')}".strip(), facts["skipped"])
            else:
                measurements.append({**task, **facts})
                kernels.append(fn)
        for label, fn in (extra or {}).items():
            measurements.append({"kind": "extra", "label": label})
            kernels.append(fn)
        rounds = [[] for _ in kernels]
        total = plan.passes * len(kernels)
        for p in range(plan.passes):
            for n, j in enumerate(rng.permutation(len(kernels))):
                rounds[j].append(time_round(kernels[j], device, plan.warmup, plan.reps))
                if progress is not None:
                    m = measurements[j]
                    progress(p * len(kernels) + n + 1, total,
                             f"pass {p + 1}/{plan.passes} {m.get('dtype', '')} {m.get('label', m['kind'])}")
    speeds = machine_speed(rounds, plan.drift_window_s) if plan.passes > 1 else [None] * len(rounds)
    measurements = [{**m, **combine_rounds(r, v)} for m, r, v in zip(measurements, rounds, speeds)]
    timed_extra = {m["label"]: {k: v for k, v in m.items() if k not in ("kind", "label")}
                   for m in measurements if m["kind"] == "extra"}
    by_dtype = {d: [m for m in measurements if m.get("dtype") == d] for d in plan.dtypes if d not in skipped}
    contended = contention(by_dtype)
    if contended["points_left_out"] > (1.0 - MIN_CLEAN_POINT_SHARE) * contended["points"]:
        raise TooContended(f"not written: {describe_contention(contended)}; rerun on a quieter machine")
    fits = {}
    for dtype, rows in by_dtype.items():
        grouped = device == "cuda" and any(m.get("impl") == "grouped" for m in rows)
        try:
            fits[dtype] = fit_dtype(rows, dtype, "grouped" if grouped else "loop", fault_threshold(device))
        except ValueError as exc:  # every point of a kind was contended
            raise TooContended(f"not written: {dtype}: {exc}; {describe_contention(contended)}") from None
    return {
        "schema": SCHEMA,
        "source": "measured",
        "device": name,
        "device_kind": device,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "benchmark_wall_s": time.perf_counter() - started,
        "plan": {"passes": plan.passes, "warmup": plan.warmup, "reps": plan.reps,
                 "drift_window_s": plan.drift_window_s, "zipf_alpha": ZIPF_ALPHA,
                 "block_shapes": [list(s) for s in plan.block_shapes]},
        "contention": contended,
        **({"skipped": skipped} if skipped else {}),
        **({"extra": timed_extra} if extra else {}),
        "measurements": by_dtype,
        "fits": fits,
    }


def write_calibration(path: str | Path, data: dict) -> Path:
    """Write the calibration JSON atomically: a half-written file never replaces a good one."""
    return write_atomic(path, json.dumps(data, indent=1) + "\n")
