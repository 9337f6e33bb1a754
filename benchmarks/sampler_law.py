#!/usr/bin/env python3
"""Does the compiled routing sampler (simulator/workload/kernels.py) draw the same law as the numpy
sampler it replaced? Issue 14's statistical check: over >= 8 seeds on >= 4 scenarios, the mean of
each statistic under the new sampler against the old one's, in units of the standard error of
their difference (|z| < 3 is within seed noise), and paired by seed (z paired: the mean of the
per-seed differences over its standard error; a seed fixes zipf's and dirichlet's law, so pairing
removes the law's own spread and is the sharper test there). Statistics: step time, load imbalance, distinct
GPUs and nodes per token, and the mean and spread of the per-(source, destination) token counts.

The old sampler is run from a checkout of the commit before the change:
    git worktree add --detach /tmp/epsim-ref e33e372   # the commit before the compiled sampler
    python benchmarks/sampler_law.py --reference /tmp/epsim-ref [--seeds 8] [--scenario NAME ...]
Each (tree, scenario, seed) runs in its own process. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ["default", "skewed-zipf", "single-node-ep8", "large-ep256", "deepseek-v3-decode-ep72"]
STATS = ["step_time_s", "load_imbalance", "gpus_per_token", "nodes_per_token", "pair_tokens_mean", "pair_tokens_std"]

PROBE = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from simulator.engine import Run
from simulator.metrics import summarize
from simulator.scenario import load_scenario
s = load_scenario(sys.argv[2], [("routing.seed", int(sys.argv[3]))])
run = Run(s)
summary = summarize(run.simulate())
traffic = run.workload.traffic
tokens = sum(int(t.pair_tokens.sum()) for t in traffic.values())
nodes = sum(int(t.node_tokens.sum()) for t in traffic.values())
sent = s.parallel.ep_size * s.workload.tokens_per_gpu * len({k[:3] for k in traffic})
first = traffic[min(traffic)].pair_tokens
print(json.dumps({"step_time_s": summary["step_time_s"], "load_imbalance": summary["load_imbalance"],
                  "gpus_per_token": tokens / sent, "nodes_per_token": nodes / sent,
                  "pair_tokens_mean": float(first.mean()), "pair_tokens_std": float(first.std())}))
'''


def probe(tree: Path, scenario: str, seed: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(ROOT / "scenarios" / f"{scenario}.yaml"),
                          str(seed)], capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="a checkout with the old sampler")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--scenario", nargs="*", default=SCENARIOS)
    args = ap.parse_args()
    print("| scenario | statistic | old mean | new mean | old sd | new sd | z | z paired |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for scenario in args.scenario:
        runs = {tree: [probe(path, scenario, seed) for seed in range(args.seeds)]
                for tree, path in (("old", args.reference), ("new", ROOT))}
        for stat in STATS:
            old, new = (np.array([r[stat] for r in runs[t]]) for t in ("old", "new"))
            se = np.sqrt(old.var(ddof=1) / len(old) + new.var(ddof=1) / len(new))
            z = (new.mean() - old.mean()) / se if se > 0 else (0.0 if new.mean() == old.mean() else np.inf)
            d = new - old
            se_d = d.std(ddof=1) / np.sqrt(len(d))
            zp = d.mean() / se_d if se_d > 0 else (0.0 if d.mean() == 0 else np.inf)
            worst = max(worst, abs(z), abs(zp))
            print(f"| {scenario} | {stat} | {old.mean():.6g} | {new.mean():.6g} | {old.std(ddof=1):.3g} | "
                  f"{new.std(ddof=1):.3g} | {z:+.2f} | {zp:+.2f} |", flush=True)
    print(f"\nlargest |z| {worst:.2f} over {len(args.scenario)} scenarios x {len(STATS)} statistics, "
          f"{args.seeds} seeds each (|z| < 3: within seed noise)")


if __name__ == "__main__":
    main()
