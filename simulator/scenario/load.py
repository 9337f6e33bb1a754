"""Scenario YAML -> a frozen, typed, validated Scenario. The one place user input is checked.

Every error is a ScenarioError naming the key path, the value and the rule.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from hardware.calibrated import calibration_path, load_calibration
from hardware.presets import PRESET_DIR as HARDWARE_PRESET_DIR
from hardware.presets import load_yaml_mapping, preset_path
from hardware.safe_yaml import MAX_DEPTH, clip, parse_yaml
from hardware.spec import cluster_from_fields
from simulator.errors import ScenarioError
from simulator.model import AttentionSpec, ModelSpec
from simulator.scenario.hf_config import hf_model_fields
from simulator.scenario.rules import check_layout
from simulator.scenario.schema import NOT_YET, SECTIONS, TOP_LEVEL_KEYS, HardwareSection, ModelSection, Scenario
from simulator.scenario.serving import derive_serving

MODEL_PRESET_DIR = Path(__file__).parent.parent / "models"


def _one_error(err: dict, prefix: str, model_cls) -> tuple[str, object, str]:
    """(key path, value, rule) of one pydantic error."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc]) if prefix else ".".join(loc)
    if err["type"] == "extra_forbidden":
        owner = model_cls
        for part in loc[:-1]:
            owner = owner.model_fields[part].annotation
        return key, err["input"], f"unknown key; valid keys here: {', '.join(owner.model_fields)}"
    if err["type"] == "missing":
        return key, None, "required key is missing"
    return key, err.get("input"), err["msg"]


MAX_ERRORS_SHOWN = 8


def _raise_from_pydantic(exc: ValidationError, prefix: str, model_cls) -> None:
    """One ScenarioError naming the first bad key, its value and rule, and listing the others."""
    errors = [_one_error(err, prefix, model_cls) for err in exc.errors()]
    key, value, rule = errors[0]
    if len(errors) > 1:
        others = [f"{k} = {clip(repr(v))}: {r}" for k, v, r in errors[1:MAX_ERRORS_SHOWN]]
        more = len(errors) - MAX_ERRORS_SHOWN
        rule += f"; also {'; '.join(others)}" + (f"; and {more} more" if more > 0 else "")
    raise ScenarioError(key, value, rule) from None


def _validate(model_cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ScenarioError(prefix, data, "must be a mapping of keys")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        _raise_from_pydantic(exc, prefix, model_cls)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _written_in(user: dict, loc: tuple) -> bool:
    """Whether the key path `loc` is one the user wrote (not one that came from a preset file)."""
    node = user
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _with_preset(section: str, user: dict, default: str, preset_dir: Path, model_cls):
    """Merge a section's preset file (YAML data) with the user's field-by-field overrides and validate.

    An error in a key that came from the preset file names the key but never quotes the file's
    values: `preset:` may be any path, a symlink to a file the user could not read otherwise.
    The model section may name a Hugging Face config.json (`hf_config`) instead of a preset."""
    if not isinstance(user, dict):
        raise ScenarioError(section, user, "must be a mapping of keys")
    name = user.get("preset", default)
    hf = user.get("hf_config") if section == "model" else None
    if hf is not None:
        if name is not None and "preset" in user:
            raise ScenarioError("model.preset", clip(str(name)), "give model.preset or model.hf_config, not both "
                                "(--model-config sets model.preset to null)")
        base, name, key = hf_model_fields(hf), None, "model.hf_config"
    else:
        if not isinstance(name, str):
            raise ScenarioError(f"{section}.preset", name, "must be a preset name or a path to a .yaml file")
        try:
            base = load_yaml_mapping(preset_path(name, preset_dir))
        except (KeyError, ValueError) as exc:
            raise ScenarioError(f"{section}.preset", clip(name), str(exc).strip("\"'")) from None
        key = f"{section}.preset"
    merged = _deep_merge(base, user)
    merged["preset"] = name
    try:
        return model_cls.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] != "missing" and not _written_in(user, err["loc"]):
            field = ".".join([section, *map(str, err["loc"])])
            rule = "is an unknown key" if err["type"] == "extra_forbidden" else f"is not valid ({err['msg']})"
            raise ScenarioError(key, clip(name or hf),
                                f"the preset file's key {clip(field)} {rule}; its value is not shown") from None
        _raise_from_pydantic(exc, section, model_cls)


