"""Hugging Face config.json in: each shipped config maps to the hand-written preset of the same name,
and a config the mapping cannot read is one error naming the field."""
import json
from dataclasses import replace

import pytest

from simulator.errors import ScenarioError
from simulator.scenario import build_scenario
from simulator.scenario.hf_config import HF_CONFIG_DIR, MAX_CONFIG_BYTES
from tests.conftest import tiny_dict

SHIPPED = sorted(p.stem for p in HF_CONFIG_DIR.glob("*.json"))
BIG_HBM = {"hbm_gb": 100000}  # the full models pass the static-memory rule on 8 GPUs
SEQ_LEN = 4096


def model_of(model: dict):
    return build_scenario(tiny_dict(model=model, hardware=BIG_HBM)).model


def hf_model(hf_config: str):
    return model_of({"preset": None, "hf_config": hf_config})


def rejection(config: dict, tmp_path) -> ScenarioError:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ScenarioError) as info:
        hf_model(str(path))
    return info.value


def test_the_expected_configs_are_shipped():
    assert SHIPPED == ["deepseek-v3", "gpt-oss-120b", "gpt-oss-20b", "kimi-k2", "mixtral-8x22b", "mixtral-8x7b",
                       "qwen2-57b-a14b", "qwen3-235b-a22b", "qwen3-30b-a3b"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_hf_config_maps_to_the_hand_written_preset(name):
    from_hf, by_hand = hf_model(str(HF_CONFIG_DIR / f"{name}.json")), model_of({"preset": name})
    assert replace(from_hf, name=by_hand.name) == by_hand
    for scope, head in (("model", False), ("model", True), ("moe_layer", False)):
        assert from_hf.forward_flop_per_token(SEQ_LEN, scope, head) == by_hand.forward_flop_per_token(SEQ_LEN, scope, head)


def test_a_shipped_config_is_found_by_name_and_a_preset_by_name():
    assert hf_model("qwen3-235b-a22b") == replace(hf_model(str(HF_CONFIG_DIR / "qwen3-235b-a22b.json")),
                                                  name="hf_config qwen3-235b-a22b")
    m = model_of({"preset": "qwen3-235b-a22b"})
    assert (m.num_layers, m.num_experts, m.top_k, m.attention.num_kv_heads) == (94, 128, 8, 4)


def test_deepseek_group_limited_routing_and_gpt_oss_windows_are_read():
    ds = hf_model("deepseek-v3")
    assert (ds.num_expert_groups, ds.num_groups_per_token, ds.num_dense_layers) == (8, 4, 3)
    oss = hf_model("gpt-oss-120b")
    assert (oss.attention.sliding_window, oss.attention.full_attention_interval) == (128, 2)
    assert [oss.is_sliding(layer) for layer in range(4)] == [True, False, True, False]  # layer_types' order
    assert oss.num_sliding_layers == 18


def test_qwen2_shared_expert_width_counts_as_that_many_shared_experts():
    assert hf_model("qwen2-57b-a14b").num_shared_experts == 20480 // 2560


def test_model_keys_beside_hf_config_override_its_fields():
    m = model_of({"preset": None, "hf_config": "qwen3-30b-a3b", "num_layers": 4})
    assert (m.num_layers, m.hidden_size) == (4, 2048)


def test_preset_and_hf_config_together_are_rejected():
    with pytest.raises(ScenarioError) as info:
        model_of({"preset": "deepseek-v3", "hf_config": "qwen3-30b-a3b"})
    assert info.value.key == "model.preset" and "not both" in str(info.value)


def test_unknown_architecture_names_the_field(tmp_path):
    err = rejection({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}, tmp_path)
    assert err.key == "model.hf_config[architectures]"
    assert "LlamaForCausalLM" in str(err) and "Qwen3MoeForCausalLM" in str(err)


def test_missing_field_names_the_field(tmp_path):
    config = json.loads((HF_CONFIG_DIR / "deepseek-v3.json").read_text())
    del config["n_routed_experts"]
    err = rejection(config, tmp_path)
    assert err.key == "model.hf_config[n_routed_experts]" and "missing" in str(err)


def test_a_field_of_the_wrong_type_names_the_field_and_value(tmp_path):
    config = json.loads((HF_CONFIG_DIR / "mixtral-8x7b.json").read_text())
    config["num_local_experts"] = "eight"
    err = rejection(config, tmp_path)
    assert (err.key, err.value) == ("model.hf_config[num_local_experts]", "eight")


def test_a_layer_pattern_epsim_cannot_express_is_rejected(tmp_path):
    config = json.loads((HF_CONFIG_DIR / "gpt-oss-20b.json").read_text())
    config["layer_types"][0:4] = ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    assert rejection(config, tmp_path).key == "model.hf_config[layer_types]"


def test_dense_layers_not_first_are_rejected(tmp_path):
    config = json.loads((HF_CONFIG_DIR / "qwen3-30b-a3b.json").read_text())
    config["mlp_only_layers"] = [5]
    assert rejection(config, tmp_path).key == "model.hf_config[mlp_only_layers]"
    config["mlp_only_layers"] = [0, 1]
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(config))
    assert hf_model(str(path)).num_dense_layers == 2


def test_group_limit_that_cannot_hold_top_k_is_rejected(tmp_path):
    config = json.loads((HF_CONFIG_DIR / "deepseek-v3.json").read_text())
    config.update(n_routed_experts=16, n_group=8, topk_group=2, num_experts_per_tok=8)  # 2 groups x 2 experts < 8
    assert rejection(config, tmp_path).key == "model.num_groups_per_token"


@pytest.mark.parametrize("text, words", [
    ('{"a": 1, "a": 2}', "duplicate key"),
    ('{"hidden_size": NaN}', "NaN"),
    ("[" * 100_000 + "]" * 100_000, "nests"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not a valid config.json"),
])
def test_malformed_json_is_one_error_on_the_key(tmp_path, text, words):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        hf_model(str(path))
    assert info.value.key == "model.hf_config" and words in str(info.value)


def test_a_file_past_the_size_bound_is_refused_before_parsing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ScenarioError) as info:
        hf_model(str(path))
    assert "larger than" in str(info.value)


def test_a_missing_file_names_the_path():
    with pytest.raises(ScenarioError) as info:
        hf_model("/nonexistent/config.json")
    assert info.value.key == "model.hf_config" and "does not exist" in str(info.value)


GROUPED = {"num_expert_groups": 2, "num_groups_per_token": 1}  # tiny-moe's 16 experts in 2 groups of 8


def test_routing_limit_model_takes_the_model_group_limit_when_groups_are_the_nodes():
    from simulator.api import simulate_scenario
    by_model = build_scenario(tiny_dict(model=GROUPED, routing={"max_nodes_per_token": "model"}))
    by_number = build_scenario(tiny_dict(model=GROUPED, routing={"max_nodes_per_token": 1}))
    assert by_model.routing.max_nodes_per_token == 1 and by_model.resolved == by_number.resolved
    assert simulate_scenario(by_model)[0] == simulate_scenario(by_number)[0]
    assert build_scenario(tiny_dict(routing={"max_nodes_per_token": "model"})).routing.max_nodes_per_token is None


def test_routing_limit_model_is_rejected_where_groups_are_not_the_nodes():
    with pytest.raises(ScenarioError) as info:
        build_scenario(tiny_dict(model={"num_expert_groups": 4, "num_groups_per_token": 2},
                                 routing={"max_nodes_per_token": "model"}))
    assert (info.value.key, info.value.value) == ("routing.max_nodes_per_token", "model")
    assert "4 expert groups" in str(info.value) and "2 node(s)" in str(info.value)
