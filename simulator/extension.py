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

A whole model's step from two with fewer MoE layers (`workload.extend_layers: always`, opt-in, not
exact): past the first MoE layers each further MoE layer adds the same work in expectation (its
forward, backward, dispatch, combine, gradients and optimizer share), while the dense layers,
embedding and LM head stay. epsim simulates the model with the dense layers and LAYER_SAMPLE MoE
layers, whole, and extends the same additive quantities linearly in MoE layers. The per-layer
increment is estimated from the layers simulated (their own routing draws), so the result is a
sample estimate, not the whole model's draw: benchmarks/scale.py and benchmarks/layer_extension.py
measure it against whole simulations (+0.0 to +1.2 % on uniform and balanced routing); skewed laws,
whose every layer draws its own hot experts, are refused (simulator/scenario/rules.py).
"""
from __future__ import annotations

from dataclasses import replace

from simulator.metrics import flop_per_token, gemm_dtype_peak
from simulator.scenario.memory import local_params, memory_per_gpu, stage_layers

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


def _extend_additive(one: dict, two: dict, f, step: float) -> dict:
    """The summary fields that add up over the repeats, extended by f(value in one, value in two);
    step: the extended step time (the utilisation and the host's busy fraction are over it)."""
    out = {
        "step_time_s": step,
        "breakdown_s": _non_negative({k: f(one["breakdown_s"][k], v) for k, v in two["breakdown_s"].items()}, step),
        "compute_by_kernel_class_s": {k: f(one["compute_by_kernel_class_s"][k], v)
                                      for k, v in two["compute_by_kernel_class_s"].items()},
        "bandwidth_utilization_step": {
            cls: f(one["bandwidth_utilization_step"][cls] * one["step_time_s"], u * two["step_time_s"]) / step
            for cls, u in two["bandwidth_utilization_step"].items()},
        "tokens_dropped": {**two["tokens_dropped"], "copies": round(f(
            one["tokens_dropped"]["copies"], two["tokens_dropped"]["copies"]))},
        "host": {**two["host"], **{k: f(one["host"][k], two["host"][k])
                                   for k in ("launches_per_gpu", "busy_s", "busy_max_s", "sync_wait_s")},
                 "busy_fraction": f(one["host"]["busy_max_s"], two["host"]["busy_max_s"]) / step},
        "collectives": {kind: {**c, "count": round(f(one["collectives"].get(kind, {}).get("count", 0), c["count"]))}
                        for kind, c in two["collectives"].items()},
        "pipeline_bubble_fraction": sum(two["pipeline_bubble_s"]) / len(two["pipeline_bubble_s"]) / step,
    }
    return out


def _non_negative(parts: dict, step: float) -> dict:
    """A breakdown extended term by term, with a term the extension took below 0 (an idle time of
    a few microseconds shrinking between the runs) at 0 and the largest term taking up the rest, so
    the parts still add up to the step."""
    if min(parts.values()) >= 0:
        return parts
    out = {k: max(v, 0.0) for k, v in parts.items()}
    largest = max(out, key=out.get)
    out[largest] = step - sum(v for k, v in out.items() if k != largest)
    return out


def _throughput(full, flop: float, tokens_per_step: float, step: float) -> dict:
    g = full.num_gpus
    return {"model_flop_per_step": flop,
            "mfu": flop / (step * g * full.cluster.gpu.peak_bf16_flop_per_s),
            "mfu_vs_gemm_dtype_peak": flop / (step * g * gemm_dtype_peak(full)),
            "model_tflops_per_gpu": flop / step / g / 1e12,
            "tokens_per_s": tokens_per_step / step,
            "tokens_per_s_per_gpu": tokens_per_step / step / g}


def extend_summary(full, one: dict, two: dict, m1: int, m2: int) -> dict:
    """The summary of `full` (m micro-batches) from the summaries of its m1- and m2-micro-batch runs."""
    m = full.workload.micro_batches
    out = dict(two)
    step = _extend(one["step_time_s"], two["step_time_s"], m1, m2, m)
    out.update(_extend_additive(one, two, lambda a, b: _extend(a, b, m1, m2, m), step))
    out.update(_throughput(full, two["model_flop_per_step"] * m / m2,
                           two["tokens_per_s"] * two["step_time_s"] * m / m2, step))
    out["provenance"] = {**two["provenance"], "simulated": (
        f"{m1} and {m2} of the step's {m} micro-batches, whole; step time, its breakdown, calls and bytes "
        f"extended linearly in micro-batches past the warm-up (the schedule's steady state); per-call means, "
        f"bubble and load imbalance from the {m2}-micro-batch run")}
    out["memory_per_gpu"] = memory_per_gpu(full, buffers=two["memory_per_gpu"]["buffers"]).as_dict()
    return out


LAYER_SAMPLE = (2, 4)  # MoE layers of the two shorter models a layer extension simulates


def sample_layers(s) -> tuple[int, int] | None:
    """(n1, n2) MoE layers to simulate instead of the model's (workload.extend_layers: always), or
    None to simulate it whole: not asked, nothing to gain, or the shorter models would batch their
    tokens differently (the all-to-all buffers they have room for differ from the whole model's)."""
    if s.workload.extend_layers != "always" or s.workload.scope != "model":
        return None
    n1, n2 = LAYER_SAMPLE
    if s.model.num_moe_layers <= n2 + 1:
        return None
    from simulator.workload.build import batch_limit  # build reads this module's package

    limit = batch_limit(s, s.pipeline.chunks)
    if any(batch_limit(with_moe_layers(s, n), s.pipeline.chunks) != limit for n in (n1, n2)):
        return None
    return n1, n2


def with_moe_layers(s, n: int):
    """The scenario with n MoE layers after its dense ones (the embedding and LM head kept)."""
    return replace(s, model=replace(s.model, num_layers=s.model.num_dense_layers + n))


def extend_layers_summary(full, one: dict, two: dict, n1: int, n2: int) -> dict:
    """The summary of `full` (n MoE layers) from those of its n1- and n2-MoE-layer models."""
    n = full.model.num_moe_layers
    f = lambda a, b: _extend(a, b, n1, n2, n)  # noqa: E731
    out = dict(two)
    step = f(one["step_time_s"], two["step_time_s"])
    out.update(_extend_additive(one, two, f, step))
    out.update(_throughput(full, f(one["model_flop_per_step"], two["model_flop_per_step"]),
                           two["tokens_per_s"] * two["step_time_s"], step))
    out["model_flop_per_token_forward"] = flop_per_token(full)
    link = two["max_link_load"]
    out["max_link_load"] = {**link, **{k: f(one["max_link_load"][k], link[k]) for k in ("busy_s", "bytes")}}
    if "tokens_ungated" in two:
        out["tokens_ungated"] = {**two["tokens_ungated"], "copies": round(
            f(one["tokens_ungated"]["copies"], two["tokens_ungated"]["copies"]))}
    if "serving" in two:  # the per-node rate, latencies and what two-batch overlap hid follow the step
        for key in ("tokens_per_s_per_node", "itl_s", "ttft_s"):
            if key in two:
                out[key] = two[key] * (two["step_time_s"] / step if key == "tokens_per_s_per_node"
                                       else step / two["step_time_s"])
        tbo = two["serving"]["two_batch_overlap"]
        out["serving"] = {**two["serving"], "two_batch_overlap": {
            **tbo, **{k: f(one["serving"]["two_batch_overlap"][k], tbo[k])
                      for k in ("comm_in_flight_s", "exposed_comm_s", "hidden_comm_s")}}}
    out["provenance"] = {**two["provenance"], "simulated": (
        f"the model with its {full.model.num_dense_layers} dense layers and {n1}, then {n2}, of its {n} MoE "
        f"layers, whole (workload.extend_layers: always, an estimate, not exact); step time, its breakdown, "
        f"calls, bytes and FLOPs extended linearly in MoE layers; per-call means, load imbalance, per-layer "
        f"rows and expert loads from the {n2}-MoE-layer run"
        + (f"; {two['provenance']['simulated']}" if "simulated" in two["provenance"] else ""))}
    out["memory_per_gpu"] = memory_per_gpu(full, buffers=two["memory_per_gpu"]["buffers"]).as_dict()
    out["parameters_per_gpu"] = local_params(full)
    return out
