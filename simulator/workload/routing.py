"""Softmax top-k gating (seed 2.1) over synthetic token representations, sampled exactly and fast.

A token t's gate logits are modelled as z_te = b_e + G_te: a per-expert bias b_e (the router's
learned preference; zero for `uniform`, log of a Zipf law for `zipf`) plus independent Gumbel(0, 1)
noise G_te that stands for the token's own representation W_gate h_t. Under that law the top-k of
softmax(z_t) is distributed exactly as drawing k experts one after another without replacement,
each with probability proportional to softmax(b) among those not yet drawn (Gumbel-top-k /
Plackett-Luce). epsim samples that directly: O(k) work per token instead of O(E), which is what
makes EP 1024 (4 M tokens per layer) affordable.

Drawing with replacement and skipping repeats is the same law as drawing without replacement, so
the sampler draws candidate columns in bulk and keeps each row's first k distinct experts.

Group-limited routing (DeepSeek-V3's node limit): once a token's experts span `max_nodes` nodes,
later candidates on other nodes are skipped, so every token touches at most `max_nodes` nodes
(drawn directly from the experts of its nodes, which is the same law without the wasted draws).

`balanced` deals every token k distinct experts from successive random permutations of all experts,
so every expert receives exactly the same number of tokens (needs E % k == 0).
"""
from __future__ import annotations

import numpy as np

BLOCK_TOKENS = 1 << 18  # tokens sampled at once: bounds memory at EP 1024


