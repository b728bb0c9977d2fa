"""95 % intervals for hallucination metrics measured over training seeds x evaluation items.

An arm's metric on one seed is sum(num) / sum(den) over the items (probes, descriptions) of
:func:`mmlens.align.eval.evaluate_failure`; over seeds it is the mean of the per-seed values. The interval is a
percentile bootstrap that resamples both sources of variation: the seeds (with replacement) and the items (with
replacement, the same item draw for every seed, since all seeds answer the same items). For the difference of two
arms that answered the same items the item draw is shared by both arms (paired); their seeds are drawn
independently. Proportions additionally get a Wilson interval of the pooled counts (which ignores the seed
variation, and which stays informative when every item is 0 or 1, where a bootstrap collapses to a point).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mmlens.errors import InputError

#: one seed's items: metric -> (numerators, denominators)
SeedItems = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _stack(per_seed: Sequence[SeedItems], metric: str) -> tuple[np.ndarray, np.ndarray]:
    if not per_seed:
        raise InputError("no seeds to summarise")
    num = [np.asarray(s[metric][0], dtype=np.float64) for s in per_seed]
    den = [np.asarray(s[metric][1], dtype=np.float64) for s in per_seed]
    if len({len(n) for n in num}) != 1:
        raise InputError(f"{metric}: every seed must be evaluated on the same items")
    return np.stack(num), np.stack(den)


def _values(num: np.ndarray, den: np.ndarray, seed_idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Metric per bootstrap draw: [B] = mean over the drawn seeds of sum(num)/sum(den) over the drawn items
    (``counts[b, i]``: how often item i is drawn in resample b)."""
    n = num @ counts.T  # [S, B]
    d = den @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = n / d
    rows = np.take_along_axis(per_seed.T, seed_idx, axis=1)  # [B, S']
    with np.errstate(invalid="ignore"):
        return np.nanmean(rows, axis=1)


def _item_counts(rng: np.random.Generator, n_items: int, resamples: int) -> np.ndarray:
    """[B, N] draw counts of a bootstrap over N items (each resample draws N items with replacement)."""
    idx = rng.integers(0, n_items, (resamples, n_items)) + (np.arange(resamples) * n_items)[:, None]
    return np.bincount(idx.ravel(), minlength=resamples * n_items).reshape(resamples, n_items).astype(np.float64)


def _point(num: np.ndarray, den: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(num.sum(1) / den.sum(1)))


def wilson(successes: float, n: float, z: float = 1.959964) -> list[float]:
    """Wilson score interval of a proportion."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _draws(rng: np.random.Generator, n_items: int, n_seeds: int, resamples: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, n_seeds, (resamples, n_seeds)), _item_counts(rng, n_items, resamples)


def summarise(
    per_seed: Sequence[SeedItems],
    metrics: Sequence[str] | None = None,
    *,
    proportions: Sequence[str] = (),
    resamples: int = 2000,
    seed: int = 0,
    digits: int = 4,
) -> dict[str, dict]:
    """``{metric: {"mean", "ci": [lo, hi], "n_items", "n_seeds"}}`` (+ ``"wilson"`` for ``proportions``)."""
    metrics = list(per_seed[0]) if metrics is None and per_seed else list(metrics or [])
    out: dict[str, dict] = {}
    for k, metric in enumerate(metrics):
        num, den = _stack(per_seed, metric)
        n_seeds, n_items = num.shape
        entry: dict = {"mean": round(_point(num, den), digits), "n_items": n_items, "n_seeds": n_seeds}
        if n_items:
            rng = np.random.default_rng([seed, k])
            seeds, items = _draws(rng, n_items, n_seeds, resamples)
            vals = _values(num, den, seeds, items)
            entry["ci"] = [round(float(np.nanpercentile(vals, q)), digits) for q in (2.5, 97.5)]
        else:
            entry["ci"] = [float("nan"), float("nan")]
        if metric in proportions:
            entry["wilson"] = [round(x, digits) for x in wilson(float(num.sum()), float(den.sum()))]
        out[metric] = entry
    return out


def paired_difference(
    a: Sequence[SeedItems],
    b: Sequence[SeedItems],
    metrics: Sequence[str],
    *,
    resamples: int = 2000,
    seed: int = 0,
    digits: int = 4,
) -> dict[str, dict]:
    """``{metric: {"diff", "ci", "excludes_0"}}`` for arm a minus arm b on the same items: one item draw shared by
    both arms per resample (paired), seeds drawn per arm."""
    out: dict[str, dict] = {}
    for k, metric in enumerate(metrics):
        na, da = _stack(a, metric)
        nb, db = _stack(b, metric)
        if na.shape[1] != nb.shape[1]:
            raise InputError(f"{metric}: the two arms were not evaluated on the same items")
        n_items = na.shape[1]
        diff = _point(na, da) - _point(nb, db)
        rng = np.random.default_rng([seed, 7919, k])
        items = _item_counts(rng, n_items, resamples)
        sa = rng.integers(0, na.shape[0], (resamples, na.shape[0]))
        sb = rng.integers(0, nb.shape[0], (resamples, nb.shape[0]))
        vals = _values(na, da, sa, items) - _values(nb, db, sb, items)
        lo, hi = (float(np.nanpercentile(vals, q)) for q in (2.5, 97.5))
        out[metric] = {
            "diff": round(diff, digits),
            "ci": [round(lo, digits), round(hi, digits)],
            "excludes_0": bool(lo > 0 or hi < 0),
        }
    return out


def intervals_overlap(x: Mapping, y: Mapping) -> bool:
    """Whether two ``{"ci": [lo, hi]}`` intervals overlap."""
    return not (x["ci"][1] < y["ci"][0] or y["ci"][1] < x["ci"][0])


__all__ = ["SeedItems", "intervals_overlap", "paired_difference", "summarise", "wilson"]
