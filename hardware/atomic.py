"""Atomic file writes: a crash or a bad input never leaves half a file where a good one was.

The one helper every writer uses (JSON, CSV, YAML, Markdown, HTML, Parquet, PNG, traces,
calibration files): the content goes to a temporary file beside the target, with a unique name
(two writers of one folder never share one), which is then renamed over it.

A set of files that belong together (a run's summary.json, metrics CSV and trace.json) goes
through write_set_atomic: every file is written to its temporary first; then the set's marker
(the last file, which readers take as "this set is complete") and every stale member that this
write does not replace are deleted; then the files are renamed into place, the marker last. A kill
at any moment leaves the old set, the new set, or a folder without a marker (an incomplete set,
never a new marker beside an old member). The folder itself is not replaced: `--out` may be a
folder that holds the user's own files.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Union

Content = Union[str, bytes, Callable[[Path], None]]


def write_atomic(path: str | Path, content: Content) -> Path:
    """Write `content` to `path` atomically (readable by all, as results are shared).

    content: text, bytes, or a function that writes the file at the path it is given (for
    writers that want a path, such as DataFrame.to_parquet or Figure.savefig; say the format
    explicitly there, since the temporary name ends in .tmp)."""
    path = Path(path)
    tmp = _write_temporary(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_temporary(path: Path, content: Content) -> Path:
    """`content` in a new uniquely named file beside `path`, removed again if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600
        if callable(content):
            os.close(fd)
            content(Path(tmp))
        else:
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as fh:
                fh.write(content)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_set_atomic(folder: str | Path, contents: dict[str, Content], members: Iterable[str] = ()) -> dict[str, Path]:
    """Write the files `contents` ({name: content}, the marker last) into `folder` as one set, and
    delete the set's `members` (names) that this write does not bring, so none is left stale
    beside the new marker. Returns {name: path}."""
    folder = Path(folder)
    names = list(contents)
    temporaries: dict[str, Path] = {}
    try:
        for name in names:
            temporaries[name] = _write_temporary(folder / name, contents[name])
        for name in [names[-1], *(m for m in members if m not in contents)]:
            (folder / name).unlink(missing_ok=True)
        for name in names:
            os.replace(temporaries[name], folder / name)
            del temporaries[name]
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return {name: folder / name for name in names}
