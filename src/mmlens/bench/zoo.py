"""``mmlens bench zoo``: the whole zoo built from scratch in a fresh home, timed, every model evaluated, and each
rebuilt metric compared with the shipped model's (the zoo shipped with mmlens must be what its recipes build)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mmlens.zoo import OPT_IN_MODELS, SHIPPED_ENV, ZOO_MODELS, build, model_dir, read_manifest, shipped_dir
from mmlens.zoo import verify_shipped as _verify_shipped
from mmlens.zoo.common import read_record

#: A rebuilt metric reproduces the shipped one when ``|rebuilt - shipped| <= REPRODUCE_TOLERANCE * max(1,
#: |shipped|)``: 0.02 absolute for rates (two items of the smallest evaluation set, mini-clip's pool of 100 test
#: scenes), 2 % relative for larger numbers (losses, counts). The build is deterministic, so on the same CPU and
#: library versions a rebuild is bit-identical (``weights_identical``); the tolerance leaves room for the floating
#: point of another CPU's kernels, and no more: a changed recipe moves these metrics by far more.
REPRODUCE_TOLERANCE = 0.02


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a (nested) metrics dict by dotted path, e.g. ``vqa_acc.yes_no``; text, lists and flags are
    left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def reproduction(
    shipped: Mapping[str, Mapping[str, Any]],
    rebuilt: Mapping[str, Mapping[str, Any]],
    tolerance: float = REPRODUCE_TOLERANCE,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {metric: {"shipped", "rebuilt", "within"}}}`` for every model in both, over every number in
    either model's metrics (a metric missing on one side is ``None`` there and not within)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in rebuilt:
        if name not in shipped:
            continue
        a, b = numeric_metrics(shipped[name]), numeric_metrics(rebuilt[name])
        rows: dict[str, dict[str, Any]] = {}
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            within = x is not None and y is not None and abs(y - x) <= tolerance * max(1.0, abs(x))
            rows[key] = {"shipped": x, "rebuilt": y, "within": within}
        out[name] = rows
    return out


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def zoo_benchmark(
    *,
    home: str | Path | None = None,
    keep: bool = False,
    names: Iterable[str] | None = None,
    configs: Mapping[str, Any] | None = None,
    tolerance: float = REPRODUCE_TOLERANCE,
) -> dict:
    """Fresh full build of the zoo, timed, in a temporary ``MMLENS_HOME`` (or ``home``), with the shipped zoo out of
    the lookup; then every rebuilt metric against the shipped model's.

    Builds ``names`` (default: the whole zoo but the opt-in models, plus any opt-in model that is shipped) with
    ``configs`` (default: the full-budget recipes). Returns ``{"build_seconds", "models": {name: metrics, with
    "reproduced": {metric: {shipped, rebuilt, within}} for a shipped model}, "model_seconds", "reproduction":
    {shipped_zoo, tolerance, all_within, weights_identical, not_shipped}}``.
    """
    folder = shipped_dir()
    manifest = read_manifest()
    shipped_entries: dict[str, Any] = manifest.get("models", {})
    # read (and verify) the shipped models before the shipped zoo leaves the lookup
    shipped = {n: read_record(_verify_shipped(n))["metrics"] for n in shipped_entries}
    if names is None:
        names = [n for n in ZOO_MODELS if n not in OPT_IN_MODELS or n in shipped_entries]
    names = list(names)
    ctx = contextlib.nullcontext(str(home)) if home is not None else tempfile.TemporaryDirectory(prefix="mmlens-zoo-")
    with ctx as h, _env("MMLENS_HOME", str(h)), _env(SHIPPED_ENV, "none"):
        t0 = time.time()
        records = build(names, force=True, configs=configs)
        secs = time.time() - t0
        weights = {n: _sha256(model_dir(n) / "model.safetensors") for n in records}
    summary = benchmark_summary(records, secs)
    reproduced = reproduction(shipped, {n: r["metrics"] for n, r in records.items()}, tolerance)
    for name, rows in reproduced.items():
        summary["models"][name]["reproduced"] = rows
    summary["reproduction"] = {
        "shipped_zoo": str(folder) if manifest else None,
        "shipped_recipes": manifest.get("recipes"),
        "tolerance": tolerance,
        "rule": "|rebuilt - shipped| <= tolerance * max(1, |shipped|), every number in each model's metrics",
        "all_within": all(r["within"] for rows in reproduced.values() for r in rows.values()) if reproduced else None,
        "weights_identical": {
            n: weights[n] == shipped_entries[n]["files"]["model.safetensors"]["sha256"]
            for n in records
            if n in shipped_entries
        },
        "not_shipped": [n for n in records if n not in shipped_entries],
    }
    return summary


__all__ = ["REPRODUCE_TOLERANCE", "benchmark_summary", "numeric_metrics", "reproduction", "zoo_benchmark"]
