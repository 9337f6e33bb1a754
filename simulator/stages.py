"""Pipeline stages: which layers each PP rank holds, and the order it runs its tasks (schedules).

Below the scenario rules (memory counts the activations a schedule holds), the workload (routing
covers a stage's own MoE layers) and the engine (which runs the tasks).

A task is (phase, micro-batch, model chunk): the forward or backward of one micro-batch through
one of the rank's model chunks (virtual stages; one unless interleaved). With p ranks and v
chunks, virtual stage j = chunk x p + rank holds the j-th of the p x v slices of the layers, so a
micro-batch visits ranks 0, 1, .., p-1, 0, 1, .. (Megatron-Core's interleaving).

- gpipe: every forward, then every backward (in reverse micro-batch order).
- 1f1b (PipeDream-flush, Megatron's default): rank s runs p - s - 1 warm-up forwards, then one
  forward and one backward alternately, then the remaining backwards. Bubble (p-1)/(m+p-1).
- interleaved (Megatron-Core's interleaved 1F1B): forwards in groups of p micro-batches per chunk,
  (p - s - 1) x 2 + (v - 1) x p warm-up forwards; bubble (p-1)/(v m + p-1). Needs m % p == 0.
- dualpipe (DeepSeek-V3): bidirectional, forward and backward of two micro-batches overlapped in
  one slot; needs p even, m even and m >= 2p.

These are pure functions of (p, m, v, rank); the engine runs the tasks in this order, each task
waiting for its input from the neighbouring rank.
"""
from __future__ import annotations

from typing import NamedTuple

FWD, BWD = "forward", "backward"


class Task(NamedTuple):
    phase: str
    micro_batch: int
    chunk: int  # model chunk on this rank (virtual stage = chunk x p + rank)


def gpipe(p: int, m: int, v: int, rank: int) -> list[Task]:
    return [Task(FWD, mb, 0) for mb in range(m)] + [Task(BWD, mb, 0) for mb in reversed(range(m))]


def one_f_one_b(p: int, m: int, v: int, rank: int) -> list[Task]:
    warmup = warmup_forwards("1f1b", p, m, v, rank)
    order = [Task(FWD, mb, 0) for mb in range(warmup)]
    for i in range(m - warmup):
        order += [Task(FWD, warmup + i, 0), Task(BWD, i, 0)]
    order += [Task(BWD, mb, 0) for mb in range(m - warmup, m)]
    return order


def _interleaved_task(k: int, p: int, v: int, phase: str) -> Task:
    """The k-th forward (or backward) of a rank in Megatron-Core's interleaved order."""
    group, within = divmod(k, p * v)
    chunk = within // p
    if phase == BWD:
        chunk = v - 1 - chunk
    return Task(phase, group * p + within % p, chunk)


def interleaved(p: int, m: int, v: int, rank: int) -> list[Task]:
    total = m * v
    warmup = warmup_forwards("interleaved", p, m, v, rank)
    order = [_interleaved_task(k, p, v, FWD) for k in range(warmup)]
    for i in range(total - warmup):
        order += [_interleaved_task(warmup + i, p, v, FWD), _interleaved_task(i, p, v, BWD)]
    order += [_interleaved_task(k, p, v, BWD) for k in range(total - warmup, total)]
    return order


def dualpipe_slots(p: int, m: int, rank: int) -> list[tuple[Task, ...]]:
    """DeepSeek's DualPipe (deepseek-ai/DualPipe, dualpipe.py DualPipe.step), as slots of one task
    or of an overlapped forward + backward pair. Half the micro-batches enter at rank 0 (direction
    0), half at rank p-1 (direction 1); rank r holds stage r of direction 0 and stage p-1-r of
    direction 1, so Task.chunk is the direction. The reference splits backwards into input- and
    weight-gradient parts (zero bubble); epsim runs each backward whole where it is scheduled."""
    half_ranks, half = p // 2, m // 2
    half_rank = min(rank, p - 1 - rank)
    middle = rank in (half_ranks - 1, half_ranks)
    direction = (lambda phase: phase) if rank < half_ranks else (lambda phase: 1 - phase)
    nxt = {(FWD, 0): 0, (FWD, 1): 0, (BWD, 0): 0, (BWD, 1): 0}

    def task(phase_kind: str, phase: int) -> Task:
        d = direction(phase)
        k = nxt[phase_kind, d]
        nxt[phase_kind, d] += 1
        return Task(phase_kind, d * half + k, d)

    slots: list[tuple[Task, ...]] = []
    for _ in range((half_ranks - half_rank - 1) * 2):  # step 1: nF0
        slots.append((task(FWD, 0),))
    for _ in range(half_rank + 1):  # step 2: nF0F1
        slots += [(task(FWD, 0),), (task(FWD, 1),)]
    for _ in range(half_ranks - half_rank - 1):  # step 3: nB1W1F1
        slots += [(task(BWD, 1),), (task(FWD, 1),)]
    for i in range(half - p + half_rank + 1):  # step 4 (main): nF0B1F1B0
        if i == 0 and middle:  # the reference does not overlap these two, to shrink the bubble
            slots += [(task(FWD, 0),), (task(BWD, 1),)]
        else:
            slots.append((task(FWD, 0), task(BWD, 1)))
        slots.append((task(FWD, 1), task(BWD, 0)))
    for _ in range(half_ranks - half_rank - 1):  # step 5: nB1F1B0
        slots += [(task(BWD, 1),), (task(FWD, 1), task(BWD, 0))]
    for _ in range(half_rank + 1):  # step 6: nB1B0
        slots += [(task(BWD, 1),), (task(BWD, 0),)]
    for _ in range(half_ranks - half_rank - 1):  # step 7: nWB0
        slots.append((task(BWD, 0),))
    return slots


