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
    warmup = min(p - rank - 1, m)
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
    warmup = min((p - rank - 1) * 2 + (v - 1) * p, total)
    order = [_interleaved_task(k, p, v, FWD) for k in range(warmup)]
    for i in range(total - warmup):
        order += [_interleaved_task(warmup + i, p, v, FWD), _interleaved_task(i, p, v, BWD)]
    order += [_interleaved_task(k, p, v, BWD) for k in range(total - warmup, total)]
    return order


SCHEDULES = {"1f1b": one_f_one_b, "interleaved": interleaved, "gpipe": gpipe}


def schedule(name: str, p: int, m: int, v: int, rank: int) -> list[Task]:
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None
    return fn(p, m, v, rank)


def split_layers(num_layers: int, num_slices: int) -> list[range]:
    """The layers of each virtual stage, as even as possible (earlier slices take the remainder)."""
    base, extra = divmod(num_layers, num_slices)
    out, start = [], 0
    for j in range(num_slices):
        size = base + (1 if j < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def rank_layers(num_layers: int, p: int, v: int, rank: int) -> list[range]:
    """The layers of each of `rank`'s model chunks (virtual stage chunk x p + rank)."""
    slices = split_layers(num_layers, p * v)
    return [slices[chunk * p + rank] for chunk in range(v)]


def peak_in_flight(tasks: list[Task], weight: dict[int, float]) -> float:
    """The most activation bytes held at once: a forward keeps weight[chunk] until its backward."""
    held, peak = 0.0, 0.0
    for t in tasks:
        held += weight[t.chunk] if t.phase == FWD else -weight[t.chunk]
        peak = max(peak, held)
    return peak
