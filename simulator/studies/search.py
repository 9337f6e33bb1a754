"""Layout search: which layout of N GPUs should I use?

The candidates are the product of the layout axes a scenario leaves open on N GPUs: TP size
(divisors of the node that divide the heads), PP size (and two virtual stages with the interleaved
schedule), EP size, the all-to-all algorithm, chunks and, with a Megatron batch, the micro-batch
size; in decode the attention layout (TP) and two-batch overlap instead of PP. Every candidate is
built and checked by the scenario rules first (an impossible layout or one that does not fit memory
is pruned there, with its reason), then the rest are simulated through the sweep engine (parallel,
cached, resumable) and ranked by the objective.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hardware.units import GIB
from simulator.errors import ScenarioError
from simulator.scenario import apply_overrides, build_scenario, read_scenario_file
from simulator.scenario.memory import memory_per_gpu
from simulator.studies.sweep import Point, make_points

OBJECTIVES = {  # summary column -> True when larger is better
    "mfu": ("mfu", True),
    "tokens_per_s": ("tokens_per_s", True),
    "itl": ("itl_s", False),
}
SEED_MFU, SEED_BANDWIDTH = 0.6, 0.8  # the seed's target: 60 % MFU and 80 % bandwidth utilisation
DEFAULT_MAX_POINTS = 200


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def powers_of_two_up_to(n: int) -> list[int]:
    return [1 << k for k in range(n.bit_length()) if (1 << k) <= n]


@dataclass(frozen=True)
class Candidates:
    axes: dict[str, list]  # scenario key -> the values searched
    combos: list[tuple[tuple[str, object], ...]]  # every candidate's overrides
    gpus_per_node: int  # of the scenario's hardware: num_gpus // this is the nodes of every candidate


def candidates(base: dict, num_gpus: int, pinned: frozenset = frozenset()) -> Candidates:
    """The layout axes a scenario leaves open on num_gpus GPUs (nodes from its gpus_per_node); the
    keys in `pinned` (the user's --set) keep the base's value."""
    scenario = build_scenario(apply_overrides(base, [("hardware.nodes", 1), ("parallel.ep_size", 1),
                                                     ("parallel.tp_size", 1), ("parallel.pp_size", 1),
                                                     ("hardware.hbm_gb", 1e5)]))
    gpn, m, w = scenario.cluster.gpus_per_node, scenario.model, scenario.workload
    schedule = scenario.parallel.pp_schedule
    if num_gpus % gpn and gpn % num_gpus:
        raise ScenarioError("--gpus", num_gpus, f"must be whole nodes of gpus_per_node={gpn} or part of one node")
    heads, kv = m.attention.num_heads, m.attention.num_kv_heads
    tp = [t for t in divisors(min(gpn, num_gpus)) if heads % t == 0 and (m.attention.kind != "gqa" or kv % t == 0)]
    ep = [e for e in divisors(num_gpus) if e <= max(m.num_experts, gpn)]
    axes: dict[str, list] = {"parallel.tp_size": tp, "parallel.ep_size": ep}
    if w.mode == "decode":
        axes["workload.two_batch_overlap"] = [False, True]
        axes["network.all_to_all"] = ["low_latency", "hierarchical"]
    else:
        pp = [p for p in powers_of_two_up_to(min(num_gpus, m.num_layers)) if w.scope == "model" or p == 1]
        axes["parallel.pp_size"] = pp
        axes["network.all_to_all"] = ["hierarchical", "direct"]
        axes["pipeline.chunks"] = [1, 2]
        if w.mode == "train" and scenario.training.global_batch_size is not None:
            axes["training.micro_batch_size"] = [1, 2]
    axes = {key: values for key, values in axes.items() if key not in pinned}
    combos = []
    for values in itertools.product(*axes.values()):
        combo = dict(zip(axes, values))
        pp = combo.get("parallel.pp_size", scenario.parallel.pp_size)
        vpps = [1, 2] if pp > 1 and w.mode == "train" and "parallel.vpp_size" not in pinned else [None]
        for vpp in vpps:
            if vpp is None:
                extra = {}
            elif vpp > 1:
                extra = {"parallel.vpp_size": vpp, "parallel.pp_schedule": "interleaved"}
            else:  # one model chunk per rank: the base's schedule, 1F1B in place of interleaved
                extra = {"parallel.vpp_size": 1, "parallel.pp_schedule": "1f1b" if schedule == "interleaved" else schedule}
            combos.append(tuple({**combo, **extra}.items()))
    return Candidates(axes, combos, gpn)


@dataclass
class SearchResult:
    table: pd.DataFrame  # every simulated layout, ranked by the objective (best first)
    pruned: list[tuple[str, str]]  # (layout, the rule that rejected it)
    objective: str
    seed_target: str  # the seed's 60 % MFU / 80 % bandwidth question, answered


def layout_points(path: str | Path, num_gpus: int, fixed: list[tuple[str, object]]) -> tuple[list[Point], list]:
    """(the candidates that pass the scenario rules, the pruned ones with their rule)."""
    base = apply_overrides(read_scenario_file(path), fixed)
    cands = candidates(base, num_gpus, frozenset(key for key, _ in fixed))
    points = make_points(base, [("hardware.nodes", max(1, num_gpus // cands.gpus_per_node))], cands.combos)
    keep = [p for p in points if not p.error]
    pruned = [(p.label, p.error) for p in points if p.error]
    return keep, pruned


SHORT = {"parallel.tp_size": "TP", "parallel.ep_size": "EP", "parallel.pp_size": "PP", "parallel.vpp_size": "VPP",
         "pipeline.chunks": "chunks ", "training.micro_batch_size": "MBS ", "network.all_to_all": "",
         "workload.two_batch_overlap": "TBO "}


SHORT_ORDER = ("parallel.tp_size", "parallel.ep_size", "parallel.pp_size", "parallel.vpp_size", "network.all_to_all",
               "pipeline.chunks", "training.micro_batch_size", "workload.two_batch_overlap")


def layout_name(coords) -> str:
    """'TP1 EP8 PP2 VPP2 hierarchical chunks 2' from a candidate's ((key, value), ...)."""
    parts = []
    for key, value in coords:
        if key == "parallel.pp_schedule":
            continue
        if key == "workload.two_batch_overlap":
            value = "on" if value else "off"
        elif isinstance(value, float) and value.is_integer():  # a table column with gaps holds floats
            value = int(value)
        parts.append(f"{SHORT.get(key, key + '=')}{value}")
    return " ".join(parts)


def bandwidth_of(row) -> float:
    """The busy-time utilisation of the link class that carries the EP traffic: IB across nodes, else NVLink."""
    return float(row["ib_util"]) if row.get("ib_util", 0.0) > 0 else float(row.get("nvlink_util", 0.0))


def rank(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    column, larger = OBJECTIVES[objective]
    ok = table[table.status == "ok"].copy()
    if column not in ok:
        raise ScenarioError("--objective", objective, f"needs {column} in the summary (itl: workload.mode=decode)")
    ok["bandwidth_util"] = [bandwidth_of(r) for _, r in ok.iterrows()]
    ok["layout"] = [layout_name([(k, r[k]) for k in SHORT_ORDER if k in r and pd.notna(r[k])]) for _, r in ok.iterrows()]
    return ok.sort_values([column, "label"], ascending=[not larger, True], kind="stable").reset_index(drop=True)


def seed_target(ranked: pd.DataFrame) -> str:
    """Which layout reaches 60 % MFU and 80 % bandwidth utilisation (seed), if any."""
    hit = ranked[(ranked.mfu >= SEED_MFU) & (ranked.bandwidth_util >= SEED_BANDWIDTH)]
    if len(hit):
        best = hit.sort_values("mfu", ascending=False).iloc[0]
        return (f"{len(hit)} layout(s) reach the seed's target of {SEED_MFU:.0%} MFU and {SEED_BANDWIDTH:.0%} "
                f"bandwidth utilisation; the best: {best.layout} ({best.mfu:.1%} MFU, {best.bandwidth_util:.1%})")
    if ranked.empty:
        return "no layout was simulated"
    m, b = ranked.loc[ranked.mfu.idxmax()], ranked.loc[ranked.bandwidth_util.idxmax()]
    return (f"no layout reaches the seed's target of {SEED_MFU:.0%} MFU with {SEED_BANDWIDTH:.0%} bandwidth "
            f"utilisation on this hardware; the highest MFU is {m.mfu:.1%} ({m.layout}, bandwidth {m.bandwidth_util:.1%}), "
            f"the highest bandwidth utilisation {b.bandwidth_util:.1%} ({b.layout}, MFU {b.mfu:.1%})")


def pareto_front(values: np.ndarray, costs: np.ndarray, larger: bool) -> np.ndarray:
    """Mask of the points no other point beats on both the objective and the memory cost."""
    v = values if larger else -values
    front = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        better = (v >= v[i]) & (costs <= costs[i]) & ((v > v[i]) | (costs < costs[i]))
        front[i] = not better.any()
    return front


def run_search(path: str | Path, num_gpus: int, objective: str, fixed: list[tuple[str, object]], out_dir: Path,
               jobs: int = 1, max_gpu_memory_gb: float | None = None, max_points: int = DEFAULT_MAX_POINTS,
               check=None) -> SearchResult:
    """Enumerate, prune (rules, memory, --max-gpu-memory-gb), simulate the rest through the sweep
    engine into out_dir (cached: a rerun reuses the points on disk) and rank by `objective`.
    `check(scenario)` may refuse a point (the run budget) with a ScenarioError."""
    from simulator.studies.sweep import run_sweep

    if objective not in OBJECTIVES:
        raise ScenarioError("--objective", objective, f"valid: {', '.join(OBJECTIVES)}")
    points, pruned = layout_points(path, num_gpus, fixed)
    scenarios = [build_scenario(p.data) for p in points]  # once per layout, for every check below
    if objective == "itl" and scenarios and scenarios[0].workload.mode != "decode":
        raise ScenarioError("--objective", objective, "inter-token latency needs workload.mode=decode")
    if max_gpu_memory_gb is not None:
        limit = max_gpu_memory_gb * GIB
        kept = []
        for p, scenario in zip(points, scenarios):
            peak = memory_per_gpu(scenario).before_buffers
            if peak > limit:
                pruned.append((p.label, f"--max-gpu-memory-gb: {peak / GIB:.1f} GiB before buffers > {max_gpu_memory_gb:g}"))
            else:
                kept.append((p, scenario))
        points, scenarios = [p for p, _ in kept], [sc for _, sc in kept]
    if not points:
        raise ScenarioError("--gpus", num_gpus, f"no layout of the scenario fits {num_gpus} GPUs; the first rejection: "
                            f"{pruned[0][1] if pruned else 'none'}")
    if len(points) > max_points:
        raise ScenarioError("--max-points", max_points, f"{len(points)} layouts pass the rules; raise --max-points "
                            "or fix more of the layout with --set")
    if check is not None:
        for scenario in scenarios:
            check(scenario)
    points = [Point(i, p.coords, p.data, p.key, p.resolved, p.error) for i, p in enumerate(points)]
    result = run_sweep(points, out_dir, "local", jobs)
    ranked = rank(result.table, objective)
    return SearchResult(ranked, pruned, objective, seed_target(ranked))
