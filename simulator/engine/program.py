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
from functools import cached_property
from typing import NamedTuple

from simulator.scenario.memory import experts_per_gpu, vocab_params_held
from simulator.stages import FWD, Task, rank_layers, slots

FORWARD, BACKWARD, UPDATE = "forward", "backward", "update"  # update: gradient sync and optimizer
RECOMPUTE = "recompute"  # a layer's forward re-run inside the backward (training.recompute: full)
SUFFIX = {BACKWARD: "_bwd", RECOMPUTE: "_recompute"}


class OpId(NamedTuple):
    """Which op ran: the fields a trace slice and a record row carry, in this order."""
    layer: int  # global layer index (a bucket: its first layer)
    op: str  # attention, dense_ffn, router, shared, experts, optimizer; or a collective kind
    phase: str  # FORWARD | BACKWARD | UPDATE
    micro_batch: int  # -1: not tied to one (the update)
    chunk: int  # -1: not tied to one

    @property
    def name(self) -> str:
        """The op with its phase: 'attention_bwd'; for collectives the kind ('dispatch_bwd')."""
        return self.op + SUFFIX.get(self.phase, "")

    @property
    def label(self) -> str:
        parts = [f"L{self.layer}" if self.layer >= 0 else "", self.name,
                 f"mb{self.micro_batch}" if self.micro_batch >= 0 else "", f"c{self.chunk}" if self.chunk >= 0 else ""]
        return " ".join(part for part in parts if part)


class Op(NamedTuple):
    """One op of a chain, the same for every (micro-batch, chunk) of the GPU's program."""
    op: str
    layer: int
    moe_layer: int  # index among MoE layers (keys routing and collectives); -1 for dense layers
    phase: str = FORWARD
    collective: bool = False  # an EP collective (kind = `name`) rather than a kernel
    overlapped: str | None = None  # collectives only: a kernel of the same layer run while in flight
    wraps: str | None = None  # tensor-parallel collectives: the kernel whose input / output they move

    @property
    def name(self) -> str:
        return self.op + SUFFIX.get(self.phase, "")

    @property
    def backward(self) -> bool:
        return self.phase == BACKWARD

    def at(self, micro_batch: int, chunk: int) -> OpId:
        return OpId(self.layer, self.op, self.phase, micro_batch, chunk)

    def side_kernel(self) -> "Op":
        """The kernel run beside this collective (its `overlapped`), in the same layer and phase."""
        return Op(self.overlapped, self.layer, self.moe_layer, self.phase)


@dataclass(frozen=True)
class Bucket:
    """Whole layers' gradients reduced by one collective (Megatron-Core fills buckets in backward
    order until they hold bucket_size parameters; epsim keeps layers whole)."""
    family: str  # "dense" (reduced over dense DP) | "expert" (over expert DP)
    index: int  # position among its family's buckets, in backward order
    layers: tuple[int, ...]  # in backward order
    num_params: int  # on this GPU

    @property
    def first_layer(self) -> int:
        return min(self.layers)


@dataclass(frozen=True)
class Program:
    """What one GPU runs: its chains and, per phase, the ops every chain runs in order; in
    training, the gradient buckets it reduces and the parameters its optimizer updates."""
    phases: tuple[tuple[Op, ...], ...]  # (forward ops, backward ops); backward empty for prefill
    chains: tuple[tuple[int, int], ...]  # (micro-batch, chunk), in launch order
    buckets: tuple[Bucket, ...] = ()  # in launch order: as their layers' backward completes
    # pipeline parallel: per model chunk its (forward ops, backward ops), and the tasks in order
    chunk_phases: tuple[tuple[tuple[Op, ...], tuple[Op, ...]], ...] = ()
    slots: tuple[tuple[Task, ...], ...] = ()  # tasks in order, grouped into slots run together
    pp_rank: int = 0

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(t for slot in self.slots for t in slot)

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(op for phase in self.phases for op in phase)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(op.layer for op in self.phases[0]))

    @cached_property
    def _layer_marks(self) -> dict:
        marks = {}
        for chunk, phases in [(None, self.phases), *enumerate(self.chunk_phases)]:
            for phase, ops in enumerate(phases):
                marks[chunk, phase] = (first_of_layer(ops), last_of_layer(ops))
        return marks

    def first_of_layer(self, phase: int, chunk: int | None = None) -> tuple[bool, ...]:
        """For each op of the phase (of a model chunk, with PP): is it the first op of its layer?
        Computed once per program, not per chain."""
        return self._layer_marks[chunk, phase][0]

    def last_of_layer(self, phase: int, chunk: int | None = None) -> tuple[bool, ...]:
        return self._layer_marks[chunk, phase][1]


