#!/usr/bin/env python3
"""Compute time split by kernel class: DeepSeek's training trace against epsim (issue 11).

The trace is deepseek-ai/profile-data's train.json (PyTorch profiler, H800, EP64, TP1, 4096-token
sequences, balanced routing): one DualPipe pair of chunks, the forward of one micro-batch beside the
backward (input and weight gradients) of another, 4 MoE layers each, no PP communication and no
optimizer step. Its GPU kernels are summed per epsim kernel class (gemm, attention, elementwise,
permute, quantisation, optimizer, other) by the name patterns in PATTERNS (first match wins).
Communication kernels (DeepEP's dpsk::ep::*, NCCL) are left out, and so are memcpy / memset
(profiler categories of their own). The non-communication kernels of every stream count: the main
compute stream, the side stream that runs weight-gradient GEMMs, and the FP8 casts the comm stream
runs before a dispatch; the per-stream totals are printed. Kernel durations are summed, so kernels
that overlap on different streams count in full (each is slowed by the other; the sum is the trace's
own per-kernel time).

epsim runs the validation case deepseek-v3-training-trace-ep64 (the same setting: 8 micro-batches of
4096 tokens per GPU, 4 MoE layers, DualPipe schedule) and reads compute_by_kernel_class_s (per GPU,
seconds, the whole run). Normalisation: with balanced routing every micro-batch does the same work,
so the trace's forward chunk + backward chunk is one micro-batch's forward + backward of the 4
layers. epsim's classes are divided by the number of micro-batches; its optimizer step (once per
step, absent from the trace) is left out of the comparison and reported per step.

Both are also split by phase: a trace kernel is forward or backward by the profiler annotation
(attn(F), mlp(B), mlp(W), ...) around its launch, an epsim interval by its op's phase. The reference
scenario (scenarios/default.yaml, on the seed's H100) is reported alone, per step and per
micro-batch. The trace is not in the repository: fetch train.json from deepseek-ai/profile-data.

    python benchmarks/trace_kernel_classes.py path/to/train.json   # [--out benchmarks/results/...md]
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = "deepseek-v3-training-trace-ep64"
CLASSES = ("gemm", "attention", "elementwise", "permute", "quantisation", "optimizer", "other")
COMM = re.compile(r"dpsk::ep::|nccl|deep_ep", re.IGNORECASE)
# (regex on the kernel name, class, what it catches); first match wins, so fused kernels go by their
# first pattern (SwiGLU fused with an FP8 cast counts as elementwise)
PATTERNS = [
    (r"swiglu", "elementwise", "SwiGLU forward / backward (also fused with its FP8 cast)"),
    (r"grouped_gemm::cuda::utils::transpose|batched_transpose", "quantisation",
     "FP8 operand transposes (uint8 data, for the dgrad / wgrad layouts)"),
    (r"GemmKernel|xmma_gemm|cublas", "gemm", "DeepSeek FP8 (grouped) GEMMs, cuBLAS GEMMs"),
    (r"flash::|fmha|flash_mla", "attention", "FlashAttention fwd / bwd and its pre/post-processing"),
    (r"cast_to_fp8|cast_and_transpose|cast_back", "quantisation", "FP8 quantise / dequantise casts"),
    (r"expand_to_fused|reduce_fused|get_fused_mapping|clean_and_count_expert|scatter_gather|permute",
     "permute", "token permute (expand) / un-permute (weighted reduce), their index maps, scatter / gather"),
    (r"layer_norm::|rms_?norm", "elementwise", "RMSNorm forward / backward"),
    (r"rotary", "elementwise", "rotary embedding"),
    (r"topk|sigmoid|softmax|aux_fi|unique_group_indices|cross_entropy", "elementwise",
     "router scores, group-limited top-k, aux-loss statistics"),
    (r"Functor(OnSelf)?_add|MulFunctor|DivFunctor|neg_kernel|masked_fill|CompareEq|div_floor|reduce_kernel|arange",
     "elementwise", "PyTorch pointwise ops and reductions"),
    (r"adam|multi_tensor_apply|optimizer", "optimizer", "optimizer update"),
    (r"direct_copy_kernel|_copy_tensor_kernel|FillFunctor", "other", "copies (contiguous, dtype), fills"),
    (r"Distribution", "other", "random number generation"),
]
COMPILED = [(re.compile(p), cls) for p, cls, _ in PATTERNS]


def classify(name: str) -> str | None:
    """The kernel's class, 'comm' for a communication kernel, None when no pattern matches."""
    if COMM.search(name):
        return "comm"
    return next((cls for rx, cls in COMPILED if rx.search(name)), None)


