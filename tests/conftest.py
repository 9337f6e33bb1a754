import copy

import pytest
import simpy

from simulator.scenario import build_scenario

TINY = {
    "name": "tiny",
    # kernels issued for free: the tiny model's kernels are shorter than an eager launch, so with the
    # preset's host cost every tiny run would be host-bound (tests/test_host.py turns it on)
    "hardware": {"preset": "h100-sxm", "nodes": 2, "gpus_per_node": 4, "host_launch_us": 0.0},
    "model": {"preset": "tiny-moe"},
    "parallel": {"ep_size": 8},
    "workload": {"mode": "train", "tokens_per_gpu": 256, "micro_batches": 2},
    "routing": {"distribution": "uniform", "seed": 0},
    "network": {"all_to_all": "hierarchical"},
    "pipeline": {"overlap": "three_stream", "chunks": 2},
}


@pytest.fixture
def env():
    return simpy.Environment()


def tiny_dict(**sections) -> dict:
    """The tiny scenario with some sections' keys replaced: tiny_dict(routing={"distribution": "zipf"})."""
    data = copy.deepcopy(TINY)
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


@pytest.fixture
def tiny():
    return build_scenario(tiny_dict())


def make_scenario(**sections):
    return build_scenario(tiny_dict(**sections))
