"""Hardware presets are YAML data shipped beside this module; a user may name their own file."""
from __future__ import annotations

from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


def resolve_data_file(name_or_path: str, directory: Path, suffixes: tuple[str, ...] = (".yaml", ".yml"),
                      what: str = "preset") -> Path:
    """A shipped data file by name (`h800` -> directory/h800.yaml) or a path to one; KeyError says
    what exists."""
    candidate = Path(name_or_path)
    if candidate.suffix in suffixes:
        if not candidate.is_file():
            raise KeyError(f"{what} file {name_or_path!r} does not exist")
        return candidate
    path = directory / f"{name_or_path}{suffixes[0]}"
    if not path.is_file():
        valid = sorted(p.stem for p in directory.glob(f"*{suffixes[0]}"))
        raise KeyError(f"unknown {what} {name_or_path!r}; valid: {', '.join(valid)} or a path to a {suffixes[0]} file")
    return path


def preset_path(name_or_path: str, preset_dir: Path = PRESET_DIR) -> Path:
    """Resolve a preset name (`h800`) or a path to a YAML file; KeyError lists the valid names."""
    return resolve_data_file(name_or_path, preset_dir)


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
