"""Topology-aware placement (seed 1.2) at EP 8-1024: objective, bound, gap and solve time next to
round-robin's, for DeepSeek-V3's 256 experts under a Zipf router (top 8, FP8 dispatch).

    python benchmarks/topology_placement.py [--alpha 1.2] [--tokens 4096]

Objective: the busiest port's seconds for one micro-batch's dispatch (simulator/workload/
topology_placement.py's linear port model); bound: the MILP's dual bound, or the LP / hottest-
expert bound for the heuristic; gap = (objective - bound) / objective.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.topology import Topology  # noqa: E402
from simulator.ranks import RankLayout  # noqa: E402
from simulator.scenario import build_scenario  # noqa: E402
from simulator.wire import token_bytes  # noqa: E402
from simulator.workload.routing import zipf_probabilities  # noqa: E402
from simulator.workload.topology_placement import topology_aware_placement  # noqa: E402

CASES = [  # (EP size, experts, method)
    (8, 256, "milp"), (8, 256, "heuristic"),
    (32, 64, "milp"), (32, 64, "heuristic"),
    (32, 256, "heuristic"), (64, 256, "heuristic"), (256, 256, "heuristic"), (1024, 256, "heuristic"),
]


def h800(num_nodes: int, gpus_per_node: int):
    s = build_scenario({"name": "bench", "hardware": {"preset": "h800", "nodes": 1}, "model": {"preset": "tiny-moe"},
                        "parallel": {"ep_size": 8}, "workload": {"mode": "prefill", "tokens_per_gpu": 256}})
    return dataclasses.replace(s.cluster, num_nodes=num_nodes, gpus_per_node=gpus_per_node)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alpha", type=float, default=1.2)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per GPU per micro-batch")
    ap.add_argument("--milp-time-limit-s", type=float, default=20.0)
    args = ap.parse_args()
    print(f"Zipf {args.alpha}, top 8, {args.tokens} tokens/GPU, FP8 hidden 7168, H800 nodes of 8 GPUs")
    print(f"{'EP':>5} {'E':>4} {'a2a':>12} {'method':>9} {'round-robin ms':>14} {'greedy ms':>9} "
          f"{'objective ms':>12} {'vs RR':>6} {'bound ms':>9} {'gap':>7} {'time s':>7}")
    for ep, experts, method in CASES:
        spec = h800(max(1, ep // 8), min(8, ep))
        topo = Topology(spec)
        group = RankLayout(spec.num_gpus, spec.gpus_per_node, ep_size=ep).ep_group(0)
        probs = zipf_probabilities(experts, args.alpha, np.random.default_rng(0))
        for a2a in ("hierarchical", "direct"):
            _, r = topology_aware_placement(probs, group, topo, a2a, args.tokens, 8, token_bytes("fp8", 7168, a2a),
                                            method=method, milp_time_limit_s=args.milp_time_limit_s)
            print(f"{ep:>5} {experts:>4} {a2a:>12} {r['method']:>9} {r['round_robin_s'] * 1e3:>14.3f} "
                  f"{r['greedy_s'] * 1e3:>9.3f} {r['objective_s'] * 1e3:>12.3f} "
                  f"{r['objective_s'] / r['round_robin_s']:>6.3f} {r['bound_s'] * 1e3:>9.3f} {r['gap']:>7.2%} "
                  f"{r['solve_s']:>7.2f}")


if __name__ == "__main__":
    main()