SCHEDULES = {"1f1b": one_f_one_b, "interleaved": interleaved, "gpipe": gpipe}


def warmup_forwards(name: str, p: int, m: int, v: int, rank: int) -> int:
    """The forwards a 1F1B rank runs before its first backward (interleaved: Megatron-Core's count)."""
    if name == "interleaved":
        return min((p - rank - 1) * 2 + (v - 1) * p, m * v)
    return min(p - rank - 1, m)


def slots(name: str, p: int, m: int, v: int, rank: int, paired: bool = False) -> list[tuple[Task, ...]]:
    """The rank's tasks in order, grouped into slots run together (DualPipe's pairs). paired: the
    interleaved schedule's steady-state steps, a forward and the backward after it, each run as one
    slot with their ops interleaved, as Megatron-Core's EP all-to-all overlap does under PP (combined
    1F1B, `overlap_moe_expert_parallel_comm`: the all-to-all of one hidden by the other's compute).
    A step waits for both inputs and sends both outputs at its end, as Megatron's interleaved steady
    state does (send_forward_backward_recv_forward_backward), so the pairs cannot wait on each other
    across ranks: every rank has forwards to warm up with (v > 1). The warm-up forwards and
    cool-down backwards stay alone, and a step whose backward is its own forward's (on the last
    virtual stage) runs as two. The order of the tasks does not change."""
    if name == "dualpipe":
        return dualpipe_slots(p, m, rank)
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline schedule {name!r}; valid: {', '.join([*SCHEDULES, 'dualpipe'])}") from None
    order = fn(p, m, v, rank)
    if not paired or name != "interleaved":
        return [(t,) for t in order]
    # the steady state's steps, (forward warm-up + i, backward i), each one slot; on the last
    # virtual stage a step's backward can be its own forward's, which then run one after the other
    warmup = warmup_forwards(name, p, m, v, rank)
    end = len(order) - warmup  # the cool-down's backwards start here
    out = [(t,) for t in order[:warmup]]
    for i in range(warmup, end, 2):
        f, b = order[i], order[i + 1]
        out += [(f,), (b,)] if (f.micro_batch, f.chunk) == (b.micro_batch, b.chunk) else [(f, b)]
    return out + [(t,) for t in order[end:]]


def schedule(name: str, p: int, m: int, v: int, rank: int) -> list[Task]:
    return [t for slot in slots(name, p, m, v, rank) for t in slot]


def virtual_stage(name: str, p: int, rank: int, chunk: int) -> int:
    """The stage (along its micro-batches' path) a rank's model chunk holds."""
    if name == "dualpipe":
        return rank if chunk == 0 else p - 1 - rank
    return chunk * p + rank


def rank_of_stage(name: str, p: int, stage: int, chunk: int) -> int:
    """The rank holding `stage` of the path that model chunk `chunk` (DualPipe: direction) is on."""
    if name == "dualpipe":
        return stage if chunk == 0 else p - 1 - stage
    return stage % p


def chunk_of_stage(name: str, p: int, stage: int, chunk: int) -> int:
    """The model chunk, on its rank, of `stage` on the same path as `chunk`."""
    return chunk if name == "dualpipe" else stage // p


def num_stages(name: str, p: int, v: int) -> int:
    return p if name == "dualpipe" else p * v


def split_layers(num_layers: int, num_slices: int) -> list[range]:
    """The layers of each virtual stage, as even as possible (earlier slices take the remainder)."""
    base, extra = divmod(num_layers, num_slices)
    out, start = [], 0
    for j in range(num_slices):
        size = base + (1 if j < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def rank_layers(num_layers: int, p: int, v: int, rank: int, name: str = "1f1b") -> list[range]:
    """The layers of each of `rank`'s model chunks (virtual stage chunk x p + rank; DualPipe:
    stage rank of direction 0 and stage p-1-rank of direction 1, twice the parameters)."""
    if name == "dualpipe":
        stages = split_layers(num_layers, p)
        return [stages[rank], stages[p - 1 - rank]]
    slices = split_layers(num_layers, p * v)
    return [slices[chunk * p + rank] for chunk in range(v)]


def peak_in_flight(tasks: list[Task], weight: dict[int, float]) -> float:
    """The most activation bytes held at once: a forward keeps weight[chunk] until its backward."""
    held, peak = 0.0, 0.0
    for t in tasks:
        held += weight[t.chunk] if t.phase == FWD else -weight[t.chunk]
        peak = max(peak, held)
    return peak
