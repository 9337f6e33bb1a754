"""DeepSeek's Expert Parallelism Load Balancer (EPLB), in numpy.

A re-implementation of `rebalance_experts` from github.com/deepseek-ai/EPLB (eplb.py and README.md at
commit d52c72d, MIT licence): replicate the hottest experts onto redundant physical slots and pack the
physical experts onto GPUs so per-GPU load is balanced. When the number of nodes divides the number of
expert groups it balances hierarchically (groups -> nodes, replicas within a node, replicas -> the node's
GPUs) so group-limited routing stays inside a node; otherwise it balances globally.

Conventions follow the reference: loads are float32 (as `weight.float()` there), physical slot p lives on
GPU p // (num_replicas // num_gpus), a logical expert's replicas are ranked in the order they were made
(rank 0 is its original slot), and ties go to the lowest index. One difference: the reference sorts with
torch's unstable sort, whose order among equal loads is an implementation detail past 16 items; here
equal loads keep index order (a stable sort), so outputs agree exactly whenever the loads being sorted
have no ties (always for the README example).
"""
from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Split each row's n items into `num_packs` packs of exactly n / num_packs items, balancing pack load.

    Greedy, as the reference's `balanced_packing`: items in decreasing weight, each into the lightest
    pack that still has room (the lowest-numbered on ties). This is the "modified LPT" rule for
    cardinality-constrained partitioning. weight is [X, n]; returns `pack_index` [X, n] (the pack of each
    item) and `rank_in_pack` [X, n] (its position among the pack's items, in placement order).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f'"weight" must be 2-D [rows, items], got shape {weight.shape}.')
    num_rows, num_items = weight.shape
    if num_packs <= 0 or num_items % num_packs != 0:
        raise ValueError(f'"num_packs" must be > 0 and divide the {num_items} items, got {num_packs}.')
    items_per_pack = num_items // num_packs
    if items_per_pack == 1:
        pack_index = np.broadcast_to(np.arange(num_items, dtype=np.int64), weight.shape).copy()
        return pack_index, np.zeros(weight.shape, dtype=np.int64)

    order = np.argsort(-weight.astype(np.float32), axis=-1, kind="stable")
    rows = np.arange(num_rows)
    pack_load = np.zeros((num_rows, num_packs), dtype=weight.dtype)
    pack_count = np.zeros((num_rows, num_packs), dtype=np.int64)
    pack_index = np.empty(weight.shape, dtype=np.int64)
    rank_in_pack = np.empty(weight.shape, dtype=np.int64)
    for step in range(num_items):
        item = order[:, step]
        pack = np.argmin(np.where(pack_count < items_per_pack, pack_load, np.inf), axis=-1)
        pack_index[rows, item] = pack
        rank_in_pack[rows, item] = pack_count[rows, pack]
        pack_load[rows, pack] += weight[rows, item]
        pack_count[rows, pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread each row's `num_log` logical experts over `num_phy` >= num_log physical slots.

    As the reference's `replicate_experts`: slot i < num_log holds expert i; each further slot goes to
    the expert whose per-replica load (load / replica count) is currently highest, which greedily
    minimises the largest per-replica load. weight is [X, num_log]; returns `phy2log` [X, num_phy]
    (the expert in each slot), `rank` [X, num_phy] (which replica of its expert the slot is) and
    `logcnt` [X, num_log] (replicas per expert).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f'"weight" must be 2-D [rows, experts], got shape {weight.shape}.')
    num_rows, num_log = weight.shape
    if num_phy < num_log:
        raise ValueError(f'"num_phy" must be >= the {num_log} logical experts, got {num_phy}.')
    rows = np.arange(num_rows)
    phy2log = np.broadcast_to(np.arange(num_phy, dtype=np.int64), (num_rows, num_phy)).copy()
    rank = np.zeros((num_rows, num_phy), dtype=np.int64)
    logcnt = np.ones((num_rows, num_log), dtype=np.int64)
    # float32 loads divide in float32, as torch does for float32 / int64.
    ratio_dtype = np.result_type(weight.dtype, np.float32)
    for slot in range(num_log, num_phy):
        hottest = np.argmax(weight / logcnt.astype(ratio_dtype), axis=-1)
        phy2log[:, slot] = hottest
        rank[:, slot] = logcnt[rows, hottest]
        logcnt[rows, hottest] += 1
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of a batch of permutations [X, n]."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=-1)
    return inv


def rebalance_experts_hierarchical(
    weight: np.ndarray, num_physical_experts: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's hierarchical policy; with num_groups = num_nodes = 1 it is the global policy.

    1. pack expert groups onto nodes (balanced_packing of group loads), numbering the logical experts
       node-major ("mlog": node n owns mlog ids [n * E / num_nodes, (n + 1) * E / num_nodes));
    2. replicate each node's experts onto its num_physical_experts / num_nodes slots;
    3. pack each node's physical experts (each carrying load / replica count) onto its GPUs.
    weight is float [layers, E]; returns `phy2log` [layers, num_physical_experts], `phyrank` (replica
    rank of each slot) and `logcnt` [layers, E].
    """
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    phy_per_gpu = num_physical_experts // num_gpus
    log_per_node = num_logical // num_nodes

    # Step 1: groups -> nodes.
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    group_start = (group_pack * groups_per_node + group_rank) * group_size
    log2mlog = (group_start[:, :, None] + np.arange(group_size)).reshape(num_layers, num_logical)
    mlog2log = _inverse(log2mlog)

    # Step 2: replicas within each node; rows are (layer, node) pairs.
    mlog_load = np.take_along_axis(weight, mlog2log, axis=-1).reshape(-1, log_per_node)
    phy2mlog, phyrank, mlogcnt = replicate_experts(mlog_load, num_physical_experts // num_nodes)

    # Step 3: a node's physical experts -> its GPUs; "pphy" numbers slots GPU-major within the node.
    phy_load = np.take_along_axis(mlog_load / mlogcnt.astype(mlog_load.dtype), phy2mlog, axis=-1)
    gpu_pack, gpu_rank = balanced_packing(phy_load, num_gpus // num_nodes)
    pphy2phy = _inverse(gpu_pack * phy_per_gpu + gpu_rank)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=-1).reshape(num_layers, num_nodes, -1)
    pphy2mlog = (pphy2mlog + (np.arange(num_nodes) * log_per_node)[None, :, None]).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=-1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=-1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=-1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plan expert replication and placement for every MoE layer (the reference's entry point).

    weight: [layers, num_logical_experts] load per logical expert (e.g. tokens routed), >= 0;
    num_replicas: physical expert slots (logical + redundant), a multiple of num_gpus;
    num_groups: expert groups of group-limited routing; num_nodes: server nodes (fast intra-node links);
    num_gpus: GPUs in the EP group. Hierarchical policy when num_nodes divides num_groups (then
    num_groups must divide the experts and num_nodes the GPUs), global policy otherwise.
    Returns int64 arrays `phy2log` [layers, num_replicas] (the logical expert in each slot; slot p is on
    GPU p // (num_replicas // num_gpus)), `log2phy` [layers, num_logical_experts, max replicas] (the
    slots of each expert by replica rank, padded with -1) and `logcnt` [layers, num_logical_experts].
    """
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f'"weight" must be 2-D [layers >= 1, experts >= 1], got shape {weight.shape}.')
    if not np.issubdtype(weight.dtype, np.number) or not np.all(np.isfinite(weight)) or np.any(weight < 0):
        raise ValueError('"weight" must hold finite loads >= 0.')
    num_layers, num_logical = weight.shape
    for name, value in (("num_groups", num_groups), ("num_nodes", num_nodes), ("num_gpus", num_gpus)):
        if value <= 0:
            raise ValueError(f'"{name}" must be > 0, got {value}.')
    if num_replicas < num_logical or num_replicas % num_gpus != 0:
        raise ValueError(
            f'"num_replicas" must be >= the {num_logical} logical experts and a multiple of num_gpus '
            f"({num_gpus}), got {num_replicas}."
        )
    weight = weight.astype(np.float32)
    if num_groups % num_nodes == 0:
        if num_logical % num_groups != 0:
            raise ValueError(f'"num_groups" ({num_groups}) must divide the {num_logical} logical experts.')
        if num_gpus % num_nodes != 0:
            raise ValueError(f'"num_nodes" ({num_nodes}) must divide num_gpus ({num_gpus}).')
        phy2log, phyrank, logcnt = rebalance_experts_hierarchical(
            weight, num_replicas, num_groups, num_nodes, num_gpus
        )
    else:
        phy2log, phyrank, logcnt = rebalance_experts_hierarchical(weight, num_replicas, 1, 1, num_gpus)

    max_replicas = int(logcnt.max())
    log2phy = np.full((num_layers, num_logical * max_replicas), -1, dtype=np.int64)
    slots = np.broadcast_to(np.arange(num_replicas, dtype=np.int64), phy2log.shape)
    np.put_along_axis(log2phy, phy2log * max_replicas + phyrank, slots, axis=-1)
    return phy2log, log2phy.reshape(num_layers, num_logical, max_replicas), logcnt


def gpu_loads(weight: np.ndarray, phy2log: np.ndarray, logcnt: np.ndarray, num_gpus: int) -> np.ndarray:
    """Load per GPU [layers, num_gpus] of a plan, each replica taking its expert's load / replica count."""
    weight = np.asarray(weight, dtype=np.float64)
    per_replica = np.take_along_axis(weight / logcnt, phy2log, axis=-1)
    return per_replica.reshape(weight.shape[0], num_gpus, -1).sum(-1)