def last_of_layer(ops) -> tuple[bool, ...]:
    return tuple(k == len(ops) - 1 or ops[k + 1].layer != op.layer for k, op in enumerate(ops))


def first_of_layer(ops) -> tuple[bool, ...]:
    return tuple(k == 0 or ops[k - 1].layer != op.layer for k, op in enumerate(ops))


def tensor_parallel(kernel: Op) -> list[Op]:
    """A tensor-parallel kernel with sequence parallelism (Megatron): its input all-gathered over
    the TP group before it, its output reduce-scattered after. The backward runs the same kinds
    in the same order: the output gradient is all-gathered first (the backward of the forward's
    reduce-scatter) and the input gradient reduce-scattered last (the backward of its all-gather).
    Megatron also re-gathers the input for the weight gradient, overlapped with the data
    gradient: not simulated."""
    return [Op("tp_allgather", kernel.layer, kernel.moe_layer, kernel.phase, collective=True, wraps=kernel.op),
            kernel,
            Op("tp_reducescatter", kernel.layer, kernel.moe_layer, kernel.phase, collective=True, wraps=kernel.op)]


TP_KERNELS = ("attention", "dense_ffn")  # split column / row parallel; router and experts work on the local shard


def with_tensor_parallel(ops: list[Op], tp: int) -> list[Op]:
    """Wrap the TP-split kernels in their sequence-parallel collectives (nothing while TP = 1)."""
    if tp == 1:
        return ops
    return [x for op in ops for x in (tensor_parallel(op) if op.op in TP_KERNELS and not op.collective else [op])]


def with_expert_tensor_parallel(ops: list[Op], etp: int) -> list[Op]:
    """Expert TP (Megatron's MoE token dispatcher with expert_tensor_parallel_size > 1): the rows
    an expert-TP group's GPUs received are all-gathered over the group before the experts run
    their 1/etp slice, and the partial outputs reduce-scattered back to the GPU that received each
    row; the backward gathers the output gradients and reduce-scatters the input gradients the
    same way. Nothing while expert TP = 1."""
    if etp == 1:
        return ops
    out: list[Op] = []
    for op in ops:
        if op.op == "experts" and not op.collective:
            out += [Op("etp_allgather", op.layer, op.moe_layer, op.phase, collective=True, wraps=op.op), op,
                    Op("etp_reducescatter", op.layer, op.moe_layer, op.phase, collective=True, wraps=op.op)]
        else:
            out.append(op)
    return out


def layer_ops(scope: str, num_layers: int, num_dense_layers: int, has_shared: bool,
              embedding_and_head: bool = False) -> list[Op]:
    """The forward ops of the layers in scope; the token embedding belongs to the first layer and
    the LM head (with its cross-entropy) to the last, when the model is simulated whole."""
    if scope == "moe_layer":
        layers = [(0, 0)]
    else:
        layers = [(i, -1) for i in range(num_dense_layers)]
        layers += [(num_dense_layers + i, i) for i in range(num_layers - num_dense_layers)]
    shared = "shared" if has_shared else None
    whole = embedding_and_head and scope == "model"
    ops: list[Op] = []
    for layer, moe in layers:
        if whole and layer == 0:
            ops.append(Op("embedding", layer, moe))
        if scope == "model":
            ops.append(Op("attention", layer, moe))
        if moe < 0:
            ops.append(Op("dense_ffn", layer, moe))
        else:
            ops += [Op("router", layer, moe),
                    Op("dispatch", layer, moe, collective=True, overlapped=shared),
                    Op("experts", layer, moe),
                    Op("combine", layer, moe, collective=True)]
        if whole and layer == num_layers - 1:
            ops.append(Op("lm_head", layer, moe))
    return ops


OUTSIDE_LAYERS = ("embedding", "lm_head")  # not re-run by a layer's recompute


