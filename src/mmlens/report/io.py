"""Atomic result files: a run interrupted while writing never leaves a truncated file behind."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO


@contextmanager
def atomic_text_file(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename, on error it vanishes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_text_file(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    return Path(path)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line to ``path`` atomically."""
    with atomic_text_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return Path(path)
