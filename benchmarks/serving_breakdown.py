#!/usr/bin/env python3
"""Per-layer time by kernel category: epsim's serving cases against LMSYS's own breakdown (issue 13).

LMSYS's blog on SGLang's large-EP deployment of DeepSeek-V3 (lm-sys.github.io,
blog/2025-05-05-large-scale-ep.md) plots, per layer, the mean time of each kernel category of a
step on the compute stream ("Scaled Mean Time (ms) per Layer"; the categories add up to the
layer's share of the step: 61 x the decode "Overall" is the 91.9 ms step the validation case is
derived from). Four figures are used here, their bars read off the PNGs in the blog's repository
(public/images/blog/large_scale_ep/): to +-0.01 ms on the decode figures (axis 0-1.6 ms,
gridlines every 0.2) and +-0.3 ms on the prefill one (axis 0-50 ms, gridlines every 10). They are
readings of a chart, not published numbers, and nothing in epsim is fitted to them; they say
which term of a case's error is which.

  profile-decode.png        DeepSeek-V3 decode, 9 x 8 H100, EP 72, 256 sequences, two-batch overlap
                            ("SGLang"), beside DeepSeek's own profile (H800, EP 128, 128 sequences
                            of 4K with MTP: another setting, shown for reference)
  tbo-breakdown-decode.png  the same with and without two-batch overlap (256 sequences)
  profile-prefill.png       prefill, 4 x 8 H100, EP 32, 16,384 tokens per GPU of 4K prompts, TBO,
                            "SGLang + Fake Perfect EPLB" (the validation case) and DeepSeek's profile
                            (H800, the held-back deepseek-profile-prefill-ep32-h800 case)

epsim's side: the validation cases of simulator/studies/validation/cases.yaml, simulated whole;
each compute interval's time split by its op's kernel classes (RunRecord.kernel_classes, as
compute_by_kernel_class_s does), mean per GPU, divided by the 61 layers. Categories:
  MoE             the routed experts' op: its grouped GEMMs, SwiGLU and permutes (the permutes
                  are also printed on their own: a figure's MoE may leave them to its other kernels)
  GEMM            every other GEMM (attention projections, router, shared experts, dense FFNs, LM head)
  Attention core  the attention kernel (FlashMLA in decode, the FlashAttention-3 rate in prefill)
  Other           every other kernel (norms, rotary, residuals, router scores, FP8 casts, embedding)
  comm            decode: dispatch + combine as the compute stream sees them (epsim: exposed
                  communication; DeepEP's low-latency kernels run on the compute stream in SGLang,
                  their bars include their busy-waiting); prefill: the compute stream's bubble
                  (epsim: exposed communication + idle)
The decode figures' "Launch Overhead" is put beside epsim's "Other" (epsim counts a launch inside
each kernel's time, hardware kernel_launch_us).

A second table sets the decode cases at 8 .. 256 sequences per GPU (the blog's tbo-overall.png,
held-back cases of the validation set) against epsim's: the inter-token latency each implies
(sequences / output tokens per second per GPU) and what epsim leaves out of it, per step and per
layer and micro-batch (two with two-batch overlap, one without).

Prints the tables; asserts nothing.
    python benchmarks/serving_breakdown.py
"""
from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 61
CATEGORIES = ("comm", "MoE", "attention core", "GEMM", "other")

# Bars read off the figures (ms per layer). The decode "other" is Other Kernels + Launch Overhead.
FIGURES = {
    "lmsys-sglang-deepseek-v3-decode-ep72": {
        "figure": "profile-decode.png, SGLang (TBO, 256 sequences)",
        "overall": 1.49,
        "comm": 0.165 + 0.175, "MoE": 0.30, "attention core": 0.36, "GEMM": 0.29, "other": 0.135 + 0.05,
        "reference": ("DeepSeek profile (H800, EP 128, 128 x 4K, MTP)",
                      {"overall": 1.42, "comm": 0.17 + 0.07, "MoE": 0.245, "attention core": 0.50,
                       "GEMM": 0.29, "other": 0.08 + 0.045}),
    },
    "lmsys-sglang-deepseek-v3-decode-ep72-no-tbo": {
        "figure": "tbo-breakdown-decode.png, No TBO + 256 tok/device",
        "overall": 1.93,
        "comm": 0.395 + 0.705, "MoE": 0.235, "attention core": 0.28, "GEMM": 0.18, "other": 0.09 + 0.03,
    },
    "lmsys-sglang-deepseek-v3-prefill-ep32": {
        "figure": "profile-prefill.png, SGLang + Fake Perfect EPLB",
        "overall": 36.3,
        "comm": 1.2, "MoE": 12.2, "attention core": 6.5, "GEMM": 9.5, "other": 6.7,
    },
    "deepseek-profile-prefill-ep32-h800": {
        "figure": "profile-prefill.png, DeepSeek Profile (H800)",
        "overall": 34.6,
        "comm": 2.4, "MoE": 12.4, "attention core": 5.6, "GEMM": 8.4, "other": 5.1,
    },
}


