"""Round-robin placement as seed 1.1 states it, also when the EP size does not divide the experts:
expert i on GPU i mod G, the first E mod G GPUs holding one more."""
import numpy as np
import pytest

from simulator.engine import Run
from simulator.metrics import summarize
from simulator.scenario.memory import experts_per_gpu, local_params
from tests.conftest import make_scenario

UNEVEN = dict(hardware={"nodes": 1, "gpus_per_node": 4}, parallel={"ep_size": 4}, model={"num_experts": 10})


def test_ten_experts_on_four_gpus_give_three_three_two_two():
    run = Run(make_scenario(**UNEVEN))
    assert run.workload.expert_gpu.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    expert_params = run.s.model.expert_params * run.s.model.num_moe_layers
    held = [sum(b.num_params for b in run.programs[g].buckets if b.family == "expert") for g in range(4)]
    assert held == [3 * expert_params, 3 * expert_params, 2 * expert_params, 2 * expert_params]
    # memory counts the busiest GPU: ceil(10 / 4) = 3 experts per layer
    assert experts_per_gpu(run.s) == 3 and local_params(run.s)["expert"] == 3 * expert_params


def test_an_uneven_placement_routes_every_copy_and_loads_the_fuller_gpus_more():
    # 4 x 320 tokens = 256 whole permutations of 5 token pairs: every expert gets exactly the same count
    s = make_scenario(**{**UNEVEN, "model": {"num_experts": 10, "top_k": 2}}, routing={"distribution": "balanced"},
                      workload={"tokens_per_gpu": 320, "micro_batches": 2})
    run = Run(s)
    record = run.simulate()
    tokens = s.workload.tokens_per_gpu * 4
    per_gpu = np.zeros(4)
    for t in run.workload.traffic.values():
        per_gpu += t.recv_copies
    copies = tokens * 2 * s.workload.micro_batches * len({k[1] for k in run.workload.traffic})
    assert per_gpu.sum() == copies  # every (token, expert) pair lands somewhere
    assert per_gpu[0] / per_gpu[3] == pytest.approx(3 / 2)  # balanced experts: GPUs load as experts held
    assert summarize(record)["load_imbalance"] == pytest.approx(3 / (10 / 4), rel=1e-9)


def test_deepseek_v3_on_ep96_builds_without_group_limited_routing():
    s = make_scenario(hardware={"preset": "h100-sxm", "nodes": 12, "gpus_per_node": 8, "hbm_gb": 1000}, parallel={"ep_size": 96},
                      model={"preset": "deepseek-v3", "num_layers": 1, "num_dense_layers": 0},
                      workload={"tokens_per_gpu": 64, "micro_batches": 1}, pipeline={"chunks": 1})
    assert experts_per_gpu(s) == 3  # 256 = 64 x 3 + 32 x 2
    assert sorted(set(np.bincount(np.arange(256) % 96).tolist())) == [2, 3]
