"""Hardware presets are YAML data shipped beside this module; a user may name their own file."""
from __future__ import annotations

from pathlib import Path

from hardware.safe_yaml import load_yaml_file, quote

PRESET_DIR = Path(__file__).parent / "presets"


def resolve_data_file(name_or_path: str, directory: Path, suffixes: tuple[str, ...] = (".yaml", ".yml"),
                      what: str = "preset") -> Path:
    """A shipped data file by name (`h800` -> directory/h800.yaml) or a path to one; KeyError says
    what exists."""
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in suffixes else directory / f"{name_or_path}{suffixes[0]}"
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name longer than the file system allows, a NUL byte
        why = getattr(exc, "strerror", None) or str(exc)
        raise KeyError(f"{what} {quote(name_or_path)} cannot be looked up ({why})") from None
    if found:
        return path
    if path is candidate:
        raise KeyError(f"{what} file {quote(name_or_path)} does not exist")
    valid = sorted(p.stem for p in directory.glob(f"*{suffixes[0]}"))
    raise KeyError(f"unknown {what} {quote(name_or_path)}; valid: {', '.join(valid)} or a path to a {suffixes[0]} file")


def preset_path(name_or_path: str, preset_dir: Path = PRESET_DIR) -> Path:
    """Resolve a preset name (`h800`) or a path to a YAML file; KeyError lists the valid names."""
    return resolve_data_file(name_or_path, preset_dir)


def load_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping, within hardware.safe_yaml's limits; ValueError says
    what is wrong without quoting the file."""
    data = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data