def epsim_per_layer(case: dict) -> tuple[dict[str, float], float]:
    """(ms per layer in each category, step ms) for a validation case, simulated whole."""
    from simulator.engine import Run
    from simulator.engine.gpu import COMPUTE
    from simulator.metrics import summarize
    from simulator.scenario import build_scenario

    s = build_scenario({"name": case["id"], **copy.deepcopy(case["scenario"])})
    r = Run(s).simulate()
    summary = summarize(r)
    ms = defaultdict(float)
    for iv in (iv for ivs in r.intervals for iv in ivs if iv.stream == COMPUTE):
        name = iv.op.op + ("_bwd" if iv.op.phase == "backward" else "")
        for cls, share in (r.kernel_classes or {}).get(name, {"other": 1.0}).items():
            t = (iv.end_s - iv.start_s) * share * 1e3 / r.num_gpus / LAYERS
            if iv.op.op == "experts":
                ms["MoE"] += t
                if cls == "permute":
                    ms["MoE permutes"] += t
            elif cls == "gemm":
                ms["GEMM"] += t
            elif cls == "attention":
                ms["attention core"] += t
            else:
                ms["other"] += t
    b = summary["breakdown_s"]
    ms["comm"] = (b["exposed_comm"] + b["idle"]) * 1e3 / LAYERS
    return dict(ms), r.step_time_s * 1e3


def table(case_id: str, ours: dict, step_ms: float) -> list[str]:
    fig = FIGURES[case_id]
    lines = [f"### {case_id}", "", f"figure: {fig['figure']}", "",
             "| category | epsim ms/layer | figure ms/layer | epsim - figure | ratio |", "|---|---:|---:|---:|---:|"]
    for cat in CATEGORIES:
        a, b = ours.get(cat, 0.0), fig[cat]
        lines.append(f"| {cat} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {a / b:.2f} |")
    total = sum(ours.get(c, 0.0) for c in CATEGORIES)
    read = sum(fig[c] for c in CATEGORIES)
    lines.append(f"| sum | {total:.3f} | {read:.3f} | {total - read:+.3f} | {total / read:.2f} |")
    lines.append(f"| overall (figure's bar; epsim step / {LAYERS}) | {step_ms / LAYERS:.3f} | {fig['overall']:.3f} | "
                 f"{step_ms / LAYERS - fig['overall']:+.3f} | {step_ms / LAYERS / fig['overall']:.2f} |")
    if ours.get("MoE permutes"):
        lines += ["", f"of epsim's MoE, the routed experts' permute / un-permute kernels: {ours['MoE permutes']:.3f} ms per "
                  "layer (the figure's categories do not say whether its MoE or its other kernels hold them)"]
    if "reference" in fig:
        label, ref = fig["reference"]
        lines += ["", f"{label}, for reference: " + ", ".join(f"{c} {ref[c]:.3f}" for c in ("overall",) + CATEGORIES)]
    return lines + [""]


DECODE = "lmsys-sglang-deepseek-v3-decode-ep72"
BATCHES = (256, 128, 64, 32, 8)


def decode_batches(cases: dict) -> list[str]:
    """Published and predicted ITL of the decode cases by batch, and the time epsim leaves out."""
    from simulator.scenario import build_scenario
    from simulator.studies.validation.harness import run_case

    lines = ["### decode by batch per GPU (EP 72): what epsim leaves out of the inter-token latency", "",
             "| sequences / GPU | TBO | published ITL ms | epsim ITL ms | missing ms / step | "
             "missing us / (layer x micro-batch) |", "|---:|---|---:|---:|---:|---:|"]
    for batch in BATCHES:
        for tbo in (True, False):
            case_id = DECODE + (f"-batch{batch}" if batch != 256 else "") + ("" if tbo else "-no-tbo")
            case = cases[case_id]
            [row] = run_case(case)
            per_node = build_scenario({"name": case_id, **copy.deepcopy(case["scenario"])}).cluster.gpus_per_node
            published, predicted = (batch * per_node / v * 1e3 for v in (row.published, row.predicted))
            missing = published - predicted
            passes = LAYERS * (2 if tbo else 1)
            lines.append(f"| {batch} | {'on' if tbo else 'off'} | {published:.1f} | {predicted:.1f} | {missing:+.1f} | "
                         f"{missing * 1e3 / passes:+.0f} |")
    return lines + [""]


def main() -> None:
    cases = {c["id"]: c for c in yaml.safe_load((ROOT / "simulator/studies/validation/cases.yaml").read_text())["cases"]}
    out = []
    for case_id in FIGURES:
        ours, step_ms = epsim_per_layer(cases[case_id])
        out += table(case_id, ours, step_ms)
    out += decode_batches(cases)
    print("\n".join(out))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
