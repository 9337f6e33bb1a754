"""Scenario loading and validation: every bad input is one ScenarioError naming key, value and rule."""
import copy
from pathlib import Path

import pytest
import yaml

from simulator.errors import ScenarioError
from simulator.scenario import apply_overrides, build_scenario, load_scenario, parse_override

ROOT = Path(__file__).resolve().parent.parent

# One node of four GPUs running the tiny model: every rule below is checked on this, changed in one place.
BASE = {
    "name": "tiny",
    "hardware": {"preset": "h100-seed", "nodes": 1, "gpus_per_node": 4},
    "model": {"preset": "tiny-moe"},
    "parallel": {"ep_size": 4},
    "workload": {"tokens_per_gpu": 128},
}


def scenario_dict(changes: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
    """BASE with dotted keys set ({"parallel.ep_size": 3}) and dotted keys removed."""
    data = copy.deepcopy(BASE)
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[leaf]
    return data


def rejection(data: dict) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        build_scenario(data)
    return info.value


def assert_names(err: ScenarioError, key: str, value, *rule_words: str) -> None:
    """The error names the key path and the value, and its message says the rule."""
    message = str(err)
    assert err.key == key
    assert err.value == value
    assert key in message
    assert repr(value) in message
    for word in rule_words:
        assert word in message, f"{word!r} missing from {message!r}"


# --- keys -------------------------------------------------------------------------------------------

def test_unknown_top_level_key_is_rejected_with_valid_keys_listed():
    err = rejection(scenario_dict({"routin": {"seed": 1}}))
    assert_names(err, "routin", {"seed": 1}, "unknown key")
    for valid in ("name", "hardware", "model", "parallel", "workload", "routing", "placement", "network", "pipeline"):
        assert valid in str(err)


@pytest.mark.parametrize("dotted, valid", [
    ("routing.zipf_alfa", "zipf_alpha"),
    ("hardware.nvlink_gbps", "nvlink_gb_per_s"),
    ("model.attention.num_head", "num_heads"),
    ("workload.tokens", "tokens_per_gpu"),
])
def test_unknown_nested_key_is_rejected_with_its_full_path_and_the_valid_keys_of_its_section(dotted, valid):
    err = rejection(scenario_dict({dotted: 1}))
    assert_names(err, dotted, 1, "unknown key", valid)


@pytest.mark.parametrize("drop, key", [
    (("name",), "name"),
    (("hardware.nodes",), "hardware.nodes"),
    (("hardware",), "hardware.nodes"),
    (("parallel.ep_size",), "parallel.ep_size"),
    (("parallel",), "parallel.ep_size"),
])
def test_missing_required_key_is_rejected_naming_the_key(drop, key):
    err = rejection(scenario_dict(drop=drop))
    assert_names(err, key, None, "required")


def test_empty_name_is_rejected():
    assert_names(rejection(scenario_dict({"name": "  "})), "name", "  ", "non-empty string")


def test_section_that_is_not_a_mapping_is_rejected():
    assert_names(rejection(scenario_dict({"routing": 3})), "routing", 3, "mapping")


# --- types and ranges -------------------------------------------------------------------------------

@pytest.mark.parametrize("dotted, value, expected", [
    ("parallel.ep_size", "8", "integer"),
    ("hardware.nodes", 1.5, "integer"),
    ("workload.tokens_per_gpu", True, "integer"),
    ("hardware.peak_bf16_tflops", "400", "number"),
    ("routing.zipf_alpha", "high", "number"),
])
def test_value_of_wrong_type_is_rejected_without_coercion(dotted, value, expected):
    assert_names(rejection(scenario_dict({dotted: value})), dotted, value, expected)


@pytest.mark.parametrize("dotted, value", [
    ("workload.tokens_per_gpu", 0),
    ("hardware.nodes", -1),
    ("hardware.nodes", 0),
    ("hardware.gpus_per_node", 0),
    ("workload.micro_batches", 0),
    ("model.top_k", 0),
    ("pipeline.chunks", -2),
    ("hardware.nvlink_gb_per_s", 0),
])
def test_zero_or_negative_size_is_rejected(dotted, value):
    assert_names(rejection(scenario_dict({dotted: value})), dotted, value, "greater than 0")


@pytest.mark.parametrize("dotted, value", [("workload.mode", "training"), ("network.all_to_all", "ring")])
def test_value_outside_a_choice_is_rejected_listing_the_choices(dotted, value):
    err = rejection(scenario_dict({dotted: value}))
    assert_names(err, dotted, value)
    assert {"workload.mode": "prefill", "network.all_to_all": "hierarchical"}[dotted] in str(err)


# --- presets ----------------------------------------------------------------------------------------

def test_unknown_hardware_preset_is_rejected_listing_the_valid_presets():
    err = rejection(scenario_dict({"hardware.preset": "a100"}))
    assert_names(err, "hardware.preset", "a100", "unknown preset")
    for valid in ("h100-seed", "h100-sxm", "h800"):
        assert valid in str(err)


def test_unknown_model_preset_is_rejected_listing_the_valid_presets():
    err = rejection(scenario_dict({"model.preset": "gpt-moe"}))
    assert_names(err, "model.preset", "gpt-moe", "unknown preset")
    for valid in ("deepseek-v3", "mixtral-8x7b", "tiny-moe"):
        assert valid in str(err)


def test_preset_path_that_does_not_exist_is_rejected(tmp_path):
    missing = str(tmp_path / "mine.yaml")
    assert_names(rejection(scenario_dict({"hardware.preset": missing})), "hardware.preset", missing, "does not exist")


# --- layout -----------------------------------------------------------------------------------------

def test_ep_size_that_does_not_divide_the_gpus_is_rejected():
    err = rejection(scenario_dict({"parallel.ep_size": 3}))
    assert_names(err, "parallel.ep_size", 3, "must divide the 4 GPUs")


def test_ep_size_larger_than_the_cluster_is_rejected():
    assert_names(rejection(scenario_dict({"parallel.ep_size": 8})), "parallel.ep_size", 8, "must divide the 4 GPUs")


def test_group_limited_routing_over_an_uneven_round_robin_is_rejected():
    data = scenario_dict({"hardware.nodes": 2, "parallel.ep_size": 8, "model.num_experts": 12,
                          "routing.max_nodes_per_token": 1})
    assert_names(rejection(data), "routing.max_nodes_per_token", 1, "some GPUs 2 experts and others 1")


def test_top_k_above_num_experts_is_rejected():
    assert_names(rejection(scenario_dict({"model.top_k": 17})), "model.top_k", 17, "<= model.num_experts=16")


def test_max_nodes_per_token_too_small_to_hold_top_k_experts_is_rejected():
    # 4 nodes of 1 GPU, 16 experts: 4 experts per node, so top_k=8 needs at least 2 nodes per token.
    data = scenario_dict({"hardware.nodes": 4, "hardware.gpus_per_node": 1, "model.top_k": 8,
                          "routing.max_nodes_per_token": 1})
    assert_names(rejection(data), "routing.max_nodes_per_token", 1, "top_k=8")
    data["routing"]["max_nodes_per_token"] = 2
    assert build_scenario(data).routing.max_nodes_per_token == 2


def test_model_that_does_not_fit_memory_is_rejected():
    data = {"name": "dsv3-ep8", "hardware": {"preset": "h100-seed", "nodes": 1, "gpus_per_node": 8},
            "model": {"preset": "deepseek-v3"}, "parallel": {"ep_size": 8}, "workload": {"mode": "train"}}
    err = rejection(data)
    # the biggest term is the optimizer state of 32 experts x 58 layers; more EP (and nodes) shrinks it
    assert_names(err, "parallel.ep_size", 8, "does not fit memory", "hardware.hbm_gb=64", "the biggest is optimizer",
                 "with more hardware.nodes")


def test_comm_sms_not_below_the_gpu_sm_count_is_rejected():
    assert_names(rejection(scenario_dict({"network.comm_sms": 132})), "network.comm_sms", 132, "132 SMs")
    data = scenario_dict({"hardware.num_sms": 16, "network.comm_sms": 20})
    assert_names(rejection(data), "network.comm_sms", 20, "16 SMs")


def test_value_that_arrives_later_is_rejected_saying_what_is_supported_today(monkeypatch):
    """Every value the schema knows is simulated today (decode, trace); the mechanism stays for the next."""
    from simulator.scenario import schema

    monkeypatch.setitem(schema.NOT_YET, ("pipeline.overlap", "none"), "supported today: three_stream")
    assert_names(rejection(scenario_dict({"pipeline.overlap": "none"})), "pipeline.overlap", "none", "supported today")


# --- files ------------------------------------------------------------------------------------------

def test_yaml_syntax_error_in_a_scenario_file_is_reported_with_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\nhardware: {nodes: 1}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert_names(info.value, "scenario", str(path), "YAML syntax error", "line 1")


def test_scenario_file_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: tiny\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert_names(info.value, "scenario", str(path), "mapping")


def test_missing_scenario_file_is_rejected(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert_names(info.value, "scenario", str(path), "does not exist")


def test_default_scenario_loads():
    s = load_scenario(ROOT / "scenarios" / "default.yaml")
    assert s.name == "deepseek-v3-ep64"
    assert s.num_gpus == 64
    assert (s.parallel.ep_size, s.dp_size) == (64, 1)
    assert s.model.num_layers == 4
    assert s.model.num_experts == 256  # kept from the deepseek-v3 preset
    assert s.routing.max_nodes_per_token == 4


def test_scenario_file_round_trips_through_load_scenario(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(BASE))
    s = load_scenario(path, [("parallel.ep_size", 2)])
    assert s.name == "tiny"
    assert (s.parallel.ep_size, s.dp_size) == (2, 2)


# --- presets and overrides --------------------------------------------------------------------------

def test_hardware_preset_field_can_be_overridden_keeping_the_others():
    s = build_scenario(scenario_dict({"hardware.peak_bf16_tflops": 500}))
    assert s.cluster.gpu.peak_bf16_flop_per_s == pytest.approx(5e14)
    assert s.cluster.gpu.peak_fp8_flop_per_s == pytest.approx(8e14)  # h100-seed's own value
    assert s.cluster.gpu.hbm_bytes == pytest.approx(64 * 2**30)
    assert s.hardware_preset == "h100-seed"


def test_nested_model_attention_override_keeps_the_other_preset_attention_fields():
    s = build_scenario(scenario_dict({"model.attention": {"num_heads": 8}}))
    attention = s.model.attention
    assert attention.num_heads == 8
    assert (attention.kind, attention.num_kv_heads, attention.head_dim) == ("gqa", 2, 64)  # tiny-moe's
    assert s.model.hidden_size == 256


def test_model_preset_field_can_be_overridden_keeping_the_others():
    s = build_scenario(scenario_dict({"model.num_experts": 32}))
    assert (s.model.num_experts, s.model.top_k, s.model.hidden_size) == (32, 2, 256)


def test_preset_can_be_a_path_to_a_user_file(tmp_path):
    path = tmp_path / "my-gpu.yaml"
    fields = yaml.safe_load((ROOT / "hardware" / "presets" / "h800.yaml").read_text())
    fields["nvlink_gb_per_s"] = 300
    path.write_text(yaml.safe_dump(fields))
    s = build_scenario(scenario_dict({"hardware.preset": str(path)}))
    assert s.cluster.nvlink.bandwidth_bytes_per_s == pytest.approx(300e9)
    assert s.cluster.gpu.name == "H800 SXM"


def test_yaml_units_are_converted_to_si():
    s = build_scenario(scenario_dict({
        "hardware.nvlink_gb_per_s": 450, "hardware.ib_gbit_per_s": 400, "hardware.peak_bf16_tflops": 400,
        "hardware.hbm_gb": 80, "hardware.hbm_tb_per_s": 3.35, "hardware.nvlink_latency_us": 3.33,
    }))
    assert s.cluster.nvlink.bandwidth_bytes_per_s == pytest.approx(450e9)
    assert s.cluster.ib.bandwidth_bytes_per_s == pytest.approx(50e9)
    assert s.cluster.gpu.peak_bf16_flop_per_s == pytest.approx(4e14)
    assert s.cluster.gpu.hbm_bytes == pytest.approx(80 * 2**30)
    assert s.cluster.gpu.hbm_bytes_per_s == pytest.approx(3.35e12)
    assert s.cluster.nvlink.latency_s == pytest.approx(3.33e-6)


@pytest.mark.parametrize("text, expected", [
    ("routing.zipf_alpha=1.2", ("routing.zipf_alpha", 1.2)),
    ("parallel.ep_size=4", ("parallel.ep_size", 4)),
    ("workload.mode=prefill", ("workload.mode", "prefill")),
    ("routing.max_nodes_per_token=null", ("routing.max_nodes_per_token", None)),
    ("model.attention={num_heads: 8}", ("model.attention", {"num_heads": 8})),
    ("name=a=b", ("name", "a=b")),
])
def test_parse_override_reads_the_value_as_yaml(text, expected):
    assert parse_override(text) == expected


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ScenarioError) as info:
        parse_override("parallel.ep_size")
    assert_names(info.value, "--set", "parallel.ep_size", "KEY=VALUE")


def test_override_with_invalid_yaml_value_is_rejected():
    with pytest.raises(ScenarioError) as info:
        parse_override("routing.zipf_alpha=[1, 2")
    assert_names(info.value, "routing.zipf_alpha", "[1, 2", "YAML")


def test_apply_overrides_sets_existing_keys_and_creates_nested_ones_without_touching_the_input():
    data = scenario_dict()
    out = apply_overrides(data, [("parallel.ep_size", 2), ("routing.zipf_alpha", 1.5),
                                 ("model.attention.num_heads", 8)])
    assert data == BASE
    assert out["parallel"] == {"ep_size": 2}
    assert out["routing"] == {"zipf_alpha": 1.5}
    assert out["model"] == {"preset": "tiny-moe", "attention": {"num_heads": 8}}
    s = build_scenario(out)
    assert (s.parallel.ep_size, s.routing.zipf_alpha, s.model.attention.num_heads) == (2, 1.5, 8)
    assert s.model.attention.num_kv_heads == 2


def test_override_inside_a_scalar_is_rejected():
    with pytest.raises(ScenarioError) as info:
        apply_overrides(scenario_dict(), [("name.first", "x")])
    assert_names(info.value, "name", "tiny", "not a section")


def test_override_with_unknown_key_is_rejected_when_built():
    data = apply_overrides(scenario_dict(), [parse_override("routing.zipf_alfa=1.2")])
    assert_names(rejection(data), "routing.zipf_alfa", 1.2, "unknown key", "zipf_alpha")


def test_resolved_scenario_holds_the_merged_preset_fields():
    s = build_scenario(scenario_dict({"hardware.peak_bf16_tflops": 500}))
    assert s.resolved["hardware"]["peak_bf16_tflops"] == 500
    assert s.resolved["hardware"]["nvlink_gb_per_s"] == 450
    assert s.resolved["model"]["preset"] == "tiny-moe"
    assert s.resolved["parallel"]["ep_size"] == 4


def test_more_gpus_than_experts_needs_whole_nodes_of_experts():
    data = scenario_dict({"hardware.nodes": 4, "hardware.gpus_per_node": 4, "parallel.ep_size": 16,
                          "model.num_experts": 6, "model.top_k": 2})
    assert_names(rejection(data), "parallel.ep_size", 16, "multiple of gpus_per_node=4")


def test_every_bad_key_is_named_in_the_one_message():
    data = scenario_dict({"workload.tokens_per_gpu": -1, "workload.seq_len": 0, "routing.zipf_alfa": 1.2})
    err = rejection(data)
    assert err.key == "workload.tokens_per_gpu" and err.value == -1
    assert "workload.seq_len = 0" in err.rule and "routing.zipf_alfa = 1.2: unknown key" in err.rule
