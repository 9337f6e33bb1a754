"""Should I enable EPLB, and with how many redundant experts? DeepSeek-V3 prefill (4 MoE layers of
4096 tokens per GPU, H800, DeepEP normal kernels) at EP 32 and EP 64 under a Zipf router whose
per-GPU imbalance without EPLB is about 2.5x (alpha found from the law's expected loads, not
tuned on a result), round-robin against EPLB without and with redundant slots, hierarchical
(group-limited routing, 4 nodes per token) and global. Prints a table; not part of the suite.

    python benchmarks/eplb_deepseek.py [--ep 32 64] [--target 2.5]
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from simulator.api import simulate_scenario
from simulator.scenario import build_scenario
from simulator.workload.routing import zipf_probabilities

BASE = {
    "hardware": {"preset": "h800"},
    "model": {"preset": "deepseek-v3", "num_layers": 4, "num_dense_layers": 0},
    "workload": {"mode": "prefill", "tokens_per_gpu": 4096, "micro_batches": 1},
    "network": {"all_to_all": "hierarchical", "dispatch_dtype": "fp8", "combine_dtype": "bf16", "comm_sms": 20},
    "pipeline": {"chunks": 2},
}


def expected_gpu_imbalance(alpha: float, num_experts: int, ep: int, seeds=range(8)) -> float:
    """max / mean of the expected tokens per GPU under round-robin, from the Zipf law alone."""
    ratios = []
    for seed in seeds:
        p = zipf_probabilities(num_experts, alpha, np.random.default_rng(seed))
        per_gpu = np.bincount(np.arange(num_experts) % ep, weights=p, minlength=ep)
        ratios.append(per_gpu.max() / per_gpu.mean())
    return float(np.mean(ratios))


def alpha_for(target: float, num_experts: int, ep: int) -> float:
    lo, hi = 0.0, 3.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_gpu_imbalance(mid, num_experts, ep) < target else (lo, mid)
    return round((lo + hi) / 2, 3)


def run(ep: int, alpha: float, strategy: str, redundant: int, limited: bool) -> dict:
    data = copy.deepcopy(BASE)
    data["name"] = f"eplb-ep{ep}-{strategy}-{redundant}"
    data["hardware"]["nodes"] = ep // 8
    data["parallel"] = {"ep_size": ep}
    data["routing"] = {"distribution": "zipf", "zipf_alpha": alpha, "seed": 0,
                       "max_nodes_per_token": 4 if limited else None}
    data["placement"] = {"strategy": strategy, "redundant_experts": redundant}
    start = time.perf_counter()
    summary = simulate_scenario(build_scenario(data))[0]
    return {**summary, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ep", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--target", type=float, default=2.5)
    args = parser.parse_args()
    print("| EP | zipf alpha | placement | redundant | routing | step ms | GPU load max/mean | tokens/s/GPU | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ep in args.ep:
        alpha = alpha_for(args.target, 256, ep)
        for strategy, redundant, limited in (("round_robin", 0, True), ("eplb", 0, True), ("eplb", ep, True),
                                             ("round_robin", 0, False), ("eplb", ep, False)):
            s = run(ep, alpha, strategy, redundant, limited)
            print(f"| {ep} | {alpha} | {strategy} | {redundant} | {'4 nodes' if limited else 'any'} | "
                  f"{s['step_time_s'] * 1e3:.2f} | {s['load_imbalance']:.2f} | {s['tokens_per_s_per_gpu']:,.0f} | "
                  f"{s['wall_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
