"""Expert placement inside one EP group (seed 1.1)."""
from __future__ import annotations

import numpy as np


def round_robin(num_experts: int, num_gpus: int) -> np.ndarray:
    """Expert i -> GPU (i mod G): one expert per GPU when E <= G, ceil(E/G) per GPU when E > G."""
    if num_experts <= 0 or num_gpus <= 0:
        raise ValueError('"num_experts" and "num_gpus" must be > 0.')
    return np.arange(num_experts) % num_gpus


PLACEMENT = {"round_robin": round_robin}


def place(strategy: str, num_experts: int, num_gpus: int) -> np.ndarray:
    try:
        fn = PLACEMENT[strategy]
    except KeyError:
        raise KeyError(f"unknown placement {strategy!r}; valid: {', '.join(PLACEMENT)}") from None
    return fn(num_experts, num_gpus)
