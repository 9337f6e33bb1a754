"""A pipeline step extended from two shorter ones matches the whole simulation (within 1 %)."""
import pytest

from simulator.api import simulate_scenario
from simulator.extension import sample_micro_batches
from tests.conftest import make_scenario


def layout(name, m, extend, v=1, host_us=0.0):
    return make_scenario(hardware={"nodes": 2, "gpus_per_node": 4, "host_launch_us": host_us}, model={"num_layers": 8},
                         parallel={"ep_size": 4, "pp_size": 2, "vpp_size": v, "pp_schedule": name},
                         workload={"micro_batches": m, "extend_micro_batches": extend}, pipeline={"chunks": 1})


@pytest.mark.parametrize("name, m, v", [("1f1b", 16, 1), ("1f1b", 64, 1), ("interleaved", 24, 2), ("dualpipe", 20, 1),
                                        ("gpipe", 16, 1)])
def test_the_extended_step_matches_the_whole_simulation(name, m, v):
    whole, _, _ = simulate_scenario(layout(name, m, "never", v))
    s = layout(name, m, "always", v)
    m1, m2 = sample_micro_batches(s)
    assert m2 < m
    extended, _, record = simulate_scenario(s)
    assert extended["step_time_s"] == pytest.approx(whole["step_time_s"], rel=0.01)
    assert extended["mfu"] == pytest.approx(whole["mfu"], rel=0.01)
    assert extended["tokens_per_s"] == pytest.approx(whole["tokens_per_s"], rel=0.01)
    assert extended["model_flop_per_step"] == pytest.approx(whole["model_flop_per_step"], rel=1e-12)
    assert sum(extended["breakdown_s"].values()) == pytest.approx(extended["step_time_s"], rel=1e-9)
    assert extended["collectives"]["dispatch"]["count"] == whole["collectives"]["dispatch"]["count"]
    assert extended["memory_per_gpu"] == whole["memory_per_gpu"]
    assert f"{m1} and {m2} of the step's {m}" in extended["provenance"]["simulated"]
    assert "simulated" not in whole["provenance"]


@pytest.mark.parametrize("name, host_us", [("1f1b", 7.0), ("dualpipe", 7.0), ("1f1b", 100.0)])
def test_the_extension_holds_with_the_host_model_hidden_or_host_bound(name, host_us):
    # 7 us: the preset's cost, at the tiny model's short kernels partly exposed; 100 us: host-bound
    whole, _, _ = simulate_scenario(layout(name, 16, "never", host_us=host_us))
    extended, _, _ = simulate_scenario(layout(name, 16, "always", host_us=host_us))
    assert whole["host"]["busy_s"] > 0
    assert extended["step_time_s"] == pytest.approx(whole["step_time_s"], rel=0.01)
    assert extended["host"]["busy_s"] == pytest.approx(whole["host"]["busy_s"], rel=0.01)
    assert extended["host"]["launches_per_gpu"] == pytest.approx(whole["host"]["launches_per_gpu"], rel=0.01)


def one_stage(overlap, m, extend):
    return make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 4},
                         parallel={"ep_size": 8}, workload={"micro_batches": m, "extend_micro_batches": extend},
                         pipeline={"chunks": 1, "overlap": overlap})


@pytest.mark.parametrize("overlap, schedule", [("none", "sequential"), ("three_stream", "dualpipe")])
def test_one_stage_accumulating_gradients_extends_like_a_pipeline(overlap, schedule):
    # PP = 1 with gradient accumulation repeats micro-batch by micro-batch too
    whole, _, _ = simulate_scenario(one_stage(overlap, 12, "never"))
    s = one_stage(overlap, 12, "always")
    assert s.pipeline.schedule == schedule
    assert sample_micro_batches(s) == (3, 7)
    extended, _, _ = simulate_scenario(s)
    assert extended["step_time_s"] == pytest.approx(whole["step_time_s"], rel=0.01)
    assert extended["collectives"]["dispatch"]["count"] == whole["collectives"]["dispatch"]["count"]
    assert extended["memory_per_gpu"] == whole["memory_per_gpu"]
    assert "3 and 7 of the step's 12" in extended["provenance"]["simulated"]


def test_lockstep_micro_batches_are_simulated_whole():
    s = make_scenario(workload={"micro_batches": 12, "extend_micro_batches": "always"},
                      pipeline={"schedule": "lockstep"})
    assert sample_micro_batches(s) is None


def test_auto_simulates_small_steps_whole():
    assert sample_micro_batches(layout("1f1b", 16, "auto")) is None
    assert sample_micro_batches(layout("1f1b", 16, "always")) is not None


def test_the_paired_interleaved_schedule_extends_too():
    # Megatron-Core's EP all-to-all overlap under PP repeats per group of p micro-batches like interleaved
    def lay(extend):
        return make_scenario(hardware={"nodes": 2, "gpus_per_node": 4}, model={"num_layers": 8},
                             parallel={"ep_size": 4, "pp_size": 2, "vpp_size": 2, "pp_schedule": "interleaved"},
                             workload={"micro_batches": 24, "extend_micro_batches": extend},
                             pipeline={"chunks": 1, "schedule": "dualpipe"})
    whole, _, _ = simulate_scenario(lay("never"))
    extended, _, _ = simulate_scenario(lay("always"))
    assert extended["step_time_s"] == pytest.approx(whole["step_time_s"], rel=0.01)
    assert "8 and 16 of the step's 24" in extended["provenance"]["simulated"]
