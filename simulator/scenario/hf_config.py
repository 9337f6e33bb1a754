"""A Hugging Face config.json -> epsim's model fields (`model.hf_config`, `run_sim.py --model-config`).

One mapping per architecture family, chosen by the config's `architectures[0]` (or its `model_type`
when `architectures` is absent):

  DeepSeek-V2 / V3, Kimi-K2   n_routed_experts, num_experts_per_tok, n_shared_experts,
                              moe_intermediate_size, first_k_dense_replace (moe_layer_freq 1),
                              intermediate_size (dense layers), MLA ranks and head dims,
                              n_group / topk_group (group-limited routing)
  Qwen2-MoE / Qwen3-MoE       num_experts, num_experts_per_tok, moe_intermediate_size,
                              shared_expert_intermediate_size (Qwen2: a multiple of the expert
                              width, counted as that many shared experts), mlp_only_layers (a
                              prefix of dense layers), decoder_sparse_step 1, GQA with head_dim
  Mixtral                     num_local_experts, num_experts_per_tok, intermediate_size (the
                              expert width), GQA, sliding_window on every layer or none
  gpt-oss                     num_local_experts, num_experts_per_tok, intermediate_size, GQA,
                              layer_types (sliding / full) with sliding_window

Not counted, as the hand-written presets do not count them: DeepSeek's multi-token-prediction
module (num_nextn_predict_layers), norms, biases, attention sinks, Qwen2's shared-expert gate.
A field the mapping needs and the file lacks, an architecture outside this list, or a layer
pattern epsim cannot express is a ScenarioError naming the field (exit 2).
"""
from __future__ import annotations

import json
from pathlib import Path

from hardware.presets import resolve_data_file
from hardware.safe_yaml import clip, read_bytes_bounded
from simulator.errors import ScenarioError

HF_CONFIG_DIR = Path(__file__).parent.parent / "models" / "hf"
# Real config.json files are 1-3 KB (gpt-oss-120b's, with its 36 layer_types, is 2 KB); 1 MiB bounds
# the read like every YAML input (hardware/safe_yaml.py MAX_FILE_BYTES).
MAX_CONFIG_BYTES = 1 << 20
KEY = "model.hf_config"


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {clip(repr(key))}; each key may appear once in an object")
        out[key] = value
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def read_hf_config(name_or_path: str) -> tuple[Path, dict]:
    """A shipped config by name (`qwen3-235b-a22b` -> simulator/models/hf/qwen3-235b-a22b.json) or a
    path to a config.json, read within MAX_CONFIG_BYTES and parsed strictly (no NaN, no duplicate keys)."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ScenarioError(KEY, name_or_path, "must be a path to a Hugging Face config.json or a shipped name")
    try:
        path = resolve_data_file(name_or_path, HF_CONFIG_DIR, suffixes=(".json",), what="hf_config")
        raw = read_bytes_bounded(path, MAX_CONFIG_BYTES, "the Hugging Face config")
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except KeyError as exc:
        raise ScenarioError(KEY, clip(name_or_path), str(exc).strip("\"'")) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(KEY, clip(name_or_path), f"is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ScenarioError(KEY, clip(name_or_path), "nests too deeply to be a config.json") from None
    except ValueError as exc:  # json.JSONDecodeError is one; its message has the line and column
        raise ScenarioError(KEY, clip(name_or_path), f"is not a valid config.json: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(KEY, clip(name_or_path), "must hold a JSON object of fields")
    return path, data


class _Fields:
    """Typed reads of one config's fields; every error names the field, its value and the rule."""

    def __init__(self, data: dict, source: str, arch: str):
        self.data, self.source, self.arch = data, source, arch

    def error(self, field: str, rule: str) -> ScenarioError:
        value = self.data.get(field)
        return ScenarioError(f"{KEY}[{field}]", value if not isinstance(value, (list, dict)) else clip(repr(value)),
                             f"{rule} ({self.arch}, {clip(self.source)})")

    def int(self, field: str, default=None, minimum: int = 1) -> int:
        if field not in self.data or (self.data[field] is None and default is not None):
            if default is None:
                raise self.error(field, "required by the mapping and missing from the config")
            return default
        value = self.data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(field, f"must be an integer >= {minimum}")
        return value

    def flag(self, field: str, default: bool) -> bool:
        value = self.data.get(field, default)
        if not isinstance(value, bool):
            raise self.error(field, "must be true or false")
        return value

    def head_dim(self) -> int:
        """head_dim as given, else hidden_size / num_attention_heads (the transformers default)."""
        if self.data.get("head_dim") is not None:
            return self.int("head_dim")
        hidden, heads = self.int("hidden_size"), self.int("num_attention_heads")
        if hidden % heads:
            raise self.error("num_attention_heads", f"must divide hidden_size={hidden} when head_dim is absent")
        return hidden // heads

    def gqa(self) -> dict:
        return {"kind": "gqa", "num_heads": self.int("num_attention_heads"),
                "num_kv_heads": self.int("num_key_value_heads"), "head_dim": self.head_dim()}


