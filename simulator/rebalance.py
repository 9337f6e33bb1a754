"""EPLB rebalancing every K steps (placement.rebalance_every_steps) and the weight migration it costs.

Between rebalances the placement is fixed: the first K steps run EPLB's placement of step 0's
routing law (as a single-step eplb run does; without rebalancing, eplb re-solves every step from
that step's law, an oracle of a drifting law); after steps K, 2K, ... each (EP group, MoE
layer) is re-solved by the same algorithm (simulator/workload/eplb.py) from the tokens per expert
observed over the last K steps (expert_load.csv's counts), as DeepSeek's deployment re-runs EPLB
on its recent load statistics. EPLB packs from scratch; each new GPU's set of experts then goes to
the GPU of its node that already holds most of them (a relabelling that changes no GPU's or node's
load), so only the experts that really change GPU move.

Migration: a GPU needs an expert's weights when its new slots hold an expert none of its old slots
held. It receives them from a GPU that held that expert before (one on its own node when there is
one, else the first), in one point-to-point transfer per (source, destination) pair carrying all the
experts that pair moves, every EP group and MoE layer at once, through the same fluid network
(ports, rates, latencies) the step is simulated on. Bytes per expert: its BF16 weights; in training
also its optimizer state (FP32 master weights and the two Adam moments, sharded over expert DP with
the distributed optimizer), since the expert's update moves with it; gradients are empty between
steps. The migration's time is reported per rebalance and not added to any step's time (it may run
between steps or overlap the next one; epsim does not schedule it).
"""
from __future__ import annotations

import numpy as np
import simpy

from hardware.topology import Topology
from simulator.engine.network import FlowBatch, Network
from simulator.engine.rings import p2p_paths
from simulator.scenario.memory import WEIGHT_BYTES, optimizer_bytes, serving_weight_bytes
from simulator.steps import summed_over_groups
from simulator.workload.placement import Placement, eplb_placement


def expert_bytes(s) -> float:
    """Bytes that move with one routed expert (one expert-TP slice: expert TP is 1 with eplb)."""
    params = s.model.expert_params
    if s.workload.mode != "train":
        return float(params * serving_weight_bytes(s))  # the serving dtype's weights (FP8 with FP8 GEMMs)
    shards = s.ranks.expert_dp_size if s.training.distributed_optimizer else 1
    return float(params * WEIGHT_BYTES + params * optimizer_bytes(s) / shards)


def keep_in_place(new: Placement, old: Placement, node: np.ndarray) -> Placement:
    """The new placement with its GPUs' sets of experts handed to the GPUs (of the same node) that
    already hold most of them: a GPU's load, and a node's, do not depend on which GPU of the node
    holds the set, but the weights to move do (EPLB re-packs from scratch, so nearly every slot
    would change). A maximum-overlap assignment per node (Hungarian, scipy)."""
    from scipy.optimize import linear_sum_assignment

    per_gpu = len(new.slot_gpu) // (int(new.slot_gpu.max()) + 1)
    blocks = new.slot_expert.reshape(-1, per_gpu)  # slot i on GPU i // per_gpu (eplb's layout)
    held = [set(old.slot_expert[old.slot_gpu == g].tolist()) for g in range(len(blocks))]
    out = blocks.copy()
    for n in np.unique(node):
        gpus = np.nonzero(node == n)[0]
        overlap = np.array([[len(held[g] & set(blocks[b].tolist())) for g in gpus] for b in gpus])
        rows, cols = linear_sum_assignment(-overlap)
        out[gpus[cols]] = blocks[gpus[rows]]
    return Placement(new.slot_gpu, out.ravel(), new.num_experts)


def rebalanced(s, observed_tokens: dict, old: dict) -> dict:
    """(EP group, MoE layer) -> EPLB's placement of the tokens per logical expert observed
    (expert_tokens' totals), on the same slots as the old placement, each GPU's set of experts on
    the GPU of its node that moves the fewest weights (keep_in_place). In training every EP group
    of a layer holds the same placement, solved from their summed loads (their gradients are
    summed slot by slot)."""
    p = s.parallel.ep_size
    loads = {key: np.asarray(tokens, dtype=np.float64) for key, tokens in observed_tokens.items()}
    if s.backward:  # training: one placement per layer, from the load all its EP groups saw (as build_workload packs it)
        loads = summed_over_groups(loads)
    out, solved = {}, {}
    for group, layer in sorted(loads):
        load = loads[group, layer]
        if s.backward and layer in solved:
            out[group, layer] = solved[layer]
            continue
        members = s.ranks.ep_group(group)
        if load.sum() == 0:
            load = np.ones_like(load)
        fresh = eplb_placement(load, old[group, layer].num_slots, p, members.num_nodes,
                               hierarchical=s.routing.max_nodes_per_token is not None)
        out[group, layer] = solved[layer] = keep_in_place(fresh, old[group, layer], members.node)
    return out


def moves(s, old: dict, new: dict) -> dict[tuple[int, int], int]:
    """(source GPU, destination GPU), global ids -> experts whose weights that pair carries."""
    pairs: dict[tuple[int, int], int] = {}
    for key in sorted(new):
        group = s.ranks.ep_group(key[0])
        before, after = old[key], new[key]
        for rank in range(s.parallel.ep_size):
            had = set(before.slot_expert[before.slot_gpu == rank].tolist())
            for expert in sorted(set(after.slot_expert[after.slot_gpu == rank].tolist()) - had):
                holders = np.unique(before.slot_gpu[before.slot_expert == expert])
                local = holders[group.node[holders] == group.node[rank]]
                src = int((local if len(local) else holders)[0])
                pair = (int(group.gpus[src]), int(group.gpus[rank]))
                pairs[pair] = pairs.get(pair, 0) + 1
    return pairs


def migration_s(s, pairs: dict[tuple[int, int], int], num_bytes_per_expert: float) -> float:
    """Seconds until the last weights have arrived: every pair's transfer started at once on an
    idle network, each done at its flow's end plus its path latency."""
    if not pairs:
        return 0.0
    env = simpy.Environment()
    topo = Topology(s.cluster)
    network = Network(env, topo)
    flows, ports, nbytes, latency = [], [], [], []
    for i, ((src, dst), count) in enumerate(sorted(pairs.items())):
        path = p2p_paths(src, dst, count * num_bytes_per_expert, topo)
        flows.append(np.full(len(path.entry_port), i))
        ports.append(path.entry_port)
        nbytes.append(path.entry_bytes)
        latency.append(float(path.pair_latency_s[0]))
    done = np.full(len(pairs), np.nan)

    def finished(which: np.ndarray, now: float) -> None:
        done[which] = now + np.asarray(latency)[which]

    network.add(FlowBatch(np.concatenate(flows), np.concatenate(ports), np.concatenate(nbytes), len(pairs), finished))
    env.run()
    return float(np.nanmax(done))


def rebalance(s, observed_tokens: dict, old: dict) -> tuple[dict, dict]:
    """The new placements and the migration's report: experts moved, bytes, seconds, transfers."""
    new = rebalanced(s, observed_tokens, old)
    pairs = moves(s, old, new)
    per_expert = expert_bytes(s)
    moved = sum(pairs.values())
    return new, {"experts_moved": int(moved), "migration_bytes": moved * per_expert,
                 "migration_time_s": migration_s(s, pairs, per_expert), "transfers": len(pairs)}

