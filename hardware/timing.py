"""Timing kernels on a machine whose speed drifts (a shared VM): rounds of timed calls, the machine's
speed at each moment estimated from all points timed around it, and a point's timing from its rounds.
hardware/calibration.py times its grid with these, benchmarks/real_moe_check.py its real layers.
torch is imported only inside time_round (to synchronise CUDA)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from hardware.calibrated import CONTENDED_CPU_SHARE


def others_busy_s() -> float:
    """CPU seconds the whole machine has been busy, minus this process's own (Linux /proc/stat)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK") - time.process_time()


def time_round(fn, device: str, warmup: int, reps: int) -> dict:
    """One round: `warmup` untimed calls, then `reps` timed ones; median, spread and the CPU share
    other processes took meanwhile (`others_cpu_share`, from /proc/stat)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    num_cpus = len(os.sched_getaffinity(0))
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    others0, wall0 = others_busy_s(), time.perf_counter()
    at = time.time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    others = max(others_busy_s() - others0, 0.0) / ((time.perf_counter() - wall0) * num_cpus)
    return {"median_s": float(np.median(samples)), "others_cpu_share": round(float(others), 3),
            "samples_s": [float(s) for s in samples], "at": at}


def machine_speed(rounds: list[list[dict]], window_s: float, iterations: int = 4) -> list[list[float]]:
    """How slow the machine ran during each round, relative to its median over the run (1.2: kernels
    took 20 % longer then), estimated from all points together.

    A shared VM slows down and speeds up by 10-30 % over seconds (benchmarks/noise_probe.py); the
    GEMM-bound blocks that make most of the grid drift together, memory-bound kernels less so (on the
    2-core VM: run-to-run scatter of the block medians 8.5 % -> 6.5 %, of the permute-only kernel
    none better). Each pass times every point once in a shuffled order, so the
    rounds within `window_s` / 2 of any round belong to many other points, and
    log time(point, round) = log T(point) + log s(moment) separates: T is the median over a point's
    rounds of time / s, s the median over the neighbouring rounds of other points of time / T
    (alternated a few times), normalised to median 1 over the run."""
    point = np.array([j for j, rs in enumerate(rounds) for _ in rs])
    at = np.array([r["at"] for rs in rounds for r in rs])
    y = np.log([r["median_s"] for rs in rounds for r in rs])
    order = np.argsort(at, kind="stable")
    lo = np.searchsorted(at[order], at - window_s / 2, side="left")
    hi = np.searchsorted(at[order], at + window_s / 2, side="right")
    neighbours = [order[a:b][point[order[a:b]] != point[n]] for n, (a, b) in enumerate(zip(lo, hi))]
    log_s = np.zeros(y.size)
    for _ in range(iterations):
        base = np.array([np.median((y - log_s)[point == j]) for j in range(len(rounds))])
        resid = y - base[point]
        log_s = np.array([np.median(resid[nb]) if nb.size else 0.0 for nb in neighbours])
        log_s -= np.median(log_s)
    speeds, n = [], 0
    for rs in rounds:
        speeds.append([float(v) for v in np.exp(log_s[n:n + len(rs)])])
        n += len(rs)
    return speeds


def combine_rounds(rounds: list[dict], speeds: list[float] | None = None) -> dict:
    """One point's timing from its rounds (one per pass): the median of the rounds' medians, each
    divided by the machine's speed at that moment (`machine_speed`; none: 1).

    Rounds during which other processes took more than CONTENDED_CPU_SHARE of the CPUs are left out
    while any other round remains; a point with only contended rounds keeps the least contended
    share so the fit leaves it out. `spread` is (max - min) / median over the rounds' raw medians:
    how far the machine's speed wandered between the passes."""
    speeds = speeds or [1.0] * len(rounds)
    clean = [n for n, r in enumerate(rounds) if r["others_cpu_share"] <= CONTENDED_CPU_SHARE] or range(len(rounds))
    raw = np.array([rounds[n]["median_s"] for n in clean])
    corrected = raw / np.array([speeds[n] for n in clean])
    samples = np.concatenate([rounds[n]["samples_s"] for n in clean])
    q = np.quantile(samples, [0.25, 0.75])
    return {"median_s": float(np.median(corrected)), "raw_median_s": float(np.median(raw)),
            "iqr_s": float(q[1] - q[0]), "min_s": float(samples.min()), "max_s": float(samples.max()),
            "spread": float((raw.max() - raw.min()) / np.median(raw)),
            "others_cpu_share": min(r["others_cpu_share"] for r in rounds),
            "rounds": [{"median_s": r["median_s"], "speed": round(v, 4), "others_cpu_share": r["others_cpu_share"],
                        "samples_s": r["samples_s"], "at": r["at"]} for r, v in zip(rounds, speeds)]}
