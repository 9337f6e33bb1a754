"""The op program a GPU runs, as data (seed 3.1-3.2).

A GPU runs one chain per (micro-batch, chunk); the chains of a GPU run concurrently and contend
for its streams, so while one chain computes chunk t, another's dispatch (receive stream) and a
third's combine (send stream) are in flight: [receive t+1][compute t][send t-1]. Layer l+1 of a
chain starts only after the combine of layer l has delivered.

Every op has a structured identity (OpId: layer, op, phase, micro-batch, chunk); reports, traces
and the validation harness read those fields and never parse a label.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

FORWARD, BACKWARD = "forward", "backward"


class OpId(NamedTuple):
    """Which op ran: the fields a trace slice and a record row carry, in this order."""
    layer: int  # global layer index
    op: str  # attention, dense_ffn, router, shared, experts; or a collective: dispatch, combine
    phase: str  # FORWARD | BACKWARD
    micro_batch: int
    chunk: int

    @property
    def name(self) -> str:
        """The op with its phase: 'attention_bwd'; for collectives the kind ('dispatch_bwd')."""
        return f"{self.op}_bwd" if self.phase == BACKWARD else self.op

    @property
    def label(self) -> str:
        return f"L{self.layer} {self.name} mb{self.micro_batch} c{self.chunk}"


class Op(NamedTuple):
    """One op of a chain, the same for every (micro-batch, chunk) of the GPU's program."""
    op: str
    layer: int
    moe_layer: int  # index among MoE layers (keys routing and collectives); -1 for dense layers
    phase: str = FORWARD
    collective: bool = False  # an EP collective (kind = `name`) rather than a kernel
    overlapped: str | None = None  # collectives only: a kernel of the same layer run while in flight

    @property
    def name(self) -> str:
        return f"{self.op}_bwd" if self.phase == BACKWARD else self.op

    @property
    def backward(self) -> bool:
        return self.phase == BACKWARD

    def at(self, micro_batch: int, chunk: int) -> OpId:
        return OpId(self.layer, self.op, self.phase, micro_batch, chunk)

    def side_kernel(self) -> "Op":
        """The kernel run beside this collective (its `overlapped`), in the same layer and phase."""
        return Op(self.overlapped, self.layer, self.moe_layer, self.phase)


@dataclass(frozen=True)
class Program:
    """What one GPU runs: its chains and, per phase, the ops every chain runs in order."""
    phases: tuple[tuple[Op, ...], ...]  # (forward ops, backward ops); backward empty for prefill
    chains: tuple[tuple[int, int], ...]  # (micro-batch, chunk), in launch order

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(op for phase in self.phases for op in phase)


def layer_ops(scope: str, num_layers: int, num_dense_layers: int, has_shared: bool) -> list[Op]:
    """The forward ops of the layers in scope."""
    if scope == "moe_layer":
        layers = [(0, 0)]
    else:
        layers = [(i, -1) for i in range(num_dense_layers)]
        layers += [(num_dense_layers + i, i) for i in range(num_layers - num_dense_layers)]
    shared = "shared" if has_shared else None
    ops: list[Op] = []
    for layer, moe in layers:
        if scope == "model":
            ops.append(Op("attention", layer, moe))
        if moe < 0:
            ops.append(Op("dense_ffn", layer, moe))
            continue
        ops += [Op("router", layer, moe),
                Op("dispatch", layer, moe, collective=True, overlapped=shared),
                Op("experts", layer, moe),
                Op("combine", layer, moe, collective=True)]
    return ops


def backward_ops(forward: list[Op]) -> list[Op]:
    """The backward of a forward op list: layers in reverse; inside an MoE layer the output
    gradients are dispatched to the experts (beside the shared expert's backward), the experts'
    backward runs, the input gradients are combined back, then router and attention backward."""
    layers: dict[int, list[Op]] = {}
    for op in forward:
        layers.setdefault(op.layer, []).append(op)
    out: list[Op] = []
    for layer in reversed(layers):
        ops = {op.op: op for op in layers[layer]}
        moe = layers[layer][0].moe_layer
        if moe < 0:
            out.append(Op("dense_ffn", layer, moe, BACKWARD))
        else:
            shared = ops["dispatch"].overlapped
            out += [Op("dispatch", layer, moe, BACKWARD, collective=True, overlapped=shared),
                    Op("experts", layer, moe, BACKWARD),
                    Op("combine", layer, moe, BACKWARD, collective=True),
                    Op("router", layer, moe, BACKWARD)]
        if "attention" in ops:
            out.append(Op("attention", layer, moe, BACKWARD))
    return out


def build_program(s, num_chunks: int, gpu: int) -> Program:
    """The program of `gpu` from its position in the layout. Every GPU runs every layer in scope
    while PP = 1; a pipeline stage will run its own layers."""
    m = s.model
    forward = layer_ops(s.workload.scope, m.num_layers, m.num_dense_layers, m.num_shared_experts > 0)
    backward = backward_ops(forward) if s.workload.mode == "train" else []
    chains = tuple((mb, c) for mb in range(s.workload.micro_batches) for c in range(num_chunks))
    return Program((tuple(forward), tuple(backward)), chains)
