"""Topology-aware expert placement (seed 1.2): which GPU of an EP group holds each expert, chosen to
minimise the busiest port's expected dispatch time, max_k sum_ij tokens_ij x p_ij x utilisation_k.

The port-load model. Every EP rank sends the same T tokens, so the expected (token, expert) copies
any source sends to expert e are w_e = T x c_e (x the wire bytes per token), c_e the chance a token
picks e (expected_copies_per_token; top_k x p_e when inclusion=False). Placing
experts fixes L_g = sum_{e on g} w_e, what every source sends to GPU g, and M_n, the sum of L_g over
node n. Following simulator/engine/paths.py, every port's bytes are then linear in (L, M), in the
dispatch direction (the combine's are the same on the opposite ports, so the max is the same):

    direct, low_latency   NVLink out of s   M_n(s) - L_s          (own copies cross no port)
                          NVLink in of g    (P_n(g) - 1) x L_g    P_n: the group's GPUs on node n
                          NIC out of s      W - M_n(s)            W = sum_e w_e
                          NIC in of g       (P - P_n(g)) x L_g
                          spine up, rail r  sum_g #{s on rail r, off g's node} x L_g   over g off rail r
                          spine down, r     sum_g on rail r of #{s off rail r, off g's node} x L_g
    hierarchical          NVLink out of f   (1 + Q_f) x M_n(f)    own node's copies plus those f forwards;
                                                                  Q_f: the group's GPUs of f's rail elsewhere
                          NVLink in of g    P x L_g               every copy, a GPU's own included
                          NIC out of s      W - M_n(s)
                          NIC in of f       Q_f x M_n(f)          (no spine: IB stays on the rail)

The approximation: direct and hierarchical send a token once per destination GPU (or node), not
once per copy, and the expected number of distinct tokens, T x (1 - P(no expert of the set)), is
not linear in the assignment. The model counts copies, an upper bound that is exact for top_k = 1
and for low_latency (one message per copy); it ignores the dedupe a co-selected pair of experts on
one GPU (or node) earns. Port time is bytes / the port's achievable rate (the algorithm's own
efficiency scales every port alike and is left out). With inclusion=False, w_e = T x top_k x p_e
overstates the hottest experts when top_k x p_e nears 1 (a token picks an expert at most once).
Measured per-expert loads may stand in for `probabilities` (with inclusion=False, normalised).
Group-limited routing (max_nodes_per_token) makes the law itself depend on the placement; the
model uses the unlimited law.

Solvers: an exact MILP (HiGHS through scipy.optimize.milp) for small instances; for large ones a
greedy (hottest expert first, onto the GPU whose worst port grows least) and a local search of
pairwise swaps from the better of greedy and round-robin, so the result is never worse than
round-robin on this objective. The lower bound reported with it is an LP over (L, M).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from hardware.topology import Topology
from simulator.ranks import EPGroup
from simulator.wire import algorithm as a2a_algorithm
from simulator.workload.placement import Placement, round_robin

MILP_MAX_VARIABLES = 4096  # E x P; HiGHS proves these optimal in seconds, larger ones stall on symmetry
MILP_TIME_LIMIT_S = 5.0
MILP_REL_GAP = 1e-4  # HiGHS's default: proving the last 0.01 % can take longer than the rest


@dataclass(frozen=True)
class PortModel:
    """Expected seconds of every port of one EP group, linear in the per-GPU loads L [P]:
    seconds_k = (a_k L[gpu_k] + b_k M[node_k] + c_k W) / capacity_k for the GPUs' ports, and
    (spine_coef @ L)_k / capacity_k for the spine's."""
    port: np.ndarray  # [K] topology port index (GPU ports, then spine ports)
    gpu: np.ndarray  # [K1] EP rank owning each GPU port
    node: np.ndarray  # [K1] group node of each GPU port
    gpu_coef: np.ndarray  # [K1] a
    node_coef: np.ndarray  # [K1] b
    total_coef: np.ndarray  # [K1] c
    spine_coef: np.ndarray  # [K2, P]
    inv_capacity: np.ndarray  # [K] 1 / achievable bytes/s
    group_node: np.ndarray  # [P] node of each EP rank

    @property
    def num_gpu_ports(self) -> int:
        return len(self.gpu)

    def coefficients(self) -> np.ndarray:
        """[K, P] seconds per byte of L_g on every port (W and M written out over the GPUs)."""
        same_node = self.node[:, None] == self.group_node[None, :]
        own = self.gpu[:, None] == np.arange(len(self.group_node))[None, :]
        dense = self.gpu_coef[:, None] * own + self.node_coef[:, None] * same_node + self.total_coef[:, None]
        return np.vstack([dense, self.spine_coef]) * self.inv_capacity[:, None]

    def seconds(self, load: np.ndarray, total: float | None = None) -> np.ndarray:
        """[K] port seconds for per-GPU loads `load` [P] bytes; `total` overrides W = load.sum()
        (a partial placement counts only what it has placed)."""
        node_load = np.bincount(self.group_node, load, minlength=self.group_node.max() + 1)
        total = load.sum() if total is None else total
        k1 = self.num_gpu_ports
        gpu_ports = self.gpu_coef * load[self.gpu] + self.node_coef * node_load[self.node] + self.total_coef * total
        return np.concatenate([gpu_ports * self.inv_capacity[:k1], self.spine_coef @ load * self.inv_capacity[k1:]])