def resolve_calibration(name: Optional[str], dtype: str) -> Optional[Path]:
    """hardware.calibration -> the file, checked: it exists, parses and holds a fit for `dtype`."""
    if name is None:
        if dtype == "fp32":
            raise ScenarioError("workload.gemm_dtype", dtype, "fp32 needs hardware.calibration measured in fp32 "
                                "(e.g. the cpu-local preset); without one: bf16, fp8")
        return None
    try:
        path = calibration_path(name)
        load_calibration(path, dtype)
    except (KeyError, ValueError) as exc:
        raise ScenarioError("hardware.calibration", name, str(exc).strip("\"'")) from None
    return path.resolve()


def parse_override(text: str) -> tuple[str, object]:
    """'routing.zipf_alpha=1.2' -> ('routing.zipf_alpha', 1.2); the value is YAML."""
    if "=" not in text:
        raise ScenarioError("--set", text, "must be KEY=VALUE with a dotted scenario key")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.count(".") >= MAX_DEPTH:
        raise ScenarioError("--set", clip(key), f"a key of {key.count('.') + 1} dotted parts; at most {MAX_DEPTH}")
    try:
        value = parse_yaml(raw, "the value")
    except ValueError as exc:
        raise ScenarioError(clip(key), clip(raw), f"must be valid YAML within the limits: {exc}") from None
    return key, value


def apply_overrides(data: dict, overrides: list[tuple[str, object]]) -> dict:
    data = copy.deepcopy(data)
    for key, value in overrides:
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(".".join(parts[: i + 1]), child, "is not a section; cannot set a key inside it")
            node = child
        node[parts[-1]] = value
    return data


def read_scenario_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        exists = path.is_file()
    except (OSError, ValueError) as exc:  # a name longer than the file system allows, a NUL byte
        raise ScenarioError("scenario", clip(str(path)), getattr(exc, "strerror", None) or str(exc)) from None
    if not exists:
        raise ScenarioError("scenario", clip(str(path)), "file does not exist")
    try:
        return load_yaml_mapping(path)
    except ValueError as exc:
        raise ScenarioError("scenario", clip(str(path)), str(exc)) from None


def load_scenario(path: str | Path, overrides: list[tuple[str, object]] = ()) -> Scenario:
    return build_scenario(apply_overrides(read_scenario_file(path), list(overrides)))


