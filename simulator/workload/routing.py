"""Softmax top-k gating (seed 2.1) over synthetic token representations, sampled exactly and fast.

A token t's gate logits are modelled as z_te = b_e + G_te: a per-expert bias b_e (the router's
learned preference; zero for `uniform`, log of a Zipf law for `zipf`) plus independent Gumbel(0, 1)
noise G_te that stands for the token's own representation W_gate h_t. Under that law the top-k of
softmax(z_t) is distributed exactly as drawing k experts one after another without replacement,
each with probability proportional to softmax(b) among those not yet drawn (Gumbel-top-k /
Plackett-Luce). epsim samples that directly: O(k) work per token instead of O(E), which is what
makes EP 1024 (4 M tokens per layer) affordable.

Drawing with replacement and skipping repeats is the same law as drawing without replacement, so
the sampler draws one candidate after another and keeps each token's first k distinct experts
(a compiled loop, simulator/workload/kernels.py: one float64 uniform of the run's seeded numpy
Generator per draw, through Walker's alias table of the probabilities).

Group-limited routing (DeepSeek-V3's node limit): once a token's experts span `max_nodes` nodes,
later candidates on other nodes are skipped, so every token touches at most `max_nodes` nodes
(drawn directly from the experts of its nodes, which is the same law without the wasted draws).

`balanced` deals every token k distinct experts from successive random permutations of all experts,
so every expert receives exactly the same number of tokens (needs E % k == 0).
"""
from __future__ import annotations

import math

import numpy as np


def drift_order(num_experts: int, drift: float, step: int, rng: np.random.Generator) -> np.ndarray | None:
    """Temporal drift: after `step` steps, which expert id each position of the law maps to. Each step
    round(drift x E / 2) random pairs of experts trade places, cumulatively (drift 1: about every
    expert moves each step); None at step 0 or without drift."""
    if drift <= 0 or step == 0:
        return None
    order = np.arange(num_experts)
    pairs = max(1, round(drift * num_experts / 2))
    for _ in range(step):
        chosen = rng.permutation(num_experts)[: 2 * pairs]
        a, b = chosen[:pairs], chosen[pairs:]
        order[a], order[b] = order[b].copy(), order[a].copy()
    return order


def drop_over_capacity(experts: np.ndarray, tokens_per_gpu: int, capacity: int) -> np.ndarray:
    """Expert capacity per source GPU: of each GPU's (token, expert) copies [P * T, k], EP-rank-major,
    keep the first `capacity` per expert in token order and mark the rest -1 (dropped)."""
    out = experts.copy()
    k = experts.shape[1]
    for start in range(0, len(experts), tokens_per_gpu):
        ids = out[start:start + tokens_per_gpu].ravel()  # a view: position order = token, then choice
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        first = np.searchsorted(sorted_ids, sorted_ids, side="left")
        rank = np.arange(len(ids)) - first
        ids[order[rank >= capacity]] = -1
        out[start:start + tokens_per_gpu] = ids.reshape(-1, k)
    return out


def zipf_probabilities(num_experts: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """p_e proportional to rank^-alpha, ranks shuffled over experts by the seed."""
    p = np.arange(1, num_experts + 1, dtype=np.float64) ** -alpha
    return (p / p.sum())[rng.permutation(num_experts)]


UNIFORM_STEP = 2.0 ** -53  # the sampler's uniform draws are float64: an expert with less mass may never be drawn
MAX_DRAWS_PER_COPY = 1e4  # past this the sampler's rejection loop is hopeless at any budget
MAX_DRAWS_PER_TOKEN = 10_000_000  # a token that needs more is stuck (its nodes hold < top_k experts with mass)


class UnsampleableLaw(ValueError):
    """The router's law cannot give a token top_k distinct experts in reasonable time (too few
    experts with mass, or a k-th choice too rare); the caller names the scenario key: the node
    limit's when `node_limit` (a token's nodes held too few), else the law's own."""

    def __init__(self, message: str, node_limit: bool = False):
        super().__init__(message)
        self.node_limit = node_limit


def expected_draws_per_copy(probabilities: np.ndarray, top_k: int) -> float:
    """Expected draws per kept expert: drawing with replacement and skipping repeats needs
    1 / (1 - mass already chosen) draws for the next distinct expert, the likeliest taken first
    (the expected case; a node limit can only add draws). inf when fewer than top_k experts have
    mass or the k-th has less than the sampler's float64 draws resolve."""
    p = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1] / np.sum(probabilities)
    if p[top_k - 1] < UNIFORM_STEP:
        return math.inf
    left = 1.0 - np.concatenate([[0.0], np.cumsum(p[: top_k - 1])])
    return float(np.sum(1.0 / np.maximum(left, UNIFORM_STEP)) / top_k)


