"""The per-GPU memory a layout needs (seed 2.2, 4.1, 4.2) and the layers a run covers."""
from __future__ import annotations

from simulator.scenario.schema import Scenario

# Bytes of state per parameter. Prefill holds BF16 weights. Training with mixed-precision Adam holds
# BF16 weights and gradients plus FP32 master weights and two FP32 moments (2 + 2 + 4 + 4 + 4);
# optimizer-state sharding across DP replicas is not modelled.
BYTES_PER_PARAM = {"prefill": 2, "train": 16}


def experts_per_gpu(s: Scenario) -> int:
    """The most experts one GPU holds (seed 1.1: one when E <= G, E / G when E > G)."""
    return max(1, s.model.num_experts // s.parallel.ep_size)


def moe_layers_in_scope(s: Scenario) -> int:
    return 1 if s.workload.scope == "moe_layer" else s.model.num_moe_layers


def memory_per_gpu(s: Scenario) -> dict:
    """Static memory per GPU: weights (and gradients + optimizer state when training)."""
    expert_params = experts_per_gpu(s) * moe_layers_in_scope(s) * s.model.expert_params
    replicated = s.model.replicated_params(s.workload.scope)
    per_param = BYTES_PER_PARAM[s.workload.mode]
    return {
        "expert_params": expert_params,
        "replicated_params": replicated,
        "bytes_per_param": per_param,
        "static_bytes": (expert_params + replicated) * per_param,
        "hbm_bytes": s.cluster.gpu.hbm_bytes,
    }