def window_pattern(f: _Fields, num_layers: int, layer_types: list, window_field: str = "sliding_window") -> dict:
    """Sliding / full layers -> attention.sliding_window and full_attention_interval, where layer l
    is full exactly when (l + 1) % interval == 0 (every layer sliding: an interval past the last layer)."""
    full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    if len(full) == num_layers:
        return {"sliding_window": 0, "full_attention_interval": 1}
    window = f.int(window_field)
    interval = full[0] + 1 if full else num_layers + 1
    if any((i in full) != ((i + 1) % interval == 0) for i in range(num_layers)):
        raise f.error("layer_types", "epsim expresses a window on every layer except each n-th (full_attention_interval); "
                                     "this pattern of full and sliding layers is not one")
    return {"sliding_window": window, "full_attention_interval": interval}


def _deepseek(f: _Fields) -> dict:
    if f.int("moe_layer_freq", default=1) != 1:
        raise f.error("moe_layer_freq", "must be 1: epsim runs MoE layers in every layer after first_k_dense_replace")
    groups, per_token = f.int("n_group"), f.int("topk_group")
    return {
        "hidden_size": f.int("hidden_size"), "moe_intermediate_size": f.int("moe_intermediate_size"),
        "num_experts": f.int("n_routed_experts"), "top_k": f.int("num_experts_per_tok"),
        "num_shared_experts": f.int("n_shared_experts", minimum=0), "num_layers": f.int("num_hidden_layers"),
        "num_dense_layers": f.int("first_k_dense_replace", minimum=0),
        "dense_intermediate_size": f.int("intermediate_size"), "vocab_size": f.int("vocab_size"),
        "num_expert_groups": groups, "num_groups_per_token": per_token,
        "attention": {"kind": "mla", "num_heads": f.int("num_attention_heads"),
                      "q_lora_rank": f.int("q_lora_rank", default=0, minimum=0),  # DeepSeek-V2-Lite: null
                      "kv_lora_rank": f.int("kv_lora_rank"), "qk_nope_head_dim": f.int("qk_nope_head_dim"),
                      "qk_rope_head_dim": f.int("qk_rope_head_dim"), "v_head_dim": f.int("v_head_dim")},
    }


