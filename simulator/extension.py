"""A pipeline step of many micro-batches from two shorter ones, by the schedule's structure.

Once every stage is in its steady state (1F1B, interleaved and DualPipe all reach one after their
warm-up; a single stage accumulating gradients, or pairing a forward with the previous backward,
after its first micro-batch), each further micro-batch (DualPipe: pair of micro-batches; interleaved: group of p)
adds the same work to every stage, while the warm-up, cool-down and the update (gradient sync,
optimizer) do not change. So the step is linear in the micro-batches past the warm-up: epsim
simulates two steps of m1 < m2 micro-batches whole and extends the additive quantities (step
time, its breakdown, calls, bytes carried) linearly to m. Per-call means, the bubble and the
load imbalance come from the m2 run. tests/test_extension.py checks the extension against whole
simulations.
"""
from __future__ import annotations

from dataclasses import replace

from simulator.metrics import gemm_dtype_peak
from simulator.scenario.memory import memory_per_gpu, stage_layers

STEADY_MARGIN = 2  # steady-state repeats simulated past the warm-up
SLOPE_SPAN = 4  # repeats between the two runs: the slope averages over that many (routing varies)
# auto: extend when GPUs x micro-batches x layers per rank pass this (about a minute on one core)
AUTO_WORK = 20_000


def sample_micro_batches(s) -> tuple[int, int] | None:
    """(m1, m2) to simulate instead of the scenario's m, or None to simulate it whole."""
    par, m, mode = s.parallel, s.workload.micro_batches, s.workload.extend_micro_batches
    if s.workload.mode != "train" or mode == "never":
        return None
    # one stage: gradient accumulation (sequential) and the paired forward / backward (dualpipe)
    # repeat micro-batch by micro-batch; lockstep runs every micro-batch side by side, no repeat
    if par.pp_size == 1 and s.pipeline.schedule not in ("sequential", "dualpipe"):
        return None
    layers = max(sum(len(c) for c in stage_layers(s, r)) for r in range(par.pp_size))
    if mode == "auto" and s.num_gpus * m * layers <= AUTO_WORK:
        return None
    p = par.pp_size
    name = par.pp_schedule if p > 1 else "1f1b"  # one stage: a micro-batch's forward, then its backward
    step = {"interleaved": p, "dualpipe": 2}.get(name, 1)  # the schedule's repeat unit
    first = {"interleaved": 2 * p, "dualpipe": 2 * p}.get(name, p)  # warm-up done
    m1 = first + STEADY_MARGIN * step
    m2 = m1 + SLOPE_SPAN * step
    if m <= m2 + step:  # nothing to gain
        return None
    return m1, m2


def with_micro_batches(s, m: int):
    return replace(s, workload=s.workload.model_copy(update={"micro_batches": m}))


def _extend(a: float, b: float, m1: int, m2: int, m: int) -> float:
    return b + (b - a) * (m - m2) / (m2 - m1)


def extend_summary(full, one: dict, two: dict, m1: int, m2: int) -> dict:
    """The summary of `full` (m micro-batches) from the summaries of its m1- and m2-micro-batch runs."""
    m = full.workload.micro_batches
    out = dict(two)
    step = _extend(one["step_time_s"], two["step_time_s"], m1, m2, m)
    flop = two["model_flop_per_step"] * m / m2
    tokens = two["tokens_per_s"] * two["step_time_s"] * m / m2
    g = two["num_gpus"]
    peak = full.cluster.gpu.peak_bf16_flop_per_s
    out.update({
        "step_time_s": step,
        "model_flop_per_step": flop,
        "mfu": flop / (step * g * peak),
        "mfu_vs_gemm_dtype_peak": flop / (step * g * gemm_dtype_peak(full)),
        "model_tflops_per_gpu": flop / step / g / 1e12,
        "tokens_per_s": tokens / step,
        "tokens_per_s_per_gpu": tokens / step / g,
        "breakdown_s": {k: _extend(one["breakdown_s"][k], v, m1, m2, m) for k, v in two["breakdown_s"].items()},
        "compute_by_kernel_class_s": {k: _extend(one["compute_by_kernel_class_s"][k], v, m1, m2, m)
                                      for k, v in two["compute_by_kernel_class_s"].items()},
        "pipeline_bubble_fraction": sum(two["pipeline_bubble_s"]) / len(two["pipeline_bubble_s"]) / step,
        "bandwidth_utilization_step": {
            cls: _extend(one["bandwidth_utilization_step"][cls] * one["step_time_s"], u * two["step_time_s"], m1, m2, m)
            / step for cls, u in two["bandwidth_utilization_step"].items()},
        "tokens_dropped": {**two["tokens_dropped"], "copies": round(_extend(
            one["tokens_dropped"]["copies"], two["tokens_dropped"]["copies"], m1, m2, m))},
        "host": {**two["host"], **{k: _extend(one["host"][k], two["host"][k], m1, m2, m)
                                   for k in ("launches_per_gpu", "busy_s", "busy_max_s", "sync_wait_s")},
                 "busy_fraction": _extend(one["host"]["busy_max_s"], two["host"]["busy_max_s"], m1, m2, m) / step},
        "collectives": {kind: {**c, "count": round(_extend(one["collectives"].get(kind, {}).get("count", 0),
                                                            c["count"], m1, m2, m))}
                        for kind, c in two["collectives"].items()},
    })
    out["provenance"] = {**two["provenance"], "simulated": (
        f"{m1} and {m2} of the step's {m} micro-batches, whole; step time, its breakdown, calls and bytes "
        f"extended linearly in micro-batches past the warm-up (the schedule's steady state); per-call means, "
        f"bubble and load imbalance from the {m2}-micro-batch run")}
    out["memory_per_gpu"] = memory_per_gpu(full, buffers=two["memory_per_gpu"]["buffers"]).as_dict()
    return out
