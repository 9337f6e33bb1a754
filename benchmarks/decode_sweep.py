#!/usr/bin/env python3
"""Decode throughput per GPU and inter-token latency of DeepSeek-V3 on H100 against the batch per
GPU and the EP size, with and without two-batch overlap; the knee where communication takes over.

Each point is scenarios/deepseek-v3-decode-ep72.yaml (LMSYS's setting: DP-attention, DeepEP
low-latency kernels, FP8, 2,000-token KV caches) at another batch_per_gpu and EP size: EP 16 and 32
place the 256 experts round-robin, EP 72 and 144 need EPLB's 32 redundant experts (288 slots).
EP 8 does not fit (the FP8 weights alone are 84 GB per GPU). A batch that does not fit the KV cache
is rejected by the memory rule and shown as such. Prints a table; writes decode_sweep.csv and
decode_sweep.png. Asserts nothing.

    python benchmarks/decode_sweep.py [--ep 16 32 72 144] [--batch 1 8 32 128 256 512] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.api import simulate_scenario  # noqa: E402
from simulator.errors import ScenarioError  # noqa: E402
from simulator.scenario import load_scenario  # noqa: E402

BASE = ROOT / "scenarios" / "deepseek-v3-decode-ep72.yaml"


def point(ep: int, batch: int, tbo: bool) -> dict:
    overrides = [("hardware.nodes", max(1, ep // 8)), ("parallel.ep_size", ep), ("workload.batch_per_gpu", batch),
                 ("workload.two_batch_overlap", tbo)]
    if 256 % ep == 0:
        overrides += [("placement.strategy", "round_robin"), ("placement.redundant_experts", 0)]
    row = {"ep": ep, "batch_per_gpu": batch, "two_batch_overlap": tbo}
    try:
        scenario = load_scenario(BASE, overrides)
    except ScenarioError as exc:
        return {**row, "rejected": f"{exc.key}: {exc.rule[:80]}"}
    t0 = time.perf_counter()
    summary = simulate_scenario(scenario)[0]
    serving = summary["serving"]
    return {**row, "rejected": "", "itl_ms": summary["itl_s"] * 1e3,
            "tokens_per_s_per_gpu": summary["tokens_per_s_per_gpu"],
            "compute_ms": summary["breakdown_s"]["compute"] * 1e3,
            "comm_in_flight_ms": serving["two_batch_overlap"]["comm_in_flight_s"] * 1e3,
            "exposed_comm_ms": summary["breakdown_s"]["exposed_comm"] * 1e3,
            "max_batch_per_gpu": serving["max_batch_per_gpu"], "wall_s": time.perf_counter() - t0}


def knees(table) -> dict[int, int | None]:
    """Per EP: the smallest batch (best of TBO on / off) whose communication in flight exceeds its compute."""
    out = {}
    ok = table[table.rejected == ""]
    for ep, rows in ok.groupby("ep"):
        best = rows.loc[rows.groupby("batch_per_gpu").tokens_per_s_per_gpu.idxmax()]
        over = best[best.comm_in_flight_ms > best.compute_ms]
        out[int(ep)] = int(over.batch_per_gpu.min()) if len(over) else None
    return out


def plot(table, knee: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table.rejected == ""]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ep, rows in ok.groupby("ep"):
        for tbo, style in ((True, "-"), (False, ":")):
            r = rows[rows.two_batch_overlap == tbo].sort_values("batch_per_gpu")
            if r.empty:
                continue
            label = f"EP {ep}{' TBO' if tbo else ''}"
            line, = axes[0].plot(r.batch_per_gpu, r.tokens_per_s_per_gpu, style, marker="o", label=label)
            axes[1].plot(r.batch_per_gpu, r.itl_ms, style, marker="o", color=line.get_color(), label=label)
            if tbo and knee.get(int(ep)) is not None:
                k = r[r.batch_per_gpu == knee[int(ep)]]
                axes[0].plot(k.batch_per_gpu, k.tokens_per_s_per_gpu, "kx", markersize=12, mew=2)
    for ax, ylabel in zip(axes, ("output tokens / s per GPU", "inter-token latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequences per GPU (batch_per_gpu)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.suptitle("DeepSeek-V3 decode on H100, 2,000-token KV, DeepEP LL (x: communication in flight exceeds compute)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--ep", type=int, nargs="+", default=[8, 16, 32, 72, 144])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128, 256, 512])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "decode-sweep")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ep in args.ep:
        for batch in args.batch:
            for tbo in (False, True):
                if tbo and batch % 2:
                    continue
                rows.append(point(ep, batch, tbo))
                r = rows[-1]
                print(f"EP {ep:>4} batch {batch:>4} TBO {'on ' if tbo else 'off'}: " + (
                    f"rejected ({r['rejected']})" if r["rejected"] else
                    f"ITL {r['itl_ms']:7.2f} ms, {r['tokens_per_s_per_gpu']:8.0f} tok/s/GPU, compute "
                    f"{r['compute_ms']:6.2f} ms, comm in flight {r['comm_in_flight_ms']:6.2f} ms "
                    f"({r['wall_s']:.0f} s)"), flush=True)
    table = pd.DataFrame(rows)
    knee = knees(table)
    table.to_csv(args.out / "decode_sweep.csv", index=False)
    plot(table, knee, args.out / "decode_sweep.png")
    print("\nknee (smallest batch whose communication in flight exceeds its compute, best of TBO on/off):")
    for ep, batch in knee.items():
        print(f"  EP {ep}: {batch if batch is not None else 'none in the sweep'}")
    print(f"\n{args.out / 'decode_sweep.csv'}\n{args.out / 'decode_sweep.png'}")


if __name__ == "__main__":
    main()
