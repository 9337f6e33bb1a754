"""A real single-process torch MoE layer timed on this CPU, next to epsim's prediction on cpu-local.

    flock /tmp/epsim-bench.lock python benchmarks/real_moe_check.py [--calibration FILE] [--reps N]

The layer is written independently of the calibration benchmark, with the fused gate+up weight
([hidden, 2 x intermediate]) that vLLM, Megatron and DeepSeek's inference code use: router GEMM,
softmax, top-k and renormalised weights, permutation by expert, per-expert SwiGLU FFNs, weighted
combine. Skewed configurations add a Zipf bias to the
router logits. epsim predicts the same layer as `scope: moe_layer` on one "GPU" of `cpu-local`, with
its own routing of the same distribution; the compute model is also evaluated on the real layer's
own tokens per expert (same routing, compute model only). Target: within 15 % each.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ZIPF_ALPHA = 1.2  # the same skew as epsim's routing.zipf_alpha below

# (name, hidden, intermediate, experts, top_k, tokens, routing)
CONFIGS = (
    ("small-uniform", 512, 1024, 8, 2, 2048, "uniform"),
    ("wide-top4", 1024, 512, 16, 4, 1024, "uniform"),
    ("deep-skewed", 1536, 384, 32, 4, 2048, "zipf"),
    ("mixtral-like-skewed", 512, 1792, 8, 2, 1024, "zipf"),
)


class MoELayer:
    """Router + top-k + permutation + per-expert SwiGLU + weighted combine, in torch."""

    def __init__(self, hidden: int, intermediate: int, experts: int, top_k: int, routing: str, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.top_k = top_k
        self.router = torch.randn(hidden, experts, generator=g) * hidden ** -0.5
        self.bias = (torch.zeros(experts) if routing == "uniform"
                     else -ZIPF_ALPHA * torch.log1p(torch.arange(experts, dtype=torch.float32)))
        self.w_gate_up = torch.randn(experts, hidden, 2 * intermediate, generator=g) * hidden ** -0.5
        self.w_down = torch.randn(experts, intermediate, hidden, generator=g) * intermediate ** -0.5

    def route(self, x):
        import torch

        probs = torch.softmax(x @ self.router + self.bias, dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        return experts, weights / weights.sum(-1, keepdim=True)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        experts, weights = self.route(x)
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.w_gate_up.shape[0]).tolist()
        src = order // self.top_k
        xs = x.index_select(0, src)
        ys = torch.empty_like(xs)
        start = 0
        for e, count in enumerate(counts):
            if count:
                gate, up = (xs[start:start + count] @ self.w_gate_up[e]).chunk(2, dim=-1)
                ys[start:start + count] = (F.silu(gate) * up) @ self.w_down[e]
                start += count
        ys = ys * weights.reshape(-1)[order].unsqueeze(1)
        return torch.zeros_like(x).index_add_(0, src, ys)


def time_layer(layer: MoELayer, x, reps: int) -> dict:
    """The calibration's timing harness: warm-ups, medians, rounds repeated while contended."""
    import torch

    from hardware.calibration import time_call

    with torch.inference_mode():
        return time_call(lambda: layer(x), "cpu", warmup=2, reps=reps)


def scenario_dict(name: str, hidden: int, intermediate: int, experts: int, top_k: int, tokens: int, routing: str,
                  calibration: str) -> dict:
    return {
        "name": f"real-check-{name}",
        "hardware": {"preset": "cpu-local", "nodes": 1, "gpus_per_node": 1, "calibration": calibration},
        "model": {"preset": "tiny-moe", "hidden_size": hidden, "moe_intermediate_size": intermediate,
                  "num_experts": experts, "top_k": top_k, "num_shared_experts": 0},
        "parallel": {"ep_size": 1},
        "workload": {"mode": "prefill", "scope": "moe_layer", "tokens_per_gpu": tokens, "micro_batches": 1,
                     "gemm_dtype": "fp32"},
        "routing": {"distribution": routing, "zipf_alpha": ZIPF_ALPHA, "seed": 0},
        "network": {"all_to_all": "direct", "comm_sms": 0},
        "pipeline": {"overlap": "none", "chunks": 1},
    }


def check(config: tuple, calibration: str, reps: int) -> dict:
    """Measure one configuration and predict it two ways; returns the row of the table."""
    import torch

    from hardware.calibrated import compute_model
    from simulator.api import run_scenario
    from simulator.scenario import build_scenario

    name, hidden, intermediate, experts, top_k, tokens, routing = config
    layer = MoELayer(hidden, intermediate, experts, top_k, routing)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(1))
    timing = time_layer(layer, x, reps)
    measured = timing["median_s"]
    scenario = build_scenario(scenario_dict(*config, calibration))
    summary, _ = run_scenario(scenario)
    model = compute_model(scenario.cluster.gpu, "fp32", scenario.calibration_path)
    counts = np.bincount(layer.route(x)[0].reshape(-1).numpy(), minlength=experts)
    same_routing = model.gemm_s(tokens, experts, hidden) + model.expert_ffn_s(counts, hidden, intermediate)
    return {"config": name, "measured_s": measured, "epsim_s": summary["step_time_s"], "same_routing_s": same_routing,
            "error": summary["step_time_s"] / measured - 1.0, "same_routing_error": same_routing / measured - 1.0,
            "others_cpu_share": timing["others_cpu_share"], "out_of_range": summary["provenance"]["compute_model"].get("out_of_range", [])}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", default="cpu-local")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, calibration {args.calibration}")
    print(f"{'config':<22}{'h':>6}{'I':>6}{'E':>4}{'k':>3}{'T':>6} {'routing':<8}"
          f"{'measured':>10}{'epsim':>10}{'err':>8}{'same-route':>12}{'err':>8}{'others':>8}")
    worst = 0.0
    for config in CONFIGS:
        row = check(config, args.calibration, args.reps)
        worst = max(worst, abs(row["error"]))
        print(f"{config[0]:<22}{config[1]:>6}{config[2]:>6}{config[3]:>4}{config[4]:>3}{config[5]:>6} {config[6]:<8}"
              f"{row['measured_s'] * 1e3:>8.1f}ms{row['epsim_s'] * 1e3:>8.1f}ms{row['error']:>+8.1%}"
              f"{row['same_routing_s'] * 1e3:>10.1f}ms{row['same_routing_error']:>+8.1%}{row['others_cpu_share']:>8.0%}"
              + (f"  out of range: {row['out_of_range']}" if row["out_of_range"] else ""))
    print(f"worst |error| {worst:.1%} (target <= 15 %); 'others': CPU share other processes took while timing")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
