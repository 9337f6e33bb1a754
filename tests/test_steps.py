"""Many steps: per-expert load monitoring and the seed's adaptive gating (2.3)."""
import numpy as np
import pytest

from simulator.api import simulate_scenario
from simulator.engine import Run
from simulator.errors import ScenarioError
from simulator.metrics import summarize
from simulator.steps import MIN_FACTOR, adapt
from tests.conftest import make_scenario

ZIPF = {"distribution": "zipf", "zipf_alpha": 1.2}


def test_one_step_is_todays_run_bit_for_bit():
    s = make_scenario(routing=ZIPF)
    summary, _, record = simulate_scenario(s)
    direct = summarize(Run(s).simulate())
    assert summary["step_time_s"] == direct["step_time_s"] and summary["mfu"] == direct["mfu"]
    assert "per_step" not in summary
    e = s.model.num_experts
    assert len(record.expert_load_rows) == e * s.model.num_moe_layers * s.ranks.num_ep_groups


def test_without_alpha_every_step_draws_fresh_tokens_from_the_same_law():
    s = make_scenario(routing=ZIPF, workload={"steps": 3})
    summary, _, record = simulate_scenario(s)
    steps = summary["per_step"]
    assert [p["step"] for p in steps] == [0, 1, 2]
    assert steps[0]["step_time_s"] == simulate_scenario(make_scenario(routing=ZIPF))[0]["step_time_s"]
    assert len({p["expert_load_max_over_mean"] for p in steps}) == 3  # fresh tokens each step
    spread = [p["expert_load_max_over_mean"] for p in steps]
    assert max(spread) / min(spread) < 1.1  # ... of one law: no drift without alpha
    loads = [r for r in record.expert_load_rows if r["step"] == 2 and r["moe_layer"] == 0 and r["ep_group"] == 0]
    assert sum(r["load"] for r in loads) == pytest.approx(1.0)
    assert sum(r["tokens"] for r in loads) == s.workload.tokens_per_gpu * 8 * s.model.top_k * s.workload.micro_batches


def test_the_gate_update_is_the_seeds_rule_applied_cumulatively():
    loads = {(0, 0): np.array([0.5, 0.25, 0.25, 0.0])}  # E = 4, avg_load 0.25
    one = adapt(None, loads, 0.4)[(0, 0)]
    assert one.tolist() == pytest.approx([1 + 0.4 * (1 - 2), 1.0, 1.0, 1 + 0.4])
    two = adapt({(0, 0): one}, loads, 0.4)[(0, 0)]
    assert two.tolist() == pytest.approx((one * one).tolist())
    hot = adapt(None, {(0, 0): np.array([0.97, 0.01, 0.01, 0.01])}, 0.9)[(0, 0)]
    assert hot[0] == MIN_FACTOR  # 1 + 0.9 x (1 - 3.88) < 0: floored, the gate stays positive


def test_adaptive_gating_brings_a_zipf_router_to_the_uniform_routers_balance_and_stays():
    """Convergence: from step 6 on, max/mean expert load within 15 % of a uniform router's."""
    uniform = simulate_scenario(make_scenario(workload={"steps": 2, "tokens_per_gpu": 512}))[0]
    floor = np.mean([p["expert_load_max_over_mean"] for p in uniform["per_step"]])
    s = make_scenario(workload={"steps": 9, "tokens_per_gpu": 512}, routing={**ZIPF, "adaptive_alpha": 0.6})
    steps = simulate_scenario(s)[0]["per_step"]
    ratios = [p["expert_load_max_over_mean"] for p in steps]
    assert ratios[0] > 4 * floor  # Zipf 1.2 over 16 experts: the hottest takes ~5x the mean
    assert all(r < 1.15 * floor for r in ratios[6:])
    assert steps[-1]["step_time_s"] < steps[0]["step_time_s"]
    assert steps[-1]["load_imbalance"] < steps[0]["load_imbalance"] / 2


def test_alpha_is_checked():
    with pytest.raises(ScenarioError) as err:
        make_scenario(routing={"adaptive_alpha": 1.0}, workload={"steps": 3})
    assert "routing.adaptive_alpha" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        make_scenario(routing={"adaptive_alpha": 0.5})
    assert "workload.steps >= 2" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        make_scenario(routing={"distribution": "balanced", "adaptive_alpha": 0.5}, workload={"steps": 2})
    assert "balanced" in str(err.value)
