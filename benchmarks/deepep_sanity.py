#!/usr/bin/env python3
"""Sanity against reality: epsim's predicted DeepEP dispatch / combine times next to the published ones.

Cases from deepseek-ai/DeepEP's README (V1 kernels on H800 + CX7 400 Gb/s), as collected in the
project's validation notes: normal kernels intranode EP8 and internode EP16/32/64 (4096 tokens per
GPU, hidden 7168, 256 experts, top-8, FP8 dispatch, BF16 combine, 24 SMs, at most 4 nodes per
token), and low-latency kernels EP8..EP256 (128 tokens per GPU). Published times for the normal
kernels are derived from the published logical bandwidths (tag D); low-latency times are measured
(tag M). One hardware description (h800), nothing tuned per case. Prints a table; asserts nothing.
The full validation harness with error tracking is its own capability.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.engine import simulate  # noqa: E402
from simulator.metrics import collective_stats  # noqa: E402
from simulator.scenario import build_scenario  # noqa: E402

# (case, ep, all_to_all, tokens per GPU, published dispatch s, published combine s)
CASES = [
    ("normal intranode", 8, "hierarchical", 4096, 1.05e-3, 1.97e-3),
    ("normal internode", 16, "hierarchical", 4096, 1.40e-3, 2.72e-3),
    ("normal internode", 32, "hierarchical", 4096, 1.89e-3, 3.72e-3),
    ("normal internode", 64, "hierarchical", 4096, 2.36e-3, 4.68e-3),
    ("low latency", 8, "low_latency", 128, 77e-6, 114e-6),
    ("low latency", 16, "low_latency", 128, 118e-6, 195e-6),
    ("low latency", 32, "low_latency", 128, 155e-6, 273e-6),
    ("low latency", 64, "low_latency", 128, 173e-6, 314e-6),
    ("low latency", 128, "low_latency", 128, 192e-6, 369e-6),
    ("low latency", 256, "low_latency", 128, 194e-6, 360e-6),
]


def scenario(ep: int, algorithm: str, tokens: int):
    return build_scenario({
        "name": f"deepep-{algorithm}-ep{ep}",
        "hardware": {"preset": "h800", "nodes": max(1, ep // 8)},
        "model": {"preset": "deepseek-v3"},
        "parallel": {"ep_size": ep},
        "workload": {"mode": "prefill", "scope": "moe_layer", "tokens_per_gpu": tokens, "micro_batches": 1},
        "routing": {"distribution": "uniform", "seed": 0, "max_nodes_per_token": 4 if ep > 8 else None},
        "network": {"all_to_all": algorithm, "dispatch_dtype": "fp8", "combine_dtype": "bf16", "comm_sms": 24},
        "pipeline": {"overlap": "none", "chunks": 1},
    })


def main() -> None:
    print(f"{'case':<18} {'EP':>4} {'dispatch pub':>13} {'pred':>10} {'err':>7}   {'combine pub':>12} {'pred':>10} {'err':>7}")
    errors = []
    for name, ep, algorithm, tokens, pub_d, pub_c in CASES:
        stats = collective_stats(simulate(scenario(ep, algorithm, tokens)))
        pred_d, pred_c = stats["dispatch"]["mean_time_s"], stats["combine"]["mean_time_s"]
        err_d, err_c = (pred_d / pub_d - 1) * 100, (pred_c / pub_c - 1) * 100
        errors += [abs(err_d), abs(err_c)]
        unit, scale = ("ms", 1e3) if pub_d > 5e-4 else ("us", 1e6)
        print(f"{name:<18} {ep:>4} {pub_d * scale:>10.2f} {unit} {pred_d * scale:>7.2f} {unit} {err_d:>+6.1f}%   "
              f"{pub_c * scale:>9.2f} {unit} {pred_c * scale:>7.2f} {unit} {err_c:>+6.1f}%", flush=True)
    errors.sort()
    print(f"\nmedian |error| {errors[len(errors) // 2]:.1f} %, worst {errors[-1]:.1f} %")


if __name__ == "__main__":
    main()