class Router:
    """A seeded gate for one MoE layer of one EP group."""

    def __init__(self, num_experts: int, top_k: int, distribution: str, zipf_alpha: float,
                 expert_node: np.ndarray, max_nodes: int | None, rng: np.random.Generator,
                 gate_scale: np.ndarray | None = None, concentration: float = 1.0,
                 drift_order: np.ndarray | None = None):
        self.num_experts, self.top_k, self.distribution = num_experts, top_k, distribution
        if distribution == "zipf":
            self.probabilities = zipf_probabilities(num_experts, zipf_alpha, rng)
        elif distribution == "dirichlet":
            self.probabilities = rng.dirichlet(np.full(num_experts, concentration))
        else:
            self.probabilities = np.full(num_experts, 1.0 / num_experts)
        if drift_order is not None:  # temporal drift: the law's experts moved to other ids
            self.probabilities = self.probabilities[drift_order]
        if gate_scale is not None:
            # adaptive gating (seed 2.3): g'_e = g_e x c_e scales expert e's softmax weight, which is
            # adding log c_e to its logit: the top-k law with probabilities proportional to p_e x c_e
            scaled = self.probabilities * np.asarray(gate_scale, dtype=np.float64)
            self.probabilities = scaled / scaled.sum()
            self.distribution = "weighted" if distribution == "uniform" else distribution
        self.expert_node = np.asarray(expert_node).astype(np.int64)
        num_nodes = int(self.expert_node.max()) + 1
        self.max_nodes = max_nodes if max_nodes is not None and max_nodes < num_nodes else None
        self._tables = None  # the sampler's, built by the first route(): a law read only for its probabilities needs none

    def _sampler_tables(self) -> tuple:
        """The kernel's arguments after the token count: the law's alias table, and for tokens whose
        node set is full, each node's mass and the alias table of its experts (draw a node by its mass,
        then an expert inside it: the same law as drawing from all experts and skipping other nodes,
        without the skips). Refuses a law the sampler could not finish (UnsampleableLaw)."""
        if self._tables is not None:
            return self._tables
        from simulator.workload.kernels import alias_table

        draws = expected_draws_per_copy(self.probabilities, self.top_k)
        if draws > MAX_DRAWS_PER_COPY:
            raise UnsampleableLaw(f"{int((self.probabilities > 0).sum())} of {self.num_experts} experts have mass, "
                                  f"so a token's top_k={self.top_k} distinct experts take about {min(draws, 1e300):.3g} "
                                  f"draws per expert (more than {MAX_DRAWS_PER_COPY:.0e})")
        keep, alias = alias_table(np.asarray(self.probabilities, dtype=np.float64))
        # group-limited routing holds the same experts on every node; without a limit, empty tables
        node_mass, within_keep = np.ones(1), np.ones(1)
        within_alias = experts_by_node = np.zeros(1, dtype=np.int64)
        if self.max_nodes is not None:
            num_nodes = int(self.expert_node.max()) + 1
            by_node = np.argsort(self.expert_node, kind="stable").reshape(num_nodes, -1)
            p_by_node = self.probabilities[by_node]
            node_mass = p_by_node.sum(axis=1)
            node_keep, node_alias = np.ones(by_node.shape), np.tile(np.arange(by_node.shape[1]), (num_nodes, 1))
            for n in np.nonzero(node_mass > 0)[0]:  # a node without mass is never drawn
                node_keep[n], node_alias[n] = alias_table(p_by_node[n].astype(np.float64))
            within_keep, within_alias = node_keep.ravel(), node_alias.ravel().astype(np.int64)
            experts_by_node = by_node.ravel().astype(np.int64)
        self._tables = (self.distribution == "uniform", keep, alias, self.expert_node, self.max_nodes or 0,
                        node_mass, within_keep, within_alias, experts_by_node)
        return self._tables

    def route(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Expert ids [num_tokens, top_k] of num_tokens fresh tokens, in order of preference."""
        if self.distribution == "balanced":
            return self._balanced(num_tokens, rng)
        from simulator.workload.kernels import route_tokens

        tables = self._sampler_tables()
        out = np.empty((num_tokens, self.top_k), dtype=np.int32)
        if route_tokens(rng, out, *tables, MAX_DRAWS_PER_TOKEN) >= 0:
            raise UnsampleableLaw(f"a token took {MAX_DRAWS_PER_TOKEN:,} draws without finding top_k={self.top_k} "
                                  f"distinct experts on its max_nodes_per_token={self.max_nodes} nodes", node_limit=True)
        return out

    def _balanced(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        per_perm = self.num_experts // self.top_k
        num_perms = -(-num_tokens // per_perm)
        perms = np.argsort(rng.random((num_perms, self.num_experts)), axis=1).astype(np.int32)
        return perms[:, : per_perm * self.top_k].reshape(-1, self.top_k)[:num_tokens]
