"""YAML read safely and boundedly: every scenario, preset and `--set` value goes through here.

yaml.SafeLoader with limits, so no input can exhaust the process before it is validated: the file
is read at most MAX_FILE_BYTES (+1, to tell it is larger), mappings and sequences nest at most
MAX_DEPTH deep (the composer recurses once per level), aliases may not expand the document past
MAX_NODES nodes ("billion laughs": the parsed object shares its nodes, but validation and
json.dumps walk every copy), integers are at most MAX_INT_DIGITS digits (int() of 4,301 digits
raises), duplicate keys are errors, and `1e9` is a float as in YAML 1.2 (YAML 1.1 reads it as a
string; its floats need a dot and a signed exponent: 1.0e+9).
Errors are ValueError with the line and column, never a quote of the file's text (a preset path
may point at a file the user cannot read otherwise).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

MAX_FILE_BYTES = 1 << 20  # scenarios and presets are a few KB
MAX_DEPTH = 32  # the deepest real scenario nests 3
MAX_NODES = 100_000  # after alias expansion; a scenario has a few hundred
MAX_INT_DIGITS = 100  # far past any count or size a scenario holds
MAX_QUOTE_CHARS = 80  # what an error message quotes of a value


def clip(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """`text` cut to a bounded prefix for an error message, saying how long the whole was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def quote(value, limit: int = MAX_QUOTE_CHARS) -> str:
    return clip(repr(value), limit)


class BoundedSafeLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels{_where(self.peek_event().start_mark)}")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if duplicate:
                    raise yaml.YAMLError(f"duplicate key {quote(key)}{_where(key_node.start_mark)}; "
                                         "each key may appear once in a mapping")
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_INT_DIGITS:
            raise yaml.YAMLError(f"an integer of {digits:,} digits{_where(node.start_mark)}; "
                                 f"at most {MAX_INT_DIGITS} digits")
        return super().construct_yaml_int(node)


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)
# YAML 1.2's floats without a dot or with an unsigned exponent (1e9, 2.5e9), which 1.1 reads as strings
BoundedSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _where(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _expanded_size(root) -> int | None:
    """Nodes of the document with every alias expanded, counted without expanding them (each node's
    size once, by identity); None for a recursive alias."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        nid = id(node)
        if children_done:
            on_path.discard(nid)
            children = _children(node)
            sizes[nid] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if nid in sizes:
            continue
        if nid in on_path:
            return None
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, source: str = "the value"):
    """Parse one YAML document within the limits; ValueError names `source`, the place and the rule."""
    if len(text) > MAX_FILE_BYTES:
        raise ValueError(f"{source} is {len(text):,} characters; at most {MAX_FILE_BYTES:,}")
    loader = BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size is None:
            raise ValueError(f"{source}: an alias refers to a node that contains it; rule: no recursive aliases")
        if size > MAX_NODES:
            raise ValueError(f"{source}: aliases expand it past {MAX_NODES:,} nodes; rule: at most {MAX_NODES:,}")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:  # the message without the snippet of text PyYAML appends
        context = f" ({exc.context}{_where(exc.context_mark)})" if exc.context and exc.problem else ""
        raise ValueError(f"YAML syntax error in {source}{_where(exc.problem_mark)}: "
                         f"{exc.problem or exc.context}{context}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: {exc}") from None
    finally:
        loader.dispose()


def read_bytes_bounded(path: Path, limit: int, what: str = "") -> bytes:
    """The file's bytes, refused (ValueError, naming `what` and the path) past `limit` bytes before
    more than that is read."""
    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > limit:
        raise ValueError(f"{name} is larger than {limit:,} bytes; rule: at most {limit:,}")
    return raw


def read_text_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The file's text, refused (ValueError) past `limit` bytes before more than that is read."""
    raw = read_bytes_bounded(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def load_yaml_file(path: Path):
    return parse_yaml(read_text_bounded(path), str(path))
