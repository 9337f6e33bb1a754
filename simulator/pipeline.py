"""The op program one chain (one chunk of one micro-batch) runs on a GPU, seed 3.1-3.2.

Chains of the same GPU run concurrently and contend for its streams, so while one chain computes
chunk t, another's dispatch (receive stream) and a third's combine (send stream) are in flight:
[receive t+1][compute t][send t-1]. Layer l+1 of a chain starts only after the combine of layer l
has delivered. Dispatch runs on the receive stream (tokens arriving for this GPU's experts) and
combine on the send stream (results leaving them), so the two can overlap on the network.
"""
from __future__ import annotations

from typing import NamedTuple

from simulator.gpu import RECEIVE, SEND

STREAM_OF = {"dispatch": RECEIVE, "dispatch_bwd": RECEIVE, "combine": SEND, "combine_bwd": SEND}
# dispatch_bwd carries output gradients owner -> experts (the dispatch kernel, dispatch dtype, as in
# DeepSeek's trace); combine_bwd carries input gradients experts -> owner (combine dtype).
OWNER_SENDS = {"dispatch": True, "dispatch_bwd": True, "combine": False, "combine_bwd": False}
COLLECTIVE_KINDS = tuple(STREAM_OF)


class Op(NamedTuple):
    kind: str  # "compute" | "comm"
    name: str  # compute: attention, dense_ffn, router, shared, experts; comm: a COLLECTIVE_KINDS
    layer: int  # global layer index (labels)
    moe_layer: int  # index among MoE layers (keys routing and collectives); -1 for dense layers
    backward: bool = False
    overlapped: str | None = None  # comm only: a compute op (same layer) run while it is in flight

    @property
    def label(self) -> str:
        suffix = "_bwd" if self.backward and self.kind == "compute" else ""
        return f"L{self.layer} {self.name}{suffix}"


def chain_ops(mode: str, scope: str, num_layers: int, num_dense_layers: int, has_shared: bool) -> list[Op]:
    if scope == "moe_layer":
        layers = [(0, 0)]
    else:
        layers = [(i, -1) for i in range(num_dense_layers)]
        layers += [(num_dense_layers + i, i) for i in range(num_layers - num_dense_layers)]
    shared = "shared" if has_shared else None
    ops: list[Op] = []
    for layer, moe in layers:
        if scope == "model":
            ops.append(Op("compute", "attention", layer, moe))
        if moe < 0:
            ops.append(Op("compute", "dense_ffn", layer, moe))
            continue
        ops += [Op("compute", "router", layer, moe),
                Op("comm", "dispatch", layer, moe, overlapped=shared),
                Op("compute", "experts", layer, moe),
                Op("comm", "combine", layer, moe)]
    if mode == "train":
        for layer, moe in reversed(layers):
            if moe < 0:
                ops.append(Op("compute", "dense_ffn", layer, moe, True))
            else:
                ops += [Op("comm", "dispatch_bwd", layer, moe, True, overlapped=shared),
                        Op("compute", "experts", layer, moe, True),
                        Op("comm", "combine_bwd", layer, moe, True),
                        Op("compute", "router", layer, moe, True)]
            if scope == "model":
                ops.append(Op("compute", "attention", layer, moe, True))
    return ops
