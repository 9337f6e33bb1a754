"""Issue 12's closing measurement: DeepSeek-V3 prefill at EP 32 and 64 under a Zipf router whose
expected per-GPU imbalance under round-robin is 2.5x (alpha from the law, benchmarks/eplb_deepseek.py):
step time and imbalance for round-robin, topology-aware and EPLB with 0/16/32/64 redundant experts;
adaptive gating (alpha 0.1/0.2/0.3) after 0, 1, 5 and 20 gate updates; EPLB rebalanced every 5 steps
under a drifting law with its weight migration; and how long each placement solve takes at EP 256
and EP 1024; seed 2.1's threshold gate (experts kept per token); and (--part train) redundant experts
in a training step, their gradient sums included. 4 MoE layers (num_layers 4, no dense layer), 4096 tokens per GPU, one micro-batch,
H800, DeepEP normal kernels, routing without a node limit. Prints markdown tables; not in the suite.

    python benchmarks/load_balancing_deepseek.py [--part placement adaptive rebalance solve threshold train]
        [--ep 32 64]
        [--out DIR]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eplb_deepseek import BASE, alpha_for  # noqa: E402

from hardware.topology import Topology  # noqa: E402
from reports.steps_plot import per_step_figure  # noqa: E402
from simulator.api import simulate_scenario  # noqa: E402
from simulator.errors import ScenarioError  # noqa: E402
from simulator.ranks import RankLayout  # noqa: E402
from simulator.scenario import build_scenario  # noqa: E402
from simulator.wire import token_bytes  # noqa: E402
from simulator.workload.placement import eplb_placement  # noqa: E402
from simulator.workload.routing import zipf_probabilities  # noqa: E402
from simulator.workload.topology_placement import topology_aware_placement  # noqa: E402


def scenario(ep: int, alpha: float, placement: dict, routing: dict | None = None, steps: int = 1):
    data = copy.deepcopy(BASE)
    data["name"] = f"lb-ep{ep}"
    data["hardware"]["nodes"] = ep // 8
    data["parallel"] = {"ep_size": ep}
    data["routing"] = {"distribution": "zipf", "zipf_alpha": alpha, "seed": 0, **(routing or {})}
    data["placement"] = placement
    data["workload"]["steps"] = steps
    return build_scenario(data)


def timed(s) -> tuple[dict, float]:
    start = time.perf_counter()
    summary = simulate_scenario(s)[0]
    return summary, time.perf_counter() - start


def placement_table(eps) -> None:
    print("| EP | zipf alpha | placement | redundant | step ms | GPU load max/mean | expert max/mean | "
          "busiest link per a2a ms | tokens/s/GPU | solve s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ep in eps:
        alpha = alpha_for(2.5, 256, ep)
        for strategy, redundant in (("round_robin", 0), ("topology_aware", 0), ("eplb", 0), ("eplb", 16),
                                    ("eplb", 32), ("eplb", 64)):
            try:
                s = scenario(ep, alpha, {"strategy": strategy, "redundant_experts": redundant})
            except ScenarioError as exc:
                print(f"| {ep} | {alpha} | {strategy} | {redundant} | rejected: {exc.rule} |||||||")
                continue
            r, wall = timed(s)
            solve = r.get("placement_solver", {}).get("solve_s", float("nan"))
            print(f"| {ep} | {alpha} | {strategy} | {redundant} | {r['step_time_s'] * 1e3:.2f} | "
                  f"{r['load_imbalance']:.2f} | {r['expert_load_max_over_mean']:.2f} | "
                  f"{r['max_link_load']['all_to_all_busy_s'] * 1e3:.2f} | {r['tokens_per_s_per_gpu']:,.0f} | {solve:.2f} | "
                  f"{wall:.0f} |", flush=True)


def adaptive_table(eps, out: Path, updates=(0, 1, 5, 20)) -> None:
    print("| EP | zipf alpha | adaptive alpha | gate updates | step ms | GPU load max/mean | expert max/mean |")
    print("|---|---|---|---|---|---|---|")
    out.mkdir(parents=True, exist_ok=True)
    for ep in eps:
        alpha = alpha_for(2.5, 256, ep)
        runs = {}
        for a in (0.1, 0.2, 0.3):
            r, wall = timed(scenario(ep, alpha, {"strategy": "round_robin"}, {"adaptive_alpha": a},
                                     steps=max(updates) + 1))
            runs[f"alpha {a}"] = r["per_step"]
            for n in updates:  # step n ran on the gate after n updates
                p = r["per_step"][n]
                print(f"| {ep} | {alpha} | {a} | {n} | {p['step_time_s'] * 1e3:.2f} | {p['load_imbalance']:.2f} | "
                      f"{p['expert_load_max_over_mean']:.2f} |", flush=True)
            print(f"<!-- EP {ep} alpha {a}: {max(updates) + 1} steps in {wall:.0f} s -->", flush=True)
        (out / f"adaptive_ep{ep}.json").write_text(json.dumps(runs, indent=1))
        per_step_figure(runs, out / f"adaptive_ep{ep}.png",
                        f"DeepSeek-V3 prefill, EP {ep}, Zipf {alpha}: adaptive gating, round-robin")


def rebalance_table(eps, steps: int = 10, drift: float = 0.02) -> None:
    print(f"| EP | redundant | rebalance every | mean step ms (steps 5-{steps - 1}) | mean GPU max/mean | "
          f"rebalances | experts moved | GB moved per rebalance | migration ms per rebalance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ep in eps:
        alpha = alpha_for(2.5, 256, ep)
        for every in (None, 1, 5):
            pl = {"strategy": "eplb", "redundant_experts": ep, "rebalance_every_steps": every}
            r, _ = timed(scenario(ep, alpha, pl, {"drift": drift}, steps=steps))
            late = r["per_step"][5:]
            reb = r.get("rebalance", {"rebalances": []})["rebalances"]
            moved = np.mean([x["experts_moved"] for x in reb]) if reb else 0
            gb = np.mean([x["migration_bytes"] for x in reb]) / 1e9 if reb else 0
            ms = np.mean([x["migration_time_s"] for x in reb]) * 1e3 if reb else 0
            print(f"| {ep} | {ep} | {every or 'never (law each step: oracle)'} | "
                  f"{np.mean([p['step_time_s'] for p in late]) * 1e3:.2f} | "
                  f"{np.mean([p['load_imbalance'] for p in late]):.2f} | {len(reb)} | {moved:.0f} | {gb:.2f} | "
                  f"{ms:.2f} |", flush=True)


def threshold_table(eps, thresholds=(0.02, 0.05, 0.1, 0.2)) -> None:
    print("| EP | zipf alpha | threshold | experts per token | step ms | GPU load max/mean | MFU % | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for ep in eps:
        alpha = alpha_for(2.5, 256, ep)
        for t in (None, *thresholds):
            r, wall = timed(scenario(ep, alpha, {"strategy": "round_robin"}, {"threshold": t}))
            kept = r.get("tokens_ungated", {}).get("experts_per_token", 8.0)
            print(f"| {ep} | {alpha} | {t or 'none (top-8)'} | {kept:.2f} | {r['step_time_s'] * 1e3:.2f} | "
                  f"{r['load_imbalance']:.2f} | {r['mfu'] * 100:.1f} | {wall:.0f} |", flush=True)


def train_table(eps, redundant=(0, 16, 32, 64)) -> None:
    """Redundant experts in training: the same 4 MoE layers as a training step (4096-token sequences,
    2 micro-batches, FP8 GEMMs, FP32 gradient reduction, ZeRO-1), where every copy holds its
    gradients and optimizer state and the copies' gradients are summed before the expert-DP
    reduction; one EP group (expert DP 1), and two (expert DP 2: the groups' Zipf laws have their
    own hot experts, and one placement per layer balances their sum)."""
    print("| EP | expert DP | placement | redundant | step ms | GPU load max/mean | replica sums per GPU | "
          "replica sum mean ms | exposed comm ms | memory peak GB | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ep in eps:
        alpha = alpha_for(2.5, 256, ep)
        for edp in (1, 2):
            for strategy, r in (("round_robin", 0), *(("eplb", n) for n in redundant)):
                data = copy.deepcopy(BASE)
                data.update(name=f"lb-train-ep{ep}", parallel={"ep_size": ep},
                            routing={"distribution": "zipf", "zipf_alpha": alpha, "seed": 0},
                            placement={"strategy": strategy, "redundant_experts": r},
                            training={"distributed_optimizer": True})
                data["hardware"]["nodes"] = edp * ep // 8
                data["workload"] = {"mode": "train", "seq_len": 4096, "micro_batches": 2, "gemm_dtype": "fp8"}
                try:
                    s = build_scenario(data)
                except ScenarioError as exc:
                    print(f"| {ep} | {edp} | {strategy} | {r} | rejected: {exc.rule} ||||||")
                    continue
                out, wall = timed(s)
                rep = out["collectives"].get("expert_replica_grad_allreduce", {"count": 0, "mean_time_s": 0.0})
                print(f"| {ep} | {edp} | {strategy} | {r} | {out['step_time_s'] * 1e3:.1f} | "
                      f"{out['load_imbalance']:.2f} | {rep['count']} | {rep['mean_time_s'] * 1e3:.2f} | "
                      f"{out['breakdown_s']['exposed_comm'] * 1e3:.1f} | "
                      f"{out['memory_per_gpu']['peak'] / 1e9:.1f} | {wall:.0f} |", flush=True)


def solve_table() -> None:
    print("| EP | solver | slots | solve s |")
    print("|---|---|---|---|")
    s = build_scenario({"name": "bench", "hardware": {"preset": "h800", "nodes": 1}, "model": {"preset": "tiny-moe"},
                        "parallel": {"ep_size": 8}, "workload": {"mode": "prefill", "tokens_per_gpu": 256}})
    for ep in (256, 1024):
        probs = zipf_probabilities(256, alpha_for(2.5, 256, 64), np.random.default_rng(0))
        for slots in (256 + ep, 256 + 2 * ep) if ep == 256 else (1024, 2048):
            start = time.perf_counter()
            eplb_placement(probs, slots, ep, ep // 8, hierarchical=False)
            print(f"| {ep} | EPLB (global), 256 experts | {slots} | {time.perf_counter() - start:.3f} |", flush=True)
        spec = dataclasses.replace(s.cluster, num_nodes=ep // 8, gpus_per_node=8)
        group = RankLayout(spec.num_gpus, 8, ep_size=ep).ep_group(0)
        _, report = topology_aware_placement(probs, group, Topology(spec), "hierarchical", 4096, 8,
                                             token_bytes("fp8", 7168, "hierarchical"))
        print(f"| {ep} | topology-aware ({report['method']}), objective {report['objective_s'] / report['round_robin_s']:.3f}"
              f" of round-robin | 256 | {report['solve_s']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["placement", "adaptive", "rebalance", "solve"])
    parser.add_argument("--ep", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--out", default="runs/load_balancing", help="folder for the per-step plots and numbers")
    args = parser.parse_args()
    parts = {"placement": lambda: placement_table(args.ep), "adaptive": lambda: adaptive_table(args.ep, Path(args.out)),
             "rebalance": lambda: rebalance_table(args.ep), "solve": solve_table,
             "threshold": lambda: threshold_table(args.ep), "train": lambda: train_table(args.ep)}
    for part in args.part:
        parts[part]()
        print()


if __name__ == "__main__":
    main()