def short(name: str, width: int = 110) -> str:
    name = name.removeprefix("void ").split("(")[0]
    return name if len(name) <= width else name[:width - 3] + "..."


def load_trace(path: Path) -> tuple[list[dict], dict[int, str]]:
    """The kernel events, and each kernel's phase by its correlation id: forward or backward, from
    the user annotation (attn(F), mlp(B), dispatch(W), ...) that encloses its launch on the host."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = [e for e in (data["traceEvents"] if isinstance(data, dict) else data) if e.get("ph") == "X"]
    spans = sorted((e["ts"], e["ts"] + e["dur"], "forward" if e["name"].endswith("(F)") else "backward")
                   for e in events if e.get("cat") == "user_annotation" and re.search(r"\([FBW]\)$", e["name"]))
    phase = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            phase[e["args"]["correlation"]] = next((p for a, b, p in spans if a <= e["ts"] <= b), "unannotated")
    return [e for e in events if e.get("cat") == "kernel"], phase


def trace_split(kernels: list[dict], phase: dict[int, str]):
    """Per class ms; per (class, kernel name) [ms, calls]; unmatched names; per stream {kind: ms};
    per (phase, class) ms."""
    by_class = dict.fromkeys(CLASSES, 0.0)
    by_name = defaultdict(lambda: [0.0, 0])
    unmatched, streams, phases = set(), defaultdict(lambda: defaultdict(float)), defaultdict(float)
    for e in kernels:
        ms, cls, args = e["dur"] / 1e3, classify(e["name"]), e.get("args", {})
        stream = args.get("stream", e.get("tid"))
        if cls == "comm":
            streams[stream]["comm"] += ms
            continue
        if cls is None:
            unmatched.add(e["name"])
            cls = "other"
        streams[stream]["compute"] += ms
        by_class[cls] += ms
        by_name[cls, e["name"]][0] += ms
        by_name[cls, e["name"]][1] += 1
        phases[phase.get(args.get("correlation"), "unannotated"), cls] += ms
    return by_class, by_name, unmatched, streams, phases


def epsim_split(data: dict):
    """compute_by_kernel_class_s in ms over the run, micro-batches, summary, and per (phase, class)
    ms (the same split as compute_by_kernel_class, by the phase of each compute interval's op)."""
    from simulator.engine import Run
    from simulator.engine.gpu import COMPUTE
    from simulator.metrics import summarize
    from simulator.scenario import build_scenario

    s = build_scenario(data)
    r = Run(s).simulate()
    summary = summarize(r)
    ms = {cls: v * 1e3 for cls, v in summary["compute_by_kernel_class_s"].items()}
    phases = defaultdict(float)
    for iv in (iv for ivs in r.intervals for iv in ivs if iv.stream == COMPUTE):
        name = iv.op.op + ("_bwd" if iv.op.phase == "backward" else "")
        for cls, share in (r.kernel_classes or {}).get(name, {"other": 1.0}).items():
            phases[iv.op.phase, cls] += (iv.end_s - iv.start_s) * share * 1e3 / r.num_gpus
    return ms, s.workload.micro_batches, summary, phases


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def table(header: str, rows: list[str], align: str = "---:|") -> list[str]:
    return [header, "|---|" + align * (header.count("|") - 2), *rows, ""]


def comparison(tr, per_mb, streams, tr_ph, ep_ph, mbs, optimizer_ms) -> list[str]:
    t_tot, e_tot = sum(tr.values()), sum(per_mb.values())
    rows = [f"| {c} | {tr[c]:.2f} | {per_mb[c]:.2f} | {ratio(per_mb[c], tr[c])} |" for c in CLASSES]
    rows.append(f"| **total** | **{t_tot:.2f}** | **{e_tot:.2f}** | **{ratio(e_tot, t_tot)}** |")
    gaps = sorted(CLASSES, key=lambda c: -abs(per_mb[c] - tr[c]))[:3]
    out = [("Unit: one micro-batch's forward + backward (input and weight gradients) of the 4 MoE layers, "
            "per GPU, ms. The trace's chunk pair (forward of one micro-batch, backward of another, balanced "
            f"routing) is that unit; epsim's run of {mbs} micro-batches is divided by {mbs}. The optimizer "
            f"step (not in the trace) is left out: epsim {optimizer_ms:.2f} ms per step. Trace: kernel "
            "durations summed over all streams; communication kernels (DeepEP, NCCL) and memcpy / memset "
            "left out.\n"),
           *table("| class | trace ms | epsim ms | epsim/trace |", rows),
           "Largest gaps (epsim - trace): " + ", ".join(f"{c} {per_mb[c] - tr[c]:+.2f} ms" for c in gaps) + ".\n",
           ("Trace streams, kernel ms (the side stream's weight-gradient GEMMs run beside the main "
            "stream's kernels, so the sum exceeds the main stream's busy time):\n")]
    out += table("| stream | compute kernels | communication kernels |",
                 [f"| {st} | {k['compute']:.2f} | {k['comm']:.2f} |"
                  for st, k in sorted(streams.items(), key=lambda kv: -sum(kv[1].values()))])
    out.append("By phase (trace: the annotation around the launch, (F) forward, (B) and (W) backward; "
               "epsim: the op's phase), ms per micro-batch:\n")
    rows = []
    for c in (*CLASSES[:5], "other"):
        pairs = [(tr_ph[p, c], ep_ph[p, c] / mbs) for p in ("forward", "backward")]
        rows.append(f"| {c} | " + " | ".join(f"{t:.2f} | {e:.2f} | {ratio(e, t)}" for t, e in pairs) + " |")
    out += table("| class | trace fwd | epsim fwd | ratio | trace bwd | epsim bwd | ratio |", rows)
    loose = sum(v for (p, _), v in tr_ph.items() if p == "unannotated")
    if loose:
        out.append(f"Trace kernels launched outside the annotations: {loose:.2f} ms.\n")
    return out


def audit(tr, by_name, unmatched) -> list[str]:
    out = ["## Classification audit\n",
           (f"Patterns (regex on the kernel name, first match wins; `{COMM.pattern}` is communication and "
            "left out; no match: other):\n")]
    out += table("| pattern | class | catches |",
                 [f"| `{p.replace('|', chr(92) + '|')}` | {c} | {what} |" for p, c, what in PATTERNS], "---|")
    out.append("Top kernels per class (trace, ms over the chunk pair, calls):\n")
    for c in CLASSES:
        names = sorted(((v, n) for (k, n), v in by_name.items() if k == c), key=lambda x: -x[0][0])
        if names:
            out.append(f"**{c}** ({tr[c]:.2f} ms, {len(names)} kernel names)\n")
            out += [f"- {ms:.3f} ms x{calls} `{short(n)}`" + (" (unmatched)" if n in unmatched else "")
                    for (ms, calls), n in names[:8]]
            out.append("")
    left = sorted(unmatched, key=lambda n: -by_name["other", n][0])
    listed = ", ".join(f"`{short(n, 70)}` {by_name['other', n][0]:.3f} ms" for n in left[:10])
    out.append(f"Unmatched kernels (counted as other): {listed or 'none'}.")
    return out


def report(trace_path: Path) -> str:
    from simulator.scenario import read_scenario_file
    from simulator.studies.validation.harness import load_cases

    tr, by_name, unmatched, streams, tr_ph = trace_split(*load_trace(trace_path))
    case = next(c for c in load_cases() if c["id"] == CASE)
    ep, mbs, _, ep_ph = epsim_split(case["scenario"] | {"name": CASE})
    per_mb = {c: (0.0 if c == "optimizer" else v / mbs) for c, v in ep.items()}
    out = ["# Compute by kernel class: DeepSeek's training trace against epsim\n",
           (f"Generated by `benchmarks/trace_kernel_classes.py` from `{trace_path.name}` "
            f"(deepseek-ai/profile-data) and epsim's validation case `{CASE}`.\n"),
           *comparison(tr, per_mb, streams, tr_ph, ep_ph, mbs, ep["optimizer"])]
    default = read_scenario_file(ROOT / "scenarios" / "default.yaml")
    dm, dmbs, dsum, _ = epsim_split(default)
    d_tot = sum(dm.values())
    rows = [f"| {c} | {dm[c]:.2f} | {dm[c] / dmbs:.2f} | {dm[c] / d_tot:.1%} |" for c in CLASSES]
    rows.append(f"| **total** | **{d_tot:.2f}** | **{d_tot / dmbs:.2f}** | 100% |")
    out += [f"## Reference scenario `{default.get('name', 'default')}` (scenarios/default.yaml), epsim only\n",
            f"Step time {dsum['step_time_s'] * 1e3:.2f} ms, {dmbs} micro-batches; per GPU, ms.\n",
            *table("| class | per step | per micro-batch | share |", rows), *audit(tr, by_name, unmatched)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path, help="train.json (or .json.gz) from github.com/deepseek-ai/profile-data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trace_kernel_classes.md")
    args = ap.parse_args()
    text = report(args.trace)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
