"""The work estimate (simulator/scenario/budget.py) against measured runs: events, peak memory and
wall time of each reference scenario and of sizes of the tiny test scenario, each run in its own
interpreter (peak resident memory is the process's). Prints one row per run and the worst ratios.

    python benchmarks/budget_check.py [NAME ...]      # about 2 minutes for all on the 2-core VM
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.scenario import build_scenario, load_scenario  # noqa: E402
from simulator.scenario.budget import estimate  # noqa: E402
from tests.conftest import tiny_dict  # noqa: E402

REFERENCE = ["single-node-ep8", "skewed-zipf", "mixtral-8x7b-prefill", "default", "mixtral-8x7b-tp2-pp2",
             "deepseek-v3-dualpipe-pp4", "large-ep256"]
TINY = {
    "tiny": {}, "tiny-t8192": {"workload": {"tokens_per_gpu": 8192}},
    "tiny-ep64": {"hardware": {"nodes": 16}, "parallel": {"ep_size": 64}},
    "tiny-n16-ep8": {"hardware": {"nodes": 16}},
    "tiny-prefill": {"workload": {"mode": "prefill"}},
    "tiny-c8": {"pipeline": {"chunks": 8}}, "tiny-mb16": {"workload": {"micro_batches": 16}},
    "tiny-pp2": {"model": {"num_layers": 8}, "parallel": {"ep_size": 4, "pp_size": 2}, "workload": {"micro_batches": 8}},
    "tiny-zipf-direct": {"routing": {"distribution": "zipf", "zipf_alpha": 1.2}, "network": {"all_to_all": "direct"}},
    "tiny-low-latency": {"network": {"all_to_all": "low_latency", "comm_sms": 0}},
    "tiny-full-recompute": {"training": {"recompute": "full"}},
    "tiny-moe-layer": {"workload": {"scope": "moe_layer", "mode": "prefill", "tokens_per_gpu": 4096}},
    "tiny-ep128-t64": {"hardware": {"nodes": 32}, "parallel": {"ep_size": 128}, "workload": {"tokens_per_gpu": 64}},
}

MEASURE = """
import json, sys, time
from simulator.engine.run import Run
from simulator.extension import sample_micro_batches, with_micro_batches
from simulator.scenario import build_scenario, load_scenario
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
s = build_scenario(spec["data"]) if "data" in spec else load_scenario(spec["path"])
sample = sample_micro_batches(s)
events = sum(Run(r).simulate().num_events for r in ([s] if sample is None else [with_micro_batches(s, m) for m in sample]))
# VmHWM, not ru_maxrss: a forked child inherits its parent's maxrss across exec (Linux), VmHWM is its own
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"events": events, "wall_s": time.perf_counter() - t0, "rss_bytes": peak * 1024}))
"""


def specs() -> dict:
    out = {name: {"path": str(ROOT / "scenarios" / f"{name}.yaml")} for name in REFERENCE}
    out.update({name: {"data": tiny_dict(name=name, **sections)} for name, sections in TINY.items()})
    return out


def main(names: list[str]) -> int:
    todo = specs()
    names = names or list(todo)
    print(f"{'run':26s} {'events est / measured':>30s} {'peak MB est / measured':>26s} {'wall s est / measured':>26s}")
    worst = {"events": [], "memory": [], "wall": []}
    for name in names:
        spec = todo[name]
        s = build_scenario(spec["data"]) if "data" in spec else load_scenario(spec["path"])
        est = estimate(s)
        got = json.loads(subprocess.run([sys.executable, "-c", MEASURE, json.dumps(spec)], capture_output=True,
                                        text=True, cwd=ROOT, check=True).stdout)
        ratios = (est.num_events / got["events"], est.peak_memory_bytes / got["rss_bytes"], est.wall_s / got["wall_s"])
        for key, r in zip(worst, ratios):
            worst[key].append(r)
        print(f"{name:26s} {est.num_events:>11,} / {got['events']:>9,} {ratios[0]:5.2f}x "
              f"{est.peak_memory_bytes / 1e6:>8.0f} / {got['rss_bytes'] / 1e6:>6.0f} {ratios[1]:5.2f}x "
              f"{est.wall_s:>8.2f} / {got['wall_s']:>6.2f} {ratios[2]:5.2f}x")
    for key, rs in worst.items():
        print(f"{key}: estimate / measured from {min(rs):.2f} to {max(rs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
