"""Atomic result files and folders: a run interrupted while writing never leaves a truncated result behind."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from mmlens.errors import InputError


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


def json_default(value: Any) -> Any:
    """``json.dump``'s ``default=`` for what results hold: dataclasses, numpy/torch values, sets, tuples, paths."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_text_file(path) as handle:
        json.dump(data, handle, indent=2, default=json_default)
        handle.write("\n")
    return Path(path)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line to ``path`` atomically."""
    with atomic_text_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path``, on error it vanishes.

    With ``overwrite=False`` an existing non-empty ``path`` is refused before anything is written.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder; choose another output path")
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise InputError(f"{target} exists and is not empty; pass overwrite=True (--overwrite) or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            # Move the old folder aside first so that the swap itself is a single rename.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_image(path: str | os.PathLike[str], where: str | None = None) -> Any:
    """The image at ``path`` as a fully decoded RGB PIL image (``convert`` decodes fully, so a truncated file fails
    here, not later), or a one-line InputError, prefixed with ``where`` (e.g. ``file:line``) when given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # PIL raises all of these on corrupt files
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}cannot read image {path}") from None
