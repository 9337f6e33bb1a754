"""Atomic file writes: a crash or a bad input never leaves half a file where a good one was.

The one helper every writer uses (JSON, CSV, YAML, Markdown, HTML, Parquet, PNG, traces,
calibration files): the content goes to a temporary file beside the target, which is then renamed
over it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

Content = Union[str, bytes, Callable[[Path], None]]


def write_atomic(path: str | Path, content: Content) -> Path:
    """Write `content` to `path` atomically (readable by all, as results are shared).

    content: text, bytes, or a function that writes the file at the path it is given (for
    writers that want a path, such as DataFrame.to_parquet or Figure.savefig; say the format
    explicitly there, since the temporary name ends in .tmp)."""
    path = Path(path)
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
