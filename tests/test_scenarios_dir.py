"""Every shipped scenario loads as-is and runs (with a short horizon where it is large)."""
from pathlib import Path

import pytest

from simulator.engine import simulate
from simulator.metrics import summarize
from simulator.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).parents[1] / "scenarios").glob("*.yaml"))
# a Megatron-style batch (training.global_batch_size) is dropped for the short horizon's own
SHORT = [("training.global_batch_size", None), ("workload.tokens_per_gpu", 128), ("workload.micro_batches", 1),
         ("pipeline.chunks", 1)]


def test_the_default_scenario_exists():
    assert any(p.name == "default.yaml" for p in SCENARIOS)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_loads_and_runs_with_a_short_horizon(path):
    full = load_scenario(path)
    par, w = full.parallel, full.workload
    short = SHORT
    if par.pp_schedule == "dualpipe":  # DualPipe's shortest step: 2 x pp_size micro-batches
        short = [*SHORT[:2], ("workload.micro_batches", 2 * par.pp_size), *SHORT[3:]]
    if w.mode == "decode":  # the batch is derived from the sequences per GPU
        short = [("workload.batch_per_gpu", 8)]
    elif w.two_batch_overlap:  # two micro-batches by definition
        short = [key_value for key_value in SHORT if key_value[0] != "workload.micro_batches"]
    summary = summarize(simulate(load_scenario(path, short)))
    assert summary["step_time_s"] > 0
    assert 0 < summary["mfu"] < 1
