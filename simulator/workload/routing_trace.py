"""Recorded routing replayed (routing.distribution: trace, routing.trace: PATH).

A trace holds, per step and MoE layer, either the experts each token chose or how many tokens each
expert received. Files (README "Routing traces"):

- NPZ: one array, `experts` [steps, layers, tokens, top_k] (integer expert ids, best first; -1 =
  no expert in that place, as a threshold gate or a dropped copy leaves), or `counts`
  [steps, layers, num_experts] (tokens per expert).
- CSV or Parquet, ids: columns `step, layer, expert_0 .. expert_{top_k-1}`, one row per token in
  token order (an empty cell or -1: no expert). Counts: columns `step, layer, expert, tokens`
  (`moe_layer` may stand for `layer`, so a run's expert_load.csv is a counts trace; its `ep_group`
  column is summed over, its `load` and `load_over_mean` columns are ignored).

Replay, step t and MoE layer l (trace step t mod steps; layer l of the trace):
- ids: the simulation takes the trace's tokens in order, EP group by EP group and micro-batch by
  micro-batch (`run --save-routing` writes that order, so a run's recording replays bit for bit),
  and starts over at the first token when the trace has fewer than the step needs.
- counts: each micro-batch's N x top_k copies are split over the experts in the trace's
  proportions (largest remainder), dealt to tokens so that every token gets top_k distinct experts,
  and the tokens shuffled over the GPUs by the run's seed. A balanced recording gives every expert
  exactly N x top_k / E copies, as the balanced law does.
Either way the placement strategies (EPLB, topology-aware) balance the trace's own per-layer law.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import ScenarioError

KEY = "routing.trace"
MAX_TRACE_BYTES = 1 << 30  # a 1 GiB file: 58 layers x 64 steps x 32 k tokens x 8 experts of int16
COUNT_COLUMNS = {"step", "layer", "expert", "tokens"}
IGNORED_COUNT_COLUMNS = {"ep_group", "load", "load_over_mean"}  # expert_load.csv's other columns


@dataclass(frozen=True)
class RoutingTrace:
    """experts[(step, layer)] -> [tokens, k] int32 ids (-1: none), or counts[(step, layer)] -> [E]."""
    path: str
    num_steps: int
    num_layers: int
    experts: dict | None = None
    counts: dict | None = None

    @property
    def top_k(self) -> int | None:
        return next(iter(self.experts.values())).shape[1] if self.experts else None

    @property
    def num_experts_seen(self) -> int:
        """Ids traces: the largest expert id + 1; counts traces: the length of a count vector."""
        if self.counts:
            return len(next(iter(self.counts.values())))
        return int(max(int(a.max(initial=-1)) for a in self.experts.values())) + 1

    def law(self, step: int, layer: int, num_experts: int) -> np.ndarray:
        """[E] this step's and layer's share of tokens per expert (what EPLB and topology-aware balance)."""
        key = (step % self.num_steps, layer)
        if self.counts:
            c = self.counts[key].astype(np.float64)
        else:
            ids = self.experts[key]
            c = np.bincount(ids[ids >= 0], minlength=num_experts).astype(np.float64)
        total = c.sum()
        return c / total if total > 0 else np.full(len(c), 1.0 / len(c))


def fail(path, rule: str):
    raise ScenarioError(KEY, str(path), rule)


def _frame(path: Path):
    import pandas as pd
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError, ImportError) as exc:  # pandas' parser errors are ValueErrors
        fail(path, f"cannot be read as a {path.suffix[1:]} table ({type(exc).__name__}: {str(exc)[:200]})")


def _whole_numbers(values, path, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if not np.isfinite(a).all() or (a != np.round(a)).any():
        fail(path, f"{what} must be whole numbers")
    return a.astype(np.int64)


def _from_table(frame, path) -> tuple[dict | None, dict | None]:
    cols = set(frame.columns)
    if "moe_layer" in cols and "layer" not in cols:
        frame = frame.rename(columns={"moe_layer": "layer"})
        cols = set(frame.columns)
    if not {"step", "layer"} <= cols:
        fail(path, f"needs columns step and layer; it has {sorted(cols)}")
    step, layer = _whole_numbers(frame["step"], path, "step"), _whole_numbers(frame["layer"], path, "layer")
    if "tokens" in cols:  # per-expert counts
        extra = cols - COUNT_COLUMNS - IGNORED_COUNT_COLUMNS
        if extra or not COUNT_COLUMNS <= cols:
            fail(path, f"a counts trace has columns step, layer, expert, tokens; unexpected or missing: "
                       f"{sorted(extra or COUNT_COLUMNS - cols)}")
        expert, tokens = _whole_numbers(frame["expert"], path, "expert"), _whole_numbers(frame["tokens"], path, "tokens")
        if (expert < 0).any() or (tokens < 0).any():
            fail(path, "expert ids and tokens must be >= 0")
        num_experts = int(expert.max()) + 1 if len(expert) else 0
        counts = {}
        for key in sorted(set(zip(step.tolist(), layer.tolist()))):
            sel = (step == key[0]) & (layer == key[1])
            if set(expert[sel].tolist()) != set(range(num_experts)):
                fail(path, f"step {key[0]}, layer {key[1]} must list every expert 0..{num_experts - 1}")
            counts[key] = np.bincount(expert[sel], weights=tokens[sel], minlength=num_experts).astype(np.int64)
        return None, counts
    choice = sorted((c for c in cols if c.startswith("expert_")), key=lambda c: int(c[7:]) if c[7:].isdigit() else -1)
    if not choice or [c[7:] for c in choice] != [str(i) for i in range(len(choice))] or cols - {"step", "layer", *choice}:
        fail(path, f"an ids trace has columns step, layer, expert_0 .. expert_(top_k - 1); it has {sorted(cols)}")
    ids = frame[choice].fillna(-1).to_numpy()
    ids = _whole_numbers(ids, path, "expert ids")
    experts = {}
    for key in sorted(set(zip(step.tolist(), layer.tolist()))):
        experts[key] = ids[(step == key[0]) & (layer == key[1])].astype(np.int32)
    return experts, None


def _from_npz(path: Path) -> tuple[dict | None, dict | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            if len(names & {"experts", "counts"}) != 1 or names - {"experts", "counts"}:
                fail(path, f"an NPZ trace holds one array, experts [steps, layers, tokens, top_k] or counts "
                           f"[steps, layers, experts]; it has {sorted(names)}")
            name = next(iter(names))
            a = data[name]
    except (ValueError, OSError) as exc:
        fail(path, f"cannot be read as NPZ ({type(exc).__name__}: {str(exc)[:200]})")
    want = 4 if name == "experts" else 3
    if a.ndim != want or not np.issubdtype(a.dtype, np.integer):
        fail(path, f"{name} must be a {want}-dimensional integer array; it is {a.ndim}-dimensional {a.dtype}")
    split = {(t, layer): a[t, layer] for t in range(a.shape[0]) for layer in range(a.shape[1])}
    if name == "experts":
        return {key: v.astype(np.int32) for key, v in split.items()}, None
    if (a < 0).any():
        fail(path, "counts must be >= 0")
    return None, {key: v.astype(np.int64) for key, v in split.items()}


def load_trace(path_text: str) -> RoutingTrace:
    """Read a trace file; a missing, oversized or malformed one is a ScenarioError naming routing.trace."""
    path = Path(path_text)
    if not path.is_file():
        fail(path_text, "no such file")
    if path.stat().st_size > MAX_TRACE_BYTES:
        fail(path_text, f"is {path.stat().st_size} bytes; at most {MAX_TRACE_BYTES}")
    if path.suffix == ".npz":
        experts, counts = _from_npz(path)
    elif path.suffix in (".csv", ".parquet"):
        experts, counts = _from_table(_frame(path), path_text)
    else:
        fail(path_text, "must end in .csv, .parquet or .npz")
    table = experts or counts
    if not table:
        fail(path_text, "holds no step")
    steps = sorted({t for t, _ in table})
    layers = sorted({layer for _, layer in table})
    if steps != list(range(len(steps))) or layers != list(range(len(layers))) or len(table) != len(steps) * len(layers):
        fail(path_text, "must hold every layer 0..L-1 of every step 0..S-1")
    if experts and any(len(v) == 0 for v in experts.values()):
        fail(path_text, "every step and layer needs at least one token")
    return RoutingTrace(path_text, len(steps), len(layers), experts, counts)


def check_trace(s, moe_layers: int) -> RoutingTrace:
    """The scenario's trace, checked against its model: the trace's layers are the model's MoE layers
    (or those in scope), its experts the model's, its top_k the model's."""
    trace = load_trace(s.routing.trace)
    m = s.model
    if trace.num_layers not in (m.num_moe_layers, moe_layers):
        fail(s.routing.trace, f"holds {trace.num_layers} MoE layers; model has {m.num_moe_layers} "
                              f"({moe_layers} in workload.scope)")
    if trace.counts is not None and trace.num_experts_seen != m.num_experts:
        fail(s.routing.trace, f"counts {trace.num_experts_seen} experts; model.num_experts is {m.num_experts}")
    if trace.experts is not None:
        if trace.top_k != m.top_k:
            fail(s.routing.trace, f"gives {trace.top_k} experts per token; model.top_k is {m.top_k}")
        for (t, layer), ids in trace.experts.items():
            if ids.min() < -1 or ids.max() >= m.num_experts:
                fail(s.routing.trace, f"step {t}, layer {layer}: expert ids must be in -1..{m.num_experts - 1} "
                                      f"(model.num_experts={m.num_experts})")
            kept = np.sort(np.where(ids >= 0, ids, -1 - np.arange(ids.shape[1])), axis=1)
            if (kept[:, 1:] == kept[:, :-1]).any():
                fail(s.routing.trace, f"step {t}, layer {layer}: a token chose the same expert twice")
    else:
        for (t, layer), c in trace.counts.items():
            if c.sum() == 0:
                fail(s.routing.trace, f"step {t}, layer {layer}: no tokens")
            if c.max() * m.top_k > c.sum():
                fail(s.routing.trace, f"step {t}, layer {layer}: an expert takes {c.max() / c.sum():.3f} of the "
                                      f"copies; a token picks an expert once, so at most 1/top_k = {1 / m.top_k:.3f}")
    return trace


def deal(counts: np.ndarray, num_tokens: int, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """[num_tokens, top_k] ids: num_tokens x top_k copies in the proportions of `counts` (largest
    remainder), each token's experts distinct (each expert's copies on consecutive tokens, at most
    num_tokens of them), the tokens then shuffled."""
    total = num_tokens * top_k
    exact = counts.astype(np.float64) * total / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    short = total - int(quota.sum())
    if short:
        quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    ids = np.repeat(np.arange(len(counts), dtype=np.int32), quota).reshape(top_k, num_tokens).T
    return ids[rng.permutation(num_tokens)]


class TraceRouter:
    """One step's and MoE layer's recording, handed out to the EP groups' micro-batches in order."""

    def __init__(self, trace: RoutingTrace, step: int, layer: int, top_k: int, num_experts: int):
        self.trace, self.key, self.top_k = trace, (step % trace.num_steps, layer), top_k
        self.probabilities = trace.law(step, layer, num_experts)
        self.num_experts = len(self.probabilities)
        self.next_token = 0

    def route(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        if self.trace.counts is not None:
            return deal(self.trace.counts[self.key], num_tokens, self.top_k, rng)
        ids = self.trace.experts[self.key]
        take = (self.next_token + np.arange(num_tokens)) % len(ids)
        self.next_token += num_tokens
        return ids[take]


def save_routing(path: Path, routed_by_step: list[dict]) -> None:
    """Write a run's routing as an NPZ ids trace: experts [steps, layers, tokens, top_k], each layer's
    tokens in (EP group, micro-batch) order, as TraceRouter replays them."""
    steps = []
    for routed in routed_by_step:
        layers = sorted({layer for _, layer, _ in routed})
        steps.append([np.concatenate([routed[key] for key in sorted(routed) if key[1] == layer]) for layer in layers])
    np.savez_compressed(path, experts=np.array(steps, dtype=np.int32))