def port_model(group: EPGroup, topology: Topology, algorithm: str) -> PortModel:
    """The coefficients of the module docstring's table for `algorithm` (simulator.wire.ALL_TO_ALL)."""
    route = a2a_algorithm(algorithm).route
    p = group.size
    node, rail, gpus = group.node, group.rail, group.gpus
    per_node = np.bincount(node)[node]  # P_n(g)
    others_on_rail = np.bincount(rail, minlength=topology.spec.gpus_per_node)[rail] - 1  # Q_f
    zero, one = np.zeros(p), np.ones(p)
    if route == "direct":
        rows = [(topology.nvl_out(gpus), -one, one, zero), (topology.nvl_in(gpus), per_node - 1.0, zero, zero),
                (topology.nic_out(gpus), zero, -one, one), (topology.nic_in(gpus), p - per_node + 0.0, zero, zero)]
    else:
        present = np.unique(rail)
        if (group.member_at[:, present] < 0).any():
            raise ValueError("hierarchical all-to-all needs a GPU of the owner's rail on every destination node")
        rows = [(topology.nvl_out(gpus), zero, 1.0 + others_on_rail, zero), (topology.nvl_in(gpus), p + zero, zero, zero),
                (topology.nic_out(gpus), zero, -one, one), (topology.nic_in(gpus), zero, others_on_rail + 0.0, zero)]
    spine_ports, spine_rows = [], []
    if route == "direct" and topology.has_spine:
        off_node = node[:, None] != node[None, :]  # [s, g]
        for r in range(topology.spec.gpus_per_node):
            up = ((rail[:, None] == r) & off_node).sum(axis=0) * (rail != r)
            down = ((rail[:, None] != r) & off_node).sum(axis=0) * (rail == r)
            for port, row in ((topology.spine_up(r), up), (topology.spine_down(r), down)):
                if row.any():
                    spine_ports.append(int(port))
                    spine_rows.append(row.astype(np.float64))
    port = np.concatenate([r[0] for r in rows] + [np.array(spine_ports, dtype=np.int64)]).astype(np.int64)
    capacity = topology.port_capacity_bytes_per_s()[port]
    return PortModel(port=port, gpu=np.tile(np.arange(p), 4), node=np.tile(node, 4),
                     gpu_coef=np.concatenate([r[1] for r in rows]).astype(np.float64),
                     node_coef=np.concatenate([r[2] for r in rows]).astype(np.float64),
                     total_coef=np.concatenate([r[3] for r in rows]).astype(np.float64),
                     spine_coef=np.array(spine_rows).reshape(len(spine_rows), p),
                     inv_capacity=1.0 / capacity, group_node=node.astype(np.int64))