def backward_ops(forward: list[Op], recompute: bool = False) -> list[Op]:
    """The backward of a forward op list: layers in reverse; inside an MoE layer the output
    gradients are dispatched to the experts (beside the shared expert's backward), the experts'
    backward runs, the input gradients are combined back, then router and attention backward.
    With full recompute each layer first re-runs its forward (all-to-alls included) from its
    checkpointed input (Megatron-Core's full, uniform, one-layer recompute)."""
    layers: dict[int, list[Op]] = {}
    for op in forward:
        layers.setdefault(op.layer, []).append(op)
    out: list[Op] = []
    for layer in reversed(layers):
        ops = {op.op: op for op in layers[layer]}
        moe = layers[layer][0].moe_layer
        if "lm_head" in ops:
            out.append(Op("lm_head", layer, moe, BACKWARD))
        if recompute:
            out += [op._replace(phase=RECOMPUTE) for op in layers[layer] if op.op not in OUTSIDE_LAYERS]
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
        if "embedding" in ops:
            out.append(Op("embedding", layer, moe, BACKWARD))
    return out


def experts_on(num_experts: int, ep_size: int, ep_rank: int) -> int:
    """Experts on EP rank `ep_rank` under round-robin (expert i on rank i mod G, seed 1.1)."""
    return num_experts // ep_size + (ep_rank < num_experts % ep_size)


def grad_buckets(layer_params: list[tuple[int, int, int]], bucket_params: dict[str, int]) -> tuple[Bucket, ...]:
    """Buckets of each family from (layer, dense params, expert params) in forward order, filled in
    backward order until they hold bucket_params[family]; launched as soon as their last layer's
    backward is done (dense before expert at the same layer)."""
    out = []
    for column, family in ((1, "dense"), (2, "expert")):
        layers, total = [], 0
        for row in reversed(layer_params):
            if row[column] == 0:
                continue
            layers.append(row[0])
            total += row[column]
            if total >= bucket_params[family]:
                out.append(Bucket(family, len([b for b in out if b.family == family]), tuple(layers), total))
                layers, total = [], 0
        if layers:
            out.append(Bucket(family, len([b for b in out if b.family == family]), tuple(layers), total))
    return tuple(sorted(out, key=lambda b: (-b.first_layer, b.family != "dense")))


def build_program(s, num_chunks: int, gpu: int, bucket_params: dict[str, int] | None = None) -> Program:
    """The program of `gpu` from its position in the layout. Every GPU runs every layer in scope
    while PP = 1; a pipeline stage will run its own layers."""
    m, par = s.model, s.parallel
    base = layer_ops(s.workload.scope, m.num_layers, m.num_dense_layers, m.num_shared_experts > 0,
                     s.workload.embedding_and_head)
    etp = s.expert_tp

    def parallel(ops):
        return with_expert_tensor_parallel(with_tensor_parallel(ops, par.tp_size), etp)

    forward = parallel(base)
    train = s.backward
    recompute = train and s.training.recompute == "full"
    chunk_phases, tasks, rank = (), (), int(s.ranks.pp_rank[gpu])
    if par.pp_size > 1:
        chunks = rank_layers(m.num_layers, par.pp_size, par.vpp_size, rank, par.pp_schedule)
        chunk_phases = tuple((tuple(op for op in forward if op.layer in layers),
                              tuple(parallel(backward_ops([op for op in base if op.layer in layers], recompute)))
                              if train else ())
                             for layers in chunks)
        forward = [op for fwd, _ in chunk_phases for op in fwd]
        order = slots(par.pp_schedule, par.pp_size, s.workload.micro_batches, par.vpp_size, rank,
                      paired=s.pipeline.schedule == "dualpipe")
        tasks = tuple(slot for slot in (tuple(t for t in slot if train or t.phase == FWD) for slot in order) if slot)
    backward = [op for _, bwd in chunk_phases for op in bwd] if chunk_phases else (
        parallel(backward_ops(base, recompute)) if train else [])
    chains = tuple((mb, c) for mb in range(s.workload.micro_batches) for c in range(num_chunks))
    buckets = ()
    if train and bucket_params:
        with_attention = s.workload.scope == "model"
        experts = (experts_per_gpu(s) if s.placement.strategy == "eplb"  # (E + redundant) / G slots each
                   else experts_on(m.num_experts, s.parallel.ep_size, int(s.ranks.ep_rank[gpu])))
        params = []
        for layer in dict.fromkeys(op.layer for op in forward):
            moe = layer >= m.num_dense_layers or s.workload.scope == "moe_layer"
            dense = m.dense_layer_params(moe, with_attention, tp=par.tp_size) + vocab_params_held(s, (layer,))
            params.append((layer, dense, experts * (m.expert_params // etp) if moe else 0))
        buckets = grad_buckets(params, bucket_params)
    return Program((tuple(forward), tuple(backward)), chains, buckets, chunk_phases, tasks, rank)