def _qwen_moe(f: _Fields) -> dict:
    layers, expert_width = f.int("num_hidden_layers"), f.int("moe_intermediate_size")
    if f.int("decoder_sparse_step", default=1) != 1:
        raise f.error("decoder_sparse_step", "must be 1: epsim runs its dense layers first, then MoE layers")
    dense = f.data.get("mlp_only_layers") or []
    if not isinstance(dense, list) or dense != list(range(len(dense))):
        raise f.error("mlp_only_layers", "must be the first layers in order ([0, 1, ..., k-1]): epsim runs its "
                                         "dense layers first")
    if f.flag("use_sliding_window", default=False):
        raise f.error("use_sliding_window", "a window on the layers past max_window_layers is not simulated; "
                                            "must be false")
    shared_width = f.int("shared_expert_intermediate_size", default=0, minimum=0)
    if shared_width % expert_width:
        raise f.error("shared_expert_intermediate_size", f"must be a multiple of moe_intermediate_size={expert_width} "
                                                         "(counted as that many shared experts)")
    return {
        "hidden_size": f.int("hidden_size"), "moe_intermediate_size": expert_width,
        "num_experts": f.int("num_experts"), "top_k": f.int("num_experts_per_tok"),
        "num_shared_experts": shared_width // expert_width, "num_layers": layers, "num_dense_layers": len(dense),
        "dense_intermediate_size": f.int("intermediate_size"), "vocab_size": f.int("vocab_size"),
        "attention": f.gqa(),
    }


def _routed_gqa(f: _Fields, layers: int, kinds: list) -> dict:
    """Mixtral's and gpt-oss's shared shape: every layer MoE (num_local_experts), no shared expert,
    GQA with the layers' window pattern."""
    return {
        "hidden_size": f.int("hidden_size"), "moe_intermediate_size": f.int("intermediate_size"),
        "num_experts": f.int("num_local_experts"), "top_k": f.int("num_experts_per_tok"),
        "num_shared_experts": 0, "num_layers": layers, "num_dense_layers": 0,
        "dense_intermediate_size": f.int("intermediate_size"), "vocab_size": f.int("vocab_size"),
        "attention": {**f.gqa(), **window_pattern(f, layers, kinds)},
    }


def _mixtral(f: _Fields) -> dict:
    layers = f.int("num_hidden_layers")
    kinds = ["full_attention" if f.data.get("sliding_window") is None else "sliding_attention"] * layers
    return _routed_gqa(f, layers, kinds)


def _gpt_oss(f: _Fields) -> dict:
    layers = f.int("num_hidden_layers")
    kinds = f.data.get("layer_types")
    if (not isinstance(kinds, list) or len(kinds) != layers
            or any(k not in ("full_attention", "sliding_attention") for k in kinds)):
        raise f.error("layer_types", f"must list num_hidden_layers={layers} entries, each full_attention or "
                                     "sliding_attention")
    return _routed_gqa(f, layers, kinds)


ARCHITECTURES = {
    "DeepseekV2ForCausalLM": _deepseek, "DeepseekV3ForCausalLM": _deepseek,
    "Qwen2MoeForCausalLM": _qwen_moe, "Qwen3MoeForCausalLM": _qwen_moe,
    "MixtralForCausalLM": _mixtral, "GptOssForCausalLM": _gpt_oss,
}
MODEL_TYPES = {
    "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM", "kimi_k2": "DeepseekV3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM", "gpt_oss": "GptOssForCausalLM",
}


def model_fields(data: dict, source: str) -> dict:
    """A parsed config.json -> the model section's fields (YAML level, as a preset file holds them)."""
    archs = data.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise ScenarioError(f"{KEY}[architectures]", clip(repr(archs)), "must be a list of class names")
        arch = archs[0]
        field, value = "architectures", arch
    else:
        value = data.get("model_type")
        arch = MODEL_TYPES.get(value) if isinstance(value, str) else None
        field = "model_type"
    if arch not in ARCHITECTURES:
        valid = ", ".join(ARCHITECTURES) if field == "architectures" else ", ".join(MODEL_TYPES)
        raise ScenarioError(f"{KEY}[{field}]", clip(value) if isinstance(value, str) else value,
                            f"unknown architecture ({clip(source)}); supported: {valid}")
    return ARCHITECTURES[arch](_Fields(data, source, arch))


def hf_model_fields(name_or_path: str) -> dict:
    path, data = read_hf_config(name_or_path)
    return model_fields(data, str(path))