def id_dtype(count: int) -> type:
    """The narrowest dtype for ids 0..count-1 and the -1 marker: int16 (half the memory traffic of the
    sampler's comparisons) up to 32,767, int32 beyond (num_experts may reach 2^20). The draws of
    rng.integers depend on the dtype, so int16 stays wherever it fits: routing stays seed-stable."""
    return np.int16 if count <= np.iinfo(np.int16).max else np.int32


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
        self.cdf = np.cumsum(self.probabilities)
        self.cdf[-1] = 1.0
        self.ids = id_dtype(num_experts)
        self.expert_node = np.asarray(expert_node).astype(self.ids)
        num_nodes = int(self.expert_node.max()) + 1
        self.max_nodes = max_nodes if max_nodes is not None and max_nodes < num_nodes else None
        if self.max_nodes is not None:  # (group-limited routing holds the same experts on every node)
            self._node_tables(num_nodes)

    def _node_tables(self, num_nodes: int) -> None:
        """For tokens whose node set is full: draw a node by its probability mass, then an expert
        inside it. Same law as drawing from all experts and skipping other nodes, without the skips."""
        by_node = np.argsort(self.expert_node, kind="stable").reshape(num_nodes, -1)
        p_by_node = self.probabilities[by_node]
        self.node_mass = p_by_node.sum(axis=1)
        within = np.cumsum(p_by_node, axis=1) / self.node_mass[:, None]
        within[:, -1] = 1.0
        self.experts_by_node = by_node.ravel().astype(self.ids)
        self.node_cdf = (np.arange(num_nodes)[:, None] + within).ravel()
        self.experts_per_node = by_node.shape[1]

    def route(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        """Expert ids [num_tokens, top_k] of num_tokens fresh tokens, in order of preference."""
        if self.distribution == "balanced":
            return self._balanced(num_tokens, rng)
        out = np.empty((num_tokens, self.top_k), dtype=np.int32)
        for start in range(0, num_tokens, BLOCK_TOKENS):
            stop = min(num_tokens, start + BLOCK_TOKENS)
            out[start:stop] = self._sample_block(stop - start, rng)
        return out

    def _draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Independent draws with replacement from the routing probabilities."""
        if self.distribution == "uniform":
            return rng.integers(0, self.num_experts, size=shape, dtype=self.ids)
        u = rng.random(shape, dtype=np.float32)
        return np.searchsorted(self.cdf, u, side="right").astype(self.ids)

    def _within_draws(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The random numbers of n draws restricted to a token's nodes, in the order the law takes
        them: all n node choices, then all n choices inside the node (_pick_within maps them)."""
        if self.distribution == "uniform":  # every node and expert equally likely: no CDFs needed
            return rng.integers(0, self.max_nodes, n), rng.integers(0, self.experts_per_node, n)
        return rng.random(n), rng.random(n)

    def _pick_within(self, nodes: np.ndarray, cols: np.ndarray, draws: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """One expert for each column `cols` of `nodes` [limit, n] from that column's draws,
        restricted to the experts on its nodes."""
        if self.distribution == "uniform":
            node = nodes[draws[0], cols].astype(np.int64)
            return self.experts_by_node[node * self.experts_per_node + draws[1]]
        nodes = nodes.take(cols, axis=1)
        mass = np.cumsum(self.node_mass[nodes], axis=0)
        u = draws[0] * mass[-1]
        pick = np.minimum((mass < u).sum(axis=0), nodes.shape[0] - 1)
        node = nodes[pick, np.arange(len(cols))].astype(np.int64)
        idx = np.searchsorted(self.node_cdf, node + draws[1], side="right")
        idx = np.clip(idx, node * self.experts_per_node, (node + 1) * self.experts_per_node - 1)
        return self.experts_by_node[idx]

    def _sample_block(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k, limit = self.top_k, self.max_nodes
        # Column-major state ([k, n]) keeps the per-candidate comparisons contiguous.
        chosen = np.full((k, n), -1, dtype=self.ids)
        filled = np.zeros(n, dtype=np.int64)
        nodes = np.full((limit or 1, n), -1, dtype=self.ids)
        num_nodes = np.zeros(n, dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            m = todo.size
            # Every token whose node set is full takes a restricted draw for every candidate, done or
            # not (the stream's order), but only the tokens still filling are worked on: dense copies
            # of the state of a working set `act` (positions in 0..m-1), compacted once half is done.
            full = num_nodes[todo] == limit if limit else np.zeros(m, dtype=bool)
            num_full = int(full.sum())
            rank_of, ranked = None, -1  # position among the full tokens, for the count it was taken at
            act = np.arange(m)
            c, f, nd, nn = chosen.take(todo, axis=1), filled[todo], nodes.take(todo, axis=1), num_nodes[todo]
            num_done = 0
            for cand in self._draw((2 * k, m), rng):
                if len(act) < m:
                    cand = cand[act]
                live = f < k
                if num_full:
                    draws = self._within_draws(num_full, rng)
                    fa = np.nonzero(full[act] & live if len(act) < m else full & live)[0]
                    if fa.size:
                        if ranked != num_full:
                            rank_of, ranked = np.cumsum(full) - 1, num_full
                        rank = rank_of[act[fa]]
                        cand[fa] = self._pick_within(nd, fa, (draws[0][rank], draws[1][rank]))
                ok = live & (c != cand).all(axis=0)
                if limit:
                    node = self.expert_node[cand]
                    known = (nd == node).any(axis=0)
                    ok &= known | (nn < limit)
                    new_node = np.nonzero(ok & ~known)[0]
                    nd[nn[new_node], new_node] = node[new_node]
                    nn[new_node] += 1
                    now_full = new_node[nn[new_node] == limit]
                    full[act[now_full]] = True
                    num_full += len(now_full)
                hit = np.nonzero(ok)[0]
                c[f[hit], hit] = cand[hit]
                f[hit] += 1
                num_done += int((f[hit] == k).sum())
                if 2 * num_done > len(act):  # write the finished tokens back and drop them
                    done = f == k
                    chosen[:, todo[act[done]]] = c[:, done]
                    filled[todo[act[done]]] = k
                    keep = ~done
                    act, c, f, nd, nn = act[keep], c[:, keep], f[keep], nd[:, keep], nn[keep]
                    num_done = 0
            # write the working set back; the tokens still short of k experts go to the next round
            at = todo[act]
            chosen[:, at], filled[at], nodes[:, at], num_nodes[at] = c, f, nd, nn
            todo = at[f < k]
        return chosen.T.astype(np.int32)

    def _balanced(self, num_tokens: int, rng: np.random.Generator) -> np.ndarray:
        per_perm = self.num_experts // self.top_k
        num_perms = -(-num_tokens // per_perm)
        perms = np.argsort(rng.random((num_perms, self.num_experts)), axis=1).astype(np.int32)
        return perms[:, : per_perm * self.top_k].reshape(-1, self.top_k)[:num_tokens]
