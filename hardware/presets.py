"""Hardware presets are YAML data shipped beside this module; a user may name their own file."""
from __future__ import annotations

from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str, preset_dir: Path = PRESET_DIR) -> Path:
    """Resolve a preset name (`h800`) or a path to a YAML file; KeyError lists the valid names."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise KeyError(f"file {name_or_path!r} does not exist")
        return candidate
    path = preset_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in preset_dir.glob("*.yaml"))
        raise KeyError(f"unknown preset {name_or_path!r}; valid: {', '.join(valid)} or a path to a .yaml file")
    return path


def load_yaml_mapping(path: Path) -> dict:
    """safe_load a YAML file that must hold a mapping. Raises ValueError with the parser's message."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"YAML syntax error in {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data
