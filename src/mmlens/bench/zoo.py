"""``mmlens bench zoo``: the whole zoo built from scratch in a fresh home, timed, every model evaluated."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmlens.zoo import build


@contextlib.contextmanager
def _home(path: Path) -> Iterator[None]:
    old = os.environ.get("MMLENS_HOME")
    os.environ["MMLENS_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MMLENS_HOME", None)
        else:
            os.environ["MMLENS_HOME"] = old


def benchmark_summary(records: Mapping[str, dict], build_seconds: float) -> dict:
    """The ``zoo_benchmark`` layout from build records."""
    m = {n: r["metrics"] for n, r in records.items()}
    out: dict[str, Any] = {"build_seconds": round(float(build_seconds), 1), "models": {}}
    # every model's metrics as built, in build order; the issue-14 diagnostics sit inside them: mini-llava's
    # `prior` (language prior on anchor-without-partner scenes) and each noisy CLIP's `noise`
    for name, metrics in m.items():
        out["models"][name] = dict(metrics)
    out["model_seconds"] = {n: r.get("seconds") for n, r in records.items()}
    return out


def zoo_benchmark(*, home: str | Path | None = None, keep: bool = False) -> dict:
    """Fresh full build of the whole zoo, timed, in a temporary ``MMLENS_HOME`` (or ``home``).

    Returns ``{"build_seconds": float, "models": {name: metrics}}``, e.g. ``models["mini-llava"]["vqa_acc"]``.
    """
    ctx = contextlib.nullcontext(str(home)) if home is not None else tempfile.TemporaryDirectory(prefix="mmlens-zoo-")
    with ctx as h, _home(Path(h)):
        t0 = time.time()
        records = build(None, force=True)
        secs = time.time() - t0
        return benchmark_summary(records, secs)


__all__ = ["benchmark_summary", "zoo_benchmark"]
