"""Which GPU plays which part: every GPU's (pp, dp, tp) and (ep, etp, edp) coordinates, and its groups.

Rank order is Megatron-Core's (`parallel_state`): TP varies fastest, then DP, then PP. The expert
groups are cut from the same ranks of a PP stage: inside a stage of TP x DP GPUs, expert TP varies
fastest, then EP, then expert DP (EP x ETP x EDP = TP x DP), so an EP group spans DP ranks.

    dense:   gpu = tp + TP * (dp + DP * pp)
    experts: gpu = etp + ETP * (ep + EP * (edp + EDP * pp))

Groups are arrays of global GPU indices, ordered by the rank inside the group. A group of size one
(TP and PP until the parallelism issue) is still a group: a collective over it moves nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EPGroup:
    """One EP group on the topology: its GPUs and where they sit."""
    index: int
    gpus: np.ndarray  # [P] global GPU of EP rank i
    node: np.ndarray  # [P] node of EP rank i, renumbered 0.. in node order inside the group
    rail: np.ndarray  # [P] local rank (rail) of EP rank i on its node
    member_at: np.ndarray  # [num_nodes, gpus_per_node] EP rank at (group node, rail); -1 where none

    @property
    def size(self) -> int:
        return len(self.gpus)

    @property
    def num_nodes(self) -> int:
        return self.member_at.shape[0]

    @property
    def spans_nodes(self) -> bool:
        return self.num_nodes > 1


def _groups(coords: np.ndarray, vary: int) -> np.ndarray:
    """GPUs grouped by every coordinate but axis `vary`, each group ordered along it.

    coords: [G, num_axes] coordinates of every GPU (axis 0 fastest). Returns [num_groups, size]."""
    others = np.delete(coords, vary, axis=1)
    order = np.lexsort((coords[:, vary], *others.T))  # last key primary: slowest axis first
    size = int(coords[:, vary].max()) + 1
    return order.reshape(-1, size)


@dataclass(frozen=True)
class RankLayout:
    num_gpus: int
    gpus_per_node: int
    tp_size: int = 1
    pp_size: int = 1
    ep_size: int = 1
    expert_tp_size: int = 1
    tp_rank: np.ndarray = field(init=False, repr=False)
    dp_rank: np.ndarray = field(init=False, repr=False)
    pp_rank: np.ndarray = field(init=False, repr=False)
    ep_rank: np.ndarray = field(init=False, repr=False)
    etp_rank: np.ndarray = field(init=False, repr=False)
    edp_rank: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        for name in ("num_gpus", "gpus_per_node", "tp_size", "pp_size", "ep_size", "expert_tp_size"):
            if getattr(self, name) < 1:
                raise ValueError(f'"{name}" must be >= 1.')
        if self.num_gpus % (self.tp_size * self.pp_size):
            raise ValueError('"tp_size" x "pp_size" must divide "num_gpus".')
        if self.num_gpus % (self.ep_size * self.expert_tp_size * self.pp_size):
            raise ValueError('"ep_size" x "expert_tp_size" x "pp_size" must divide "num_gpus".')
        g = np.arange(self.num_gpus)
        stage = self.num_gpus // self.pp_size
        inner = g % stage
        ranks = {
            "tp_rank": inner % self.tp_size, "dp_rank": inner // self.tp_size, "pp_rank": g // stage,
            "etp_rank": inner % self.expert_tp_size, "ep_rank": inner // self.expert_tp_size % self.ep_size,
            "edp_rank": inner // (self.expert_tp_size * self.ep_size),
        }
        for name, value in ranks.items():
            object.__setattr__(self, name, value)

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def dp_size(self) -> int:
        """Dense data parallel: GPUs / (TP x PP)."""
        return self.num_gpus // (self.tp_size * self.pp_size)

    @property
    def expert_dp_size(self) -> int:
        """Expert data parallel: GPUs / (EP x ETP x PP)."""
        return self.num_gpus // (self.ep_size * self.expert_tp_size * self.pp_size)

    @property
    def num_ep_groups(self) -> int:
        return self.num_gpus // self.ep_size

    # -- groups ------------------------------------------------------------------------------------
    def _dense(self) -> np.ndarray:
        return np.stack([self.tp_rank, self.dp_rank, self.pp_rank], axis=1)

    def _expert(self) -> np.ndarray:
        return np.stack([self.etp_rank, self.ep_rank, self.edp_rank, self.pp_rank], axis=1)

    @property
    def tp_groups(self) -> np.ndarray:
        return _groups(self._dense(), 0)

    @property
    def dp_groups(self) -> np.ndarray:
        return _groups(self._dense(), 1)

    @property
    def pp_groups(self) -> np.ndarray:
        return _groups(self._dense(), 2)

    @property
    def ep_groups(self) -> np.ndarray:
        """[num_ep_groups, ep_size]; group i is the i-th in (pp, edp, etp) order."""
        return _groups(self._expert(), 1)

    @property
    def expert_dp_groups(self) -> np.ndarray:
        return _groups(self._expert(), 2)

    def ep_group_of(self, gpu: int) -> int:
        """Index into ep_groups of the group holding `gpu`."""
        pp, edp, etp = self.pp_rank[gpu], self.edp_rank[gpu], self.etp_rank[gpu]
        return int((pp * self.expert_dp_size + edp) * self.expert_tp_size + etp)

    def ep_group(self, index: int) -> EPGroup:
        gpus = self.ep_groups[index]
        global_node = gpus // self.gpus_per_node
        nodes, node = np.unique(global_node, return_inverse=True)
        rail = gpus % self.gpus_per_node
        member_at = np.full((len(nodes), self.gpus_per_node), -1, dtype=np.int64)
        member_at[node, rail] = np.arange(len(gpus))
        return EPGroup(index, gpus, node.astype(np.int64), rail, member_at)

    def coordinates(self, gpu: int) -> dict[str, int]:
        """A GPU's position, as a launcher would print it."""
        return {name: int(getattr(self, f"{name}_rank")[gpu]) for name in ("pp", "dp", "tp", "edp", "ep", "etp")}
