"""How steady is this machine? Times kernels back to back for a while and prints how far their
speed wanders, at which time scale, and how much of it the kernels share.

    flock /tmp/epsim-bench.lock python benchmarks/noise_probe.py [--seconds 40]

Four kernels take turns (three timed calls each, round after round): a compute-bound GEMM
(128 x 1024 x 1024), a memory-bound one (4 x 1024 x 1024: 4 MB of weights, 4 rows), a 16 MB copy and
a small elementwise add. Per kernel: the coefficient of variation of its median over time bins of
0.2 / 1 / 5 s and the lag-1 autocorrelation of those medians (near 1: slow drift, which more
repetitions in one place cannot average away; near 0: fast noise), then the correlation between
kernels of their 1-s medians and the variation left after dividing by the compute-bound GEMM's
(what hardware/timing.machine_speed relies on). The calibration's answer to slow drift: every
point timed once per pass, passes spread over the whole run, speeds estimated from all points.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 1024, generator=g)
    a, thin = torch.randn(128, 1024, generator=g), torch.randn(4, 1024, generator=g)
    big, small = torch.randn(2048, 2048, generator=g), torch.randn(512, 512, generator=g)
    kernels = {"gemm 128x1024x1024": lambda: a @ w, "gemm 4x1024x1024": lambda: thin @ w,
               "copy 16 MB": big.clone, "add 1 MB": lambda: small + 1.0}
    at, medians = [], {k: [] for k in kernels}
    start = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < args.seconds:
            at.append(time.perf_counter() - start)
            for name, fn in kernels.items():
                samples = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    fn()
                    samples.append(time.perf_counter() - t0)
                medians[name].append(np.median(samples))
    at = np.asarray(at)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(at)} rounds in {args.seconds:.0f} s")
    print(f"{'kernel':<22}{'median':>10}" + "".join(f"{f'cv {b:g}s':>10}{f'ac {b:g}s':>9}" for b in (0.2, 1, 5)))
    per_second = {}
    for name, values in medians.items():
        values = np.asarray(values)
        row = f"{name:<22}{np.median(values) * 1e3:>8.3f}ms"
        for width in (0.2, 1.0, 5.0):
            bins = (at // width).astype(int)
            binned = np.array([np.median(values[bins == b]) for b in np.unique(bins)])
            ac = np.corrcoef(binned[:-1], binned[1:])[0, 1] if binned.size > 2 else float("nan")
            row += f"{binned.std() / binned.mean():>10.1%}{ac:>9.2f}"
            if width == 1.0:
                per_second[name] = binned
        print(row)
    ref = per_second["gemm 128x1024x1024"]
    print(f"\n{'kernel':<22}{'corr with GEMM (1 s)':>22}{'cv / GEMM (1 s)':>17}")
    for name, binned in per_second.items():
        ratio = binned / ref
        print(f"{name:<22}{np.corrcoef(binned, ref)[0, 1]:>22.2f}{ratio.std() / ratio.mean():>17.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