def expected_copies_per_token(probabilities: np.ndarray, top_k: int) -> np.ndarray:
    """[E] probability that a token picks each expert under the router's top-k law (draws without
    replacement, simulator/workload/routing.py): the Poisson-sampling form 1 - exp(-lambda p_e), with
    lambda such that the copies sum to top_k. top_k x p_e, the naive count, exceeds 1 for a hot
    expert (Zipf 1.2 over 256 experts, top 8: 2.03 against a measured 0.93; this gives 0.94, and
    every expert within 0.01 of a 200k-token sample for Zipf 0.8-2.0)."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum()
    if top_k >= np.count_nonzero(p):
        return (p > 0).astype(np.float64)
    if top_k == 1:  # exact: one draw
        return p
    lo, hi = 0.0, float(top_k) / p.max()
    while (-np.expm1(-hi * p)).sum() < top_k:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):  # bisection on a monotone sum: 100 halvings reach float precision
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (-np.expm1(-mid * p)).sum() < top_k else (lo, mid)
    return -np.expm1(-0.5 * (lo + hi) * p)


def objective_s(model: PortModel, weights: np.ndarray, expert_gpu: np.ndarray) -> float:
    """The busiest port's seconds with expert e (weight bytes weights[e]) on EP rank expert_gpu[e]."""
    return float(model.seconds(np.bincount(expert_gpu, weights, minlength=len(model.group_node))).max())


class _Blocks:
    """Each node's GPU ports as one padded block, so a move's new seconds are recomputed only on the
    nodes it touches (and the spine) while the rest keep their maximum."""

    def __init__(self, model: PortModel):
        k1 = model.num_gpu_ports
        num_nodes = int(model.group_node.max()) + 1
        counts = np.bincount(model.node, minlength=num_nodes)
        order = np.argsort(model.node, kind="stable")
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.block = np.full((num_nodes, counts.max()), k1)  # k1: a padding port with zero coefficients
        col = np.arange(k1) - start[model.node[order]]
        self.block[model.node[order], col] = order
        pad = np.zeros(1)
        self.a, self.b, self.c = (np.concatenate([v, pad]) for v in (model.gpu_coef, model.node_coef, model.total_coef))
        self.inv = np.concatenate([model.inv_capacity[:k1], pad])
        self.gpu = np.concatenate([model.gpu, [-1]])
        self.spine = model.spine_coef * model.inv_capacity[k1:, None]  # [K2, P] seconds per byte
        self.model, self.num_nodes = model, num_nodes

    def seconds(self, nodes, load, node_load, total, gpu1, d1, gpu2, d2, dnode):
        """[B, width] new seconds of the GPU ports of nodes[b] after L[gpu1] += d1, L[gpu2] += d2,
        M[nodes] += dnode, with W = total."""
        ports = self.block[nodes]
        g = self.gpu[ports]
        new_load = load[g] + d1[:, None] * (g == gpu1[:, None]) + d2[:, None] * (g == gpu2[:, None])
        new_node = (node_load[nodes] + dnode)[:, None]
        return (self.a[ports] * new_load + self.b[ports] * new_node + self.c[ports] * total) * self.inv[ports]

    def node_max(self, sec_gpu_ports: np.ndarray) -> np.ndarray:
        return np.concatenate([sec_gpu_ports, [0.0]])[self.block].max(axis=1)


def _rest_max(node_max: np.ndarray, skip1: np.ndarray, skip2: np.ndarray) -> np.ndarray:
    """Per candidate, the largest node maximum over nodes other than skip1 and skip2."""
    top = np.argsort(-node_max)[:3]
    out = np.full(len(skip1), -np.inf)
    for t in top[::-1]:
        out = np.where((t != skip1) & (t != skip2), node_max[t], out)
    return out


