"""The GPU presets of current hardware (H200, B200, GB200 NVL72, B300, GB300 NVL72): each loads, runs on the roofline,
says where each number comes from, and a GB200 rack is one NVLink domain."""
import pytest

from hardware.presets import PRESET_DIR
from simulator.api import simulate_scenario
from tests.conftest import make_scenario

NEW_PRESETS = ("h200", "b200", "gb200-nvl72", "b300", "gb300-nvl72")
IB_KEY = "mean_ib_bytes_per_gpu"


def run(**sections):
    return simulate_scenario(make_scenario(**sections))[0]


def ib_bytes(summary: dict, kinds=None) -> float:
    return sum(c[IB_KEY] for kind, c in summary["collectives"].items() if kinds is None or kind in kinds)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_every_number_of_a_new_preset_has_its_source_beside_it(preset):
    for line in (PRESET_DIR / f"{preset}.yaml").read_text().splitlines():
        if line and not line.startswith("#") and line.split(":")[0] not in ("description", "gpu_name"):
            assert "#" in line, f"{preset}: {line!r} has no source comment"


@pytest.mark.parametrize("preset, gpus_per_node", [("h200", 8), ("b200", 8), ("gb200-nvl72", 72), ("b300", 8),
                                                    ("gb300-nvl72", 72)])
def test_new_presets_run_on_the_roofline(preset, gpus_per_node):
    s = make_scenario(hardware={"preset": preset, "nodes": 1, "gpus_per_node": gpus_per_node},
                      parallel={"ep_size": 8})
    assert s.calibration_path is None
    summary = simulate_scenario(s)[0]
    assert summary["provenance"]["hardware_preset"] == preset
    assert "roofline" in str(summary["provenance"]["compute_model"])
    assert 0 < summary["mfu"] < 1


def test_gb200_rack_runs_ep72_without_a_byte_over_infiniband():
    summary = run(hardware={"preset": "gb200-nvl72", "nodes": 1, "gpus_per_node": 72},
                  model={"num_experts": 144, "top_k": 8}, parallel={"ep_size": 72})
    assert summary["num_gpus"] == 72
    assert summary["collectives"]["dispatch"]["mean_nvlink_bytes_per_gpu"] > 0
    assert ib_bytes(summary) == 0  # dispatch, combine and the gradient all-reduces alike
    assert summary["bandwidth_utilization_step"]["ib"] == 0


def test_the_same_ep72_on_eight_gpu_nodes_crosses_infiniband():
    summary = run(hardware={"preset": "h100-sxm", "nodes": 9, "gpus_per_node": 8},
                  model={"num_experts": 144, "top_k": 8}, parallel={"ep_size": 72})
    assert ib_bytes(summary, ("dispatch", "combine")) > 0


def test_ep_groups_of_two_racks_stay_inside_their_rack_until_ep_spans_both():
    hardware = {"preset": "gb200-nvl72", "nodes": 2, "gpus_per_node": 72}
    a2a = ("dispatch", "combine", "dispatch_bwd", "combine_bwd")
    inside = run(hardware=hardware, model={"num_experts": 144, "top_k": 8}, parallel={"ep_size": 72})
    across = run(hardware=hardware, model={"num_experts": 144, "top_k": 8}, parallel={"ep_size": 144})
    assert ib_bytes(inside, a2a) == 0 and inside["collectives"]["expert_grad_allreduce"][IB_KEY] > 0
    assert ib_bytes(across, a2a) > 0