def derive_batch(sections: dict, workload_data: dict, num_gpus: int):
    """training.global_batch_size (sequences) -> micro-batches per replica and tokens per
    micro-batch per GPU, as Megatron derives them: GBS = micro_batch_size x micro-batches x dense DP."""
    t, w, par = sections["training"], sections["workload"], sections["parallel"]
    if t.global_batch_size is None:
        return w
    for key in ("micro_batches", "tokens_per_gpu"):
        if key in workload_data:
            raise ScenarioError(f"workload.{key}", workload_data[key],
                                "is derived from training.global_batch_size; give one or the other")
    if num_gpus % (par.tp_size * par.pp_size):
        return w  # the layout rules reject this with their own message
    dp = num_gpus // (par.tp_size * par.pp_size)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ScenarioError("training.global_batch_size", t.global_batch_size,
                            f"must be a multiple of training.micro_batch_size={t.micro_batch_size} x dense DP {dp}")
    tokens = t.micro_batch_size * w.seq_len
    if tokens % par.tp_size:
        raise ScenarioError("workload.seq_len", w.seq_len, f"x micro_batch_size must divide over tp_size={par.tp_size} "
                            "sequence-parallel ranks")
    # with sequence parallelism each TP rank holds 1/t of the micro-batch's tokens
    return w.model_copy(update={"micro_batches": t.global_batch_size // (t.micro_batch_size * dp),
                                "tokens_per_gpu": tokens // par.tp_size})


def build_scenario(data: dict) -> Scenario:
    """Validate a YAML-level mapping and build the Scenario (SI units inside)."""
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ScenarioError(str(key), data[key], f"unknown key; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError("name", name, "required: a non-empty string naming the scenario")
    if "hardware" not in data:
        raise ScenarioError("hardware.nodes", None, "required key is missing")
    hw = _with_preset("hardware", data["hardware"], "h100-seed", HARDWARE_PRESET_DIR, HardwareSection)
    msec = _with_preset("model", data.get("model", {}), "deepseek-v3", MODEL_PRESET_DIR, ModelSection)
    if "parallel" not in data:
        raise ScenarioError("parallel.ep_size", None, "required key is missing")
    routing_data = data.get("routing")
    group_limit = isinstance(routing_data, dict) and routing_data.get("max_nodes_per_token") == "model"
    if group_limit:  # resolved by with_model_group_limit once the layout is known to be valid
        data = {**data, "routing": {**routing_data, "max_nodes_per_token": None}}
    sections, errors = {}, []
    for key, cls in SECTIONS.items():  # every section checked, so one message lists every bad key
        try:
            sections[key] = _validate(cls, data.get(key, {}), key)
        except ScenarioError as exc:
            errors.append(exc)
    if errors:
        first = errors[0]
        if len(errors) == 1:
            raise first
        rest = "; ".join(f"{e.key} = {clip(repr(e.value))}: {e.rule}" for e in errors[1:])
        raise ScenarioError(first.key, first.value, f"{first.rule}; also {rest}")

    for (key, value), supported in NOT_YET.items():
        section, field = key.split(".")
        if getattr(sections[section], field) == value:
            raise ScenarioError(key, value, f"not simulated in this version; {supported}")

    calibration = resolve_calibration(hw.calibration, sections["workload"].gemm_dtype)
    cluster = cluster_from_fields(hw.preset, hw.nodes, hw.model_dump())
    sections["workload"] = derive_batch(sections, data.get("workload") or {}, cluster.num_gpus)
    sections["workload"], sections["pipeline"] = derive_serving(sections, data.get("workload") or {},
                                                                data.get("pipeline") or {})
    sections["pipeline"] = resolve_schedule(sections)
    model_name = msec.preset or f"hf_config {msec.hf_config}"
    model = ModelSpec(
        name=model_name, hidden_size=msec.hidden_size, moe_intermediate_size=msec.moe_intermediate_size,
        num_experts=msec.num_experts, top_k=msec.top_k, num_shared_experts=msec.num_shared_experts,
        num_layers=msec.num_layers, num_dense_layers=msec.num_dense_layers,
        dense_intermediate_size=msec.dense_intermediate_size, vocab_size=msec.vocab_size,
        attention=AttentionSpec(**msec.attention.model_dump()),
        num_expert_groups=msec.num_expert_groups, num_groups_per_token=msec.num_groups_per_token,
    )
    resolved = {"name": name, "hardware": hw.model_dump(), "model": msec.model_dump(),
                **{k: v.model_dump() for k, v in sections.items()}}
    scenario = Scenario(name=name, cluster=cluster, model=model, hardware_preset=hw.preset, model_preset=model_name,
                        resolved=resolved, calibration_path=calibration, **sections)
    check_layout(scenario)
    if group_limit:
        scenario = with_model_group_limit(scenario)
        check_layout(scenario)
    return scenario


def resolve_schedule(sections: dict):
    """pipeline.schedule auto: what the frameworks pair. A training step on one stage pairs the
    forward of micro-batch m with the backward of m-1 (Megatron-Core's 1F1B all-to-all overlap,
    DeepSeek's DualPipe) where its streams overlap, and without overlap accumulates gradients
    micro-batch after micro-batch (Megatron-Core's forward_backward_no_pipelining); serving runs its
    micro-batches side by side (two-batch overlap); with PP the stage schedule is parallel.pp_schedule's."""
    pipe, w = sections["pipeline"], sections["workload"]
    if pipe.schedule != "auto":
        return pipe
    accumulates = (w.mode == "train" and w.scope == "model" and sections["parallel"].pp_size == 1
                   and w.micro_batches > 1)
    if not accumulates:
        return pipe.model_copy(update={"schedule": "lockstep"})
    return pipe.model_copy(update={"schedule": "dualpipe" if pipe.overlap == "three_stream" else "sequential"})


def with_model_group_limit(s: Scenario) -> Scenario:
    """routing.max_nodes_per_token: model -> the model's group limit (num_groups_per_token) as a node
    limit, which it is where each node of the EP group holds one expert group: DeepSeek-V3's 8 groups,
    top 4, on the 8 nodes of EP 64 (tech report 2.1.2: each token to at most 4 nodes)."""
    m = s.model
    limit = None
    if m.num_expert_groups > 1:
        nodes = s.ranks.ep_group(0).num_nodes
        if nodes != m.num_expert_groups:
            raise ScenarioError("routing.max_nodes_per_token", "model",
                                f"takes model.num_groups_per_token={m.num_groups_per_token} as a node limit where each "
                                f"node of the EP group holds one of the model's {m.num_expert_groups} expert groups; "
                                f"this EP group spans {nodes} node(s): give the limit as a number (or null)")
        limit = m.num_groups_per_token
    routing = s.routing.model_copy(update={"max_nodes_per_token": limit})
    resolved = {**s.resolved, "routing": {**s.resolved["routing"], "max_nodes_per_token": limit}}
    return replace(s, routing=routing, resolved=resolved)