def greedy(blocks: _Blocks, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Hottest expert first, onto the GPU with room whose placement leaves the smallest busiest port
    (ties: the smallest worst port among the ones it changes, then the lowest rank); the loads of a
    partial placement count only the experts placed so far."""
    model = blocks.model
    p = len(model.group_node)
    k1 = model.num_gpu_ports
    load, room, placed = np.zeros(p), capacity.astype(np.int64).copy(), 0.0
    expert_gpu = np.full(len(weights), -1)
    gpu_node = model.group_node
    for e in np.argsort(-weights, kind="stable"):
        w = weights[e]
        node_load = np.bincount(gpu_node, load, minlength=blocks.num_nodes)
        base = model.seconds(load, placed + w)
        cand = np.nonzero(room > 0)[0]
        n = gpu_node[cand]
        wv = np.full(len(cand), w)
        blk = blocks.seconds(n, load, node_load, placed + w, cand, wv, cand, 0.0 * wv, wv).max(axis=1)
        spine = (base[k1:][None, :] + w * blocks.spine[:, cand].T).max(axis=1, initial=0.0)
        local = np.maximum(blk, spine)
        overall = np.maximum(_rest_max(blocks.node_max(base[:k1]), n, n), local)
        g = cand[np.lexsort((cand, local, overall))[0]]
        expert_gpu[e], load[g], room[g], placed = g, load[g] + w, room[g] - 1, placed + w
    return expert_gpu


def local_search(blocks: _Blocks, weights: np.ndarray, expert_gpu: np.ndarray, capacity: np.ndarray,
                 max_moves: int = 100_000, batch: int = 1 << 15) -> tuple[np.ndarray, int]:
    """Pairwise swaps (an empty slot counts as an expert of weight 0) that lower the busiest port,
    or keep it and lower the number of ports at it; each round tries the swaps with one side on a
    node holding a busiest port (any pair when it is a spine port) and takes the best. Stops at a
    local optimum. Returns the assignment and the number of swaps made."""
    model = blocks.model
    p, k1 = len(model.group_node), model.num_gpu_ports
    free = capacity - np.bincount(expert_gpu, minlength=p)
    item_gpu = np.concatenate([expert_gpu, np.repeat(np.arange(p), free)])
    w = np.concatenate([weights, np.zeros(int(free.sum()))])
    total, gpu_node = weights.sum(), model.group_node
    moves = 0
    while moves < max_moves:
        load = np.bincount(item_gpu, w, minlength=p)
        node_load = np.bincount(gpu_node, load, minlength=blocks.num_nodes)
        sec = model.seconds(load, total)
        best, tol = sec.max(), 1e-9 * sec.max()
        at_max = sec >= best - tol
        node_cnt = np.bincount(model.node[at_max[:k1]], minlength=blocks.num_nodes)
        node_max = blocks.node_max(sec[:k1])
        count, spine_cnt = int(at_max.sum()), int(at_max[k1:].sum())
        sides = [np.nonzero(gpu_node[item_gpu] == n)[0] for n in np.nonzero(node_cnt)[0]]
        if spine_cnt:
            sides.append(np.nonzero(w > 0)[0])
        swap = None
        for side in sides:
            i, j = (a.ravel() for a in np.meshgrid(side, np.arange(len(w)), indexing="ij"))
            keep = (item_gpu[i] != item_gpu[j]) & (w[i] != w[j])
            i, j = i[keep], j[keep]
            for lo in range(0, len(i), batch):
                ii, jj = i[lo:lo + batch], j[lo:lo + batch]
                g, h = item_gpu[ii], item_gpu[jj]
                n, m = gpu_node[g], gpu_node[h]
                d, cross = w[jj] - w[ii], gpu_node[g] != gpu_node[h]
                dn = d * cross
                bn = blocks.seconds(n, load, node_load, total, g, d, h, -d, dn)
                bm = blocks.seconds(m, load, node_load, total, g, d, h, -d, -dn)
                sp = sec[k1:][None, :] + d[:, None] * (blocks.spine[:, g] - blocks.spine[:, h]).T
                rest = _rest_max(node_max, n, np.where(cross, m, n))
                new_max = np.maximum.reduce([rest, bn.max(axis=1), np.where(cross, bm.max(axis=1), 0.0),
                                             sp.max(axis=1, initial=0.0)])
                new_cnt = (count - node_cnt[n] - node_cnt[m] * cross - spine_cnt + (bn >= best - tol).sum(axis=1)
                           + cross * (bm >= best - tol).sum(axis=1) + (sp >= best - tol).sum(axis=1))
                better = (new_max < best - tol) | ((new_max <= best + tol) & (new_cnt < count))
                if better.any():
                    key = np.where(better, np.where(new_max < best - tol, new_max, best), np.inf)
                    k = np.lexsort((new_cnt, key))[0]
                    if swap is None or (key[k], new_cnt[k]) < swap[0]:
                        swap = ((key[k], new_cnt[k]), ii[k], jj[k])
            if swap is not None:
                break
        if swap is None:
            break
        _, a, b = swap
        item_gpu[a], item_gpu[b] = item_gpu[b], item_gpu[a]
        moves += 1
    return item_gpu[: len(weights)], moves


def _symmetric(group: EPGroup, capacity: np.ndarray) -> bool:
    """Every GPU is every other's image under a node and rail relabelling: one may be fixed."""
    filled = group.member_at >= 0
    return bool((capacity == capacity[0]).all() and (filled == filled[0]).all())


def _load_rows(model: PortModel) -> tuple[sparse.csr_matrix, np.ndarray]:
    """t >= seconds_k as rows A [K, P + N + 1] over (L, M, t), L and M in units of W and t in
    units of W / the slowest port's rate (so HiGHS sees numbers near 1): A @ (L, M, t) <= b."""
    p, k1 = len(model.group_node), model.num_gpu_ports
    num_nodes = int(model.group_node.max()) + 1
    inv = model.inv_capacity / model.inv_capacity.max()
    k2 = len(inv) - k1
    rows = np.arange(k1)
    gpu_rows = sparse.hstack([sparse.csr_matrix((model.gpu_coef * inv[:k1], (rows, model.gpu)), shape=(k1, p)),
                              sparse.csr_matrix((model.node_coef * inv[:k1], (rows, model.node)), shape=(k1, num_nodes)),
                              -np.ones((k1, 1))])
    spine_rows = sparse.hstack([sparse.csr_matrix(model.spine_coef * inv[k1:, None]), sparse.csr_matrix((k2, num_nodes)),
                                -np.ones((k2, 1))])
    return (sparse.vstack([gpu_rows, spine_rows]).tocsr(),
            np.concatenate([-model.total_coef * inv[:k1], np.zeros(k2)]))


def _sums(model: PortModel) -> sparse.csr_matrix:
    """Rows [N + 1, P + N + 1] over (L, M, t): M_n - sum_{g on n} L_g (= 0) and sum_g L_g (= 1)."""
    p = len(model.group_node)
    num_nodes = int(model.group_node.max()) + 1
    node_sum = sparse.hstack([-sparse.csr_matrix((np.ones(p), (model.group_node, np.arange(p))), shape=(num_nodes, p)),
                              sparse.eye(num_nodes), sparse.csr_matrix((num_nodes, 1))])
    return sparse.vstack([node_sum, sparse.hstack([np.ones((1, p)), sparse.csr_matrix((1, num_nodes + 1))])]).tocsr()


def solve_milp(model: PortModel, weights: np.ndarray, capacity: np.ndarray, symmetric: bool = False,
               time_limit_s: float = MILP_TIME_LIMIT_S, rel_gap: float = MILP_REL_GAP) -> dict:
    """min t s.t. t >= seconds_k for every port, one GPU per expert, sum_e x[e, g] <= capacity[g],
    with binary x[e, g] (index e * P + g) and L_g = sum_e w_e x[e, g], M_n = sum_{g on n} L_g as
    continuous columns so every port row stays short. `symmetric`: pin the hottest expert to rank 0."""
    num_experts, p = len(weights), len(capacity)
    num_nodes = int(model.group_node.max()) + 1
    nx = num_experts * p
    share = weights / weights.sum()
    ports, rhs = _load_rows(model)
    pad = sparse.csr_matrix((ports.shape[0], nx))
    sums = _sums(model)
    define_load = sparse.hstack([-sparse.kron(sparse.csr_matrix(share[None, :]), sparse.eye(p)), sparse.eye(p),
                                 sparse.csr_matrix((p, num_nodes + 1))])
    assign = sparse.hstack([sparse.kron(sparse.eye(num_experts), np.ones((1, p))),
                            sparse.csr_matrix((num_experts, p + num_nodes + 1))])
    room = sparse.hstack([sparse.kron(np.ones((1, num_experts)), sparse.eye(p)), sparse.csr_matrix((p, p + num_nodes + 1))])
    n = nx + p + num_nodes + 1
    lower, upper = np.zeros(n), np.ones(n)
    upper[nx:] = np.inf
    if symmetric:
        lower[int(np.argmax(weights)) * p] = 1.0
    c = np.zeros(n)
    c[-1] = 1.0
    res = milp(c, integrality=np.concatenate([np.ones(nx), np.zeros(n - nx)]), bounds=Bounds(lower, upper),
               constraints=[LinearConstraint(sparse.hstack([pad, ports]).tocsr(), -np.inf, rhs),
                            LinearConstraint(sparse.hstack([sparse.csr_matrix((sums.shape[0], nx)), sums]).tocsr(),
                                             np.r_[np.zeros(num_nodes), 1.0], np.r_[np.zeros(num_nodes), 1.0]),
                            LinearConstraint(define_load.tocsr(), 0.0, 0.0),
                            LinearConstraint(assign.tocsr(), 1.0, 1.0),
                            LinearConstraint(room.tocsr(), 0.0, capacity.astype(np.float64))],
               options={"time_limit": time_limit_s, "mip_rel_gap": rel_gap, "disp": False})
    scale = weights.sum() * model.inv_capacity.max()
    bound = getattr(res, "mip_dual_bound", None)
    out = {"status": int(res.status), "message": res.message, "expert_gpu": None,
           "bound_s": float(bound) * scale if bound is not None and np.isfinite(bound) else 0.0}
    if res.x is not None:
        out["expert_gpu"] = res.x[:nx].reshape(num_experts, p).argmax(axis=1)
    return out


def lower_bound_s(model: PortModel, weights: np.ndarray, capacity: np.ndarray) -> float:
    """A lower bound on the busiest port: the LP over continuous (L, M) with 0 <= L_g <= the
    capacity[g] heaviest experts (M_n likewise), and the hottest expert alone on its best GPU
    (every port's per-byte coefficient is >= 0, so one expert's share bounds it from below)."""
    p = len(capacity)
    num_nodes = int(model.group_node.max()) + 1
    total = weights.sum()
    heavy = np.concatenate([[0.0], np.cumsum(np.sort(weights)[::-1])]) / total
    cap_node = np.bincount(model.group_node, capacity, minlength=num_nodes).astype(np.int64)
    ports, rhs = _load_rows(model)
    bounds = ([(0.0, heavy[min(int(c), len(weights))]) for c in capacity]
              + [(0.0, heavy[min(int(c), len(weights))]) for c in cap_node] + [(0.0, None)])
    res = linprog(np.r_[np.zeros(p + num_nodes), 1.0], A_ub=ports, b_ub=rhs, A_eq=_sums(model),
                  b_eq=np.r_[np.zeros(num_nodes), 1.0], bounds=bounds, method="highs")
    lp = float(res.fun) * total * model.inv_capacity.max() if res.status == 0 else 0.0
    per_gpu = np.zeros(p)
    for lo in range(0, p, 64):  # coefficients() is [K, P]; its column maxima, a slab at a time
        cols = np.arange(lo, min(p, lo + 64))
        per_gpu[cols] = _column_max(model, cols)
    hot = float(weights.max() * per_gpu[capacity > 0].min())
    return max(lp, hot)


def _column_max(model: PortModel, cols: np.ndarray) -> np.ndarray:
    """max_k seconds per byte of L_g on port k, for GPUs `cols`."""
    k1 = model.num_gpu_ports
    own = model.gpu[:, None] == cols[None, :]
    same = model.node[:, None] == model.group_node[cols][None, :]
    dense = (model.gpu_coef[:, None] * own + model.node_coef[:, None] * same + model.total_coef[:, None])
    out = (dense * model.inv_capacity[:k1, None]).max(axis=0)
    if len(model.inv_capacity) > k1:
        out = np.maximum(out, (model.spine_coef[:, cols] * model.inv_capacity[k1:, None]).max(axis=0))
    return out


def topology_aware_placement(probabilities: np.ndarray, group: EPGroup, topology: Topology, algorithm: str,
                             tokens_per_gpu: int, top_k: int, bytes_per_token: float = 1.0,
                             slot_gpu: np.ndarray | None = None, capacity: np.ndarray | None = None,
                             method: str = "auto", max_milp_variables: int = MILP_MAX_VARIABLES,
                             milp_time_limit_s: float = MILP_TIME_LIMIT_S, milp_rel_gap: float = MILP_REL_GAP,
                             inclusion: bool = True) -> tuple[Placement, dict]:
    """One expert per slot on the GPUs of `group`, minimising the busiest port's expected seconds
    for one micro-batch's dispatch (tokens_per_gpu tokens per rank, bytes_per_token each).

    slot_gpu [E]: the slot layout every layer shares (default round-robin's, slot i on rank i mod P);
    capacity [P]: experts each rank may hold (default the layout's counts, so the placement fills
    the layout; pass more, e.g. ones when E < P, to let it pick the GPUs). method: "milp", "heuristic"
    or "auto" (the MILP when E x P <= max_milp_variables). inclusion: expert e's copies per token are
    expected_copies_per_token (the top-k law's), else top_k x p_e. The result is never worse than the
    layout's own assignment (expert i in slot i) on this objective."""
    started = time.perf_counter()
    weights = np.asarray(probabilities, dtype=np.float64)
    num_experts, p = len(weights), group.size
    if weights.ndim != 1 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError('"probabilities" must be a non-negative [E] vector with a positive sum.')
    if method not in ("auto", "milp", "heuristic"):
        raise ValueError(f'"method" must be one of auto, milp, heuristic; got {method!r}.')
    copies = expected_copies_per_token(weights, top_k) if inclusion else weights / weights.sum() * top_k
    weights = copies * tokens_per_gpu * bytes_per_token
    slot_gpu = round_robin(num_experts, p) if slot_gpu is None else np.asarray(slot_gpu, dtype=np.int64)
    layout = np.bincount(slot_gpu, minlength=p)
    capacity = layout.copy() if capacity is None else np.asarray(capacity, dtype=np.int64)
    if len(slot_gpu) != num_experts or slot_gpu.min() < 0 or slot_gpu.max() >= p:
        raise ValueError(f'"slot_gpu" must hold {num_experts} EP ranks in [0, {p}).')
    if len(capacity) != p or (layout > capacity).any():
        raise ValueError(f'"capacity" must be [{p}] and hold at least the layout\'s slots per rank.')
    model = port_model(group, topology, algorithm)
    blocks = _Blocks(model)
    baseline = objective_s(model, weights, slot_gpu)
    start = greedy(blocks, weights, capacity)
    greedy_s = objective_s(model, weights, start)
    if baseline < greedy_s:
        start = slot_gpu.copy()
    best, moves = local_search(blocks, weights, start, capacity)
    best_s = objective_s(model, weights, best)
    report = {"method": "heuristic", "round_robin_s": baseline, "greedy_s": greedy_s, "swaps": moves}
    use_milp = method == "milp" or (method == "auto" and num_experts * p <= max_milp_variables)
    bound = lower_bound_s(model, weights, capacity)
    if use_milp:
        exact = solve_milp(model, weights, capacity, _symmetric(group, capacity), milp_time_limit_s,
                           milp_rel_gap)
        report.update(method="milp", milp_status=exact["status"], milp_message=exact["message"])
        bound = max(bound, exact["bound_s"])
        if exact["expert_gpu"] is not None and objective_s(model, weights, exact["expert_gpu"]) <= best_s:
            best = exact["expert_gpu"]
            best_s = objective_s(model, weights, best)
    assert best_s <= baseline * (1 + 1e-9), (best_s, baseline)
    bound = float(min(bound, best_s))
    report.update(objective_s=best_s, bound_s=bound, gap=(best_s - bound) / best_s if best_s > 0 else 0.0,
                  solve_s=time.perf_counter() - started)
    return _as_placement(best, slot_gpu, p), report


def _as_placement(expert_gpu: np.ndarray, slot_gpu: np.ndarray, num_gpus: int) -> Placement:
    """Fill the layout's slots when the per-rank counts match it (each rank's slots, in order, get
    its experts by id); otherwise a placement with slot e on expert e's GPU."""
    num_experts = len(expert_gpu)
    if (np.bincount(expert_gpu, minlength=num_gpus) != np.bincount(slot_gpu, minlength=num_gpus)).any():
        return Placement(expert_gpu.astype(np.int64), np.arange(num_experts), num_experts)
    slot_expert = np.empty(num_experts, dtype=np.int64)
    slot_expert[np.argsort(slot_gpu, kind="stable")] = np.argsort(expert_gpu, kind="stable")
    return Placement(slot_gpu, slot_expert, num_experts)
