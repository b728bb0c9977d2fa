"""EMI, EMID and the EMID bound across evaluation splits (Oh et al., ICML 2025, arXiv 2502.00577).

- EMI(split) = I(query; model response) - I(query; reference), both estimated by one frozen estimator (CLUB by
  default) on the split's pairs. It can be negative: it is a difference of two estimates.
- EMID(ID, OOD) = EMI(ID) - EMI(OOD): positive means the model is worse on the OOD split.
- Bound terms (all RJSD, a lower bound on JSD, each with a permutation null): J_v (ID vs OOD images), J_t (ID vs OOD
  text queries), J_P (ID responses vs ID references), J_Q (OOD responses vs OOD references).
- Bound forms (``ShiftConfig.bound``; only correlational, never a certified bound, because RJSD <= JSD):
  ``scale_adjusted`` (the reference code's default) sqrt(J_v) + sqrt(J_t) + J_P^{1/4} + J_Q^{1/4};
  ``theorem`` H (sqrt(J_v) + sqrt(J_t)) + 4 (J_P^{1/4} + J_Q^{1/4});
  ``compact`` sqrt(2/3) H (sqrt(J_v) + sqrt(J_t)) + 8 max(J_P, J_Q)^{1/4} (from a secondary source; the output
  term's Delta is taken as max(J_P, J_Q), an assumption).
  Terms without data (no images: J_v) are left out; ``term_values="excess"`` subtracts each term's permutation-null
  mean (clipped at 0) before the roots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy import stats

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.models.embed import ImageEmbedder, TextEmbedder
from mmlens.progress import progress_bar
from mmlens.shift.data import ShiftSplit, open_image
from mmlens.shift.divergence import rjsd_test
from mmlens.shift.estimators import MIEnsemble, MIEstimator, as_ensemble, club_from_conditional
from mmlens.shift.options import (
    BoundKind,
    EarlyStoppingSplit,
    EstimatorData,
    EstimatorKind,
    Fusion,
    LogBase,
    TermValues,
)
from mmlens.shift.settings import ShiftConfig as ShiftConfig

BOUNDS = tuple(BoundKind)


@dataclass
class SplitEmbeddings:
    """Embeddings of one split: query (fused), text query, image (or None), response, reference."""

    name: str
    query: np.ndarray
    text: np.ndarray
    response: np.ndarray
    reference: np.ndarray
    image: np.ndarray | None = None
    item_ids: list[Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.query)
        for what in ("query", "text", "response", "reference", "image"):
            a = getattr(self, what)
            if a is None:
                continue
            if len(a) != n:
                raise InputError(f"split {self.name!r}: {len(a)} {what} embeddings for {n} queries")
            if not np.isfinite(a).all():
                raise InputError(f"split {self.name!r}: {what} embeddings contain NaN or infinite values")
        if n < 2:
            raise InputError(f"split {self.name!r} needs at least 2 items, has {n}")
        if self.item_ids is None:
            self.item_ids = list(range(n))

    @property
    def ids(self) -> list[Any]:
        """The item ids (0..n-1 when none were given)."""
        return self.item_ids if self.item_ids is not None else list(range(len(self)))

    def __len__(self) -> int:
        return len(self.query)


def fuse(image: np.ndarray | None, text: np.ndarray, mode: Fusion = Fusion.AVERAGE) -> np.ndarray:
    """Query embedding from image and text parts: ``average`` (the reference, needs equal dims) or ``concat``.
    Without images the query is the text embedding."""
    mode = as_enum(Fusion, mode, "query fusion")
    text = np.asarray(text, dtype=np.float32)
    if image is None:
        return text
    image = np.asarray(image, dtype=np.float32)
    if len(image) != len(text):
        raise InputError(f"{len(image)} image embeddings but {len(text)} text embeddings")
    if mode is Fusion.AVERAGE:
        if image.shape[1] != text.shape[1]:
            raise InputError(
                f"query fusion 'average' needs equal dimensions (image {image.shape[1]}, text "
                f"{text.shape[1]}); use --fusion concat (fusion='concat' in Python)"
            )
        return (image + text) / 2
    return np.concatenate([image, text], axis=1)


def _embed_unique(embedder: TextEmbedder, texts: list[str], cache: dict[str, np.ndarray]) -> np.ndarray:
    todo = sorted({t for t in texts if t not in cache})
    if todo:
        for t, v in zip(todo, embedder.embed(todo)):
            cache[t] = v
    return np.stack([cache[t] for t in texts])


def embed_splits(
    splits: Sequence[ShiftSplit],
    text_embedder: TextEmbedder,
    image_embedder: ImageEmbedder | None = None,
    fusion: Fusion = Fusion.AVERAGE,
) -> list[SplitEmbeddings]:
    """Embed every split; identical texts are embedded once (references and queries repeat across splits)."""
    if not splits:
        raise InputError("no splits to embed")
    first = next((s for s in splits if s.images is not None), None)
    if image_embedder is not None and first is not None and as_enum(Fusion, fusion, "query fusion") is Fusion.AVERAGE:
        # one item of each kind shows a dimension mismatch before minutes of embedding every split
        first_image = _as_images(list(first.images or ())[:1])
        fuse(image_embedder.embed(first_image), text_embedder.embed(first.queries[:1]), fusion)
    cache: dict[str, np.ndarray] = {}
    everything = [t for s in splits for t in (*s.queries, *s.responses, *s.references)]
    _embed_unique(text_embedder, everything, cache)
    out = []
    for s in splits:
        text = _embed_unique(text_embedder, s.queries, cache)
        image = None
        if image_embedder is not None and s.images is not None:
            image = np.asarray(image_embedder.embed(_as_images(s.images)), dtype=np.float32)
        out.append(
            SplitEmbeddings(
                s.name,
                fuse(image, text, fusion),
                text,
                _embed_unique(text_embedder, s.responses, cache),
                _embed_unique(text_embedder, s.references, cache),
                image,
                list(s.ids),
                dict(s.meta),
            )
        )
    return out


def _as_images(images: Sequence[Any]) -> list[Any]:
    from PIL import Image

    return [im.convert("RGB") if isinstance(im, Image.Image) else open_image(im) for im in images]


# ------------------------------------------------------------------------------------------- estimator
def _fold_mask(item_ids: Sequence[Any], seed: int) -> np.ndarray:
    """True for items in the estimator-training fold (half of the distinct item ids, fixed by ``seed``)."""
    unique = sorted({str(i) for i in item_ids})
    rng = np.random.default_rng(seed)
    train = set(rng.permutation(unique)[: len(unique) // 2].tolist())
    return np.array([str(i) in train for i in item_ids])


def training_pairs(
    embeddings: Sequence[SplitEmbeddings], config: ShiftConfig = ShiftConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(x, y, groups, counts): (query, response) and (query, reference) pairs pooled over the splits
    (``estimator_data="held_out"``: only the training fold's items), exact duplicates dropped when
    ``dedup_pairs`` (a query-reference pair recurs in every split whose query text is unchanged, while the model's
    responses differ, so without it the reference term is fitted on ~4x copies); groups = item ids."""
    xs, ys, gs = [], [], []
    for e in embeddings:
        keep = (
            _fold_mask(e.ids, config.seed) if config.estimator_data is EstimatorData.HELD_OUT else np.ones(len(e), bool)
        )
        ids = np.array([str(i) for i in e.ids], dtype=object)[keep]
        xs += [e.query[keep], e.query[keep]]
        ys += [e.response[keep], e.reference[keep]]
        gs += [ids, ids]
    x, y, groups = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    counts = {"pairs": len(x)}
    if config.dedup_pairs:
        rows = np.ascontiguousarray(np.concatenate([x, y], axis=1).astype(np.float32))
        _, first = np.unique(
            rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(), return_index=True
        )
        first = np.sort(first)
        x, y, groups = x[first], y[first], groups[first]
    counts["unique_pairs"] = len(x)
    return x, y, groups, counts


def fit_estimator(
    embeddings: Sequence[SplitEmbeddings], config: ShiftConfig = ShiftConfig(), *, progress: bool = False
) -> MIEnsemble:
    """Train ``config.n_estimators`` MI estimators (seeds ``estimator.seed`` + k) on the pooled, deduplicated
    pairs, early stopping held out by query group (see :func:`training_pairs`)."""
    x, y, groups, counts = training_pairs(embeddings, config)
    by_group = config.early_stopping_split is EarlyStoppingSplit.GROUP
    ens = MIEnsemble.fit(
        x, y, config.estimator, n_members=config.n_estimators, groups=groups if by_group else None, progress=progress
    )
    for m in ens.members:
        m.history_ |= counts | {"dedup": config.dedup_pairs}
    return ens


def _eval_mask(e: SplitEmbeddings, config: ShiftConfig) -> np.ndarray:
    if config.estimator_data is EstimatorData.HELD_OUT:
        return ~_fold_mask(e.ids, config.seed)
    return np.ones(len(e), bool)


def emi(estimator: MIEstimator | MIEnsemble, e: SplitEmbeddings, index: np.ndarray | None = None) -> dict[str, float]:
    """EMI of one split: I(query; response) - I(query; reference) on the rows ``index`` (default: all);
    for an ensemble the mean over its members."""
    idx = np.arange(len(e)) if index is None else np.asarray(index)
    mi_model = estimator.estimate(e.query[idx], e.response[idx])
    mi_ref = estimator.estimate(e.query[idx], e.reference[idx])
    return {"emi": mi_model - mi_ref, "mi_model": mi_model, "mi_reference": mi_ref}


def _sorted_by_item(e: SplitEmbeddings, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by item id, so that equal resample positions pick the same items in every split."""
    ids = e.ids
    return idx[np.argsort([str(ids[i]) for i in idx], kind="stable")]


def emi_replicates(ensemble: MIEnsemble, e: SplitEmbeddings, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` replicates of the split's EMI: replicate b resamples the items (paired across splits: the draw depends
    only on (seed, b, size) and rows are taken in item-id order) and uses ensemble member b mod K, so both the
    item sampling and the estimator's seed spread enter every interval built from them."""
    idx = _sorted_by_item(e, np.asarray(idx))
    out = np.empty(n)
    # CLUB: q(y|x) of every row once per member; a replicate is then a few vector operations on its rows
    parts = [_club_parts(m, e) for m in ensemble.members]
    for b in range(n):
        draw = idx[np.random.default_rng([seed, b]).integers(0, len(idx), len(idx))]
        k = b % len(ensemble)
        if parts[k] is None:
            out[b] = emi(ensemble.members[k], e, draw)["emi"]
        else:
            mu, logvar, resp, ref = (t[draw] for t in parts[k])
            out[b] = float(club_from_conditional(mu, logvar, resp) - club_from_conditional(mu, logvar, ref))
    return out


def _club_parts(member: Any, e: SplitEmbeddings):
    """(mu, logvar, response, reference) tensors of a fitted CLUB member on the split's rows, else None."""
    if not isinstance(member, MIEstimator) or member.config.kind is not EstimatorKind.CLUB:
        return None
    mu, logvar = (torch.as_tensor(a) for a in member.conditional(e.query))
    return (
        mu,
        logvar,
        torch.as_tensor(e.response, dtype=torch.float32),
        torch.as_tensor(e.reference, dtype=torch.float32),
    )


def _ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(values, lo)), float(np.percentile(values, hi))]


# ------------------------------------------------------------------------------------------- bound
def bound_value(terms: dict[str, float | None], config: ShiftConfig = ShiftConfig()) -> float:
    """The EMID bound proxy from the terms ``J_v, J_t, J_P, J_Q`` (natural-log JSD values; None = absent)."""
    scale = 1.0 / math.log(2) if config.log_base is LogBase.TWO else 1.0
    j = {k: max(v, 0.0) * scale for k, v in terms.items() if v is not None}  # the terms with data
    inputs = sum((math.sqrt(j[k]) for k in ("J_v", "J_t") if k in j), 0.0)
    outputs = [j[k] for k in ("J_P", "J_Q") if k in j]
    if config.bound is BoundKind.SCALE_ADJUSTED:
        return inputs + sum(v**0.25 for v in outputs)
    if config.bound is BoundKind.THEOREM:
        return config.h_hat * inputs + 4 * sum(v**0.25 for v in outputs)
    return math.sqrt(2 / 3) * config.h_hat * inputs + (8 * max(outputs) ** 0.25 if outputs else 0.0)


def _term(result, config: ShiftConfig) -> float:
    if config.term_values is TermValues.EXCESS:
        return max(result.value - result.null_mean, 0.0)
    return result.value


# ---------------------------------------------------------------------------------------- correlation
def correlation(
    x: Sequence[float], y: Sequence[float], *, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Pearson and Spearman (scipy.stats) with percentile bootstrap CIs over the paired points."""
    return _correlation(np.asarray(x, float), np.asarray(y, float), n_bootstrap, seed, level)


def _correlation(x: np.ndarray, y: np.ndarray, n_bootstrap: int, seed: int, level: float) -> dict[str, Any]:
    if len(x) != len(y):
        raise InputError(f"correlation needs paired values, got {len(x)} and {len(y)}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict[str, Any] = {"n": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out | {
            "pearson": math.nan,
            "pearson_p": math.nan,
            "pearson_ci": [math.nan, math.nan],
            "spearman": math.nan,
            "spearman_p": math.nan,
            "spearman_ci": [math.nan, math.nan],
        }
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.integers(0, len(x), len(x)) for _ in range(n_bootstrap)])
    boots_p, boots_s = _bootstrap_correlations(x[draws], y[draws])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def ci(b: list[float]) -> list[float]:
        return [float(np.nanpercentile(b, lo)), float(np.nanpercentile(b, hi))] if b else [math.nan] * 2

    return out | {
        "pearson": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "pearson_ci": ci(boots_p),
        "spearman": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
        "spearman_ci": ci(boots_s),
    }


# ------------------------------------------------------------------------------------------ analysis
@dataclass
class ShiftResult:
    """Per-split rows and correlations across the OOD splits. ``to_dict()`` is the JSON written by the CLI."""

    config: ShiftConfig
    id_split: str
    rows: list[dict[str, Any]]
    correlations: dict[str, Any]
    estimator_history: dict[str, Any]
    seconds: dict[str, float]
    estimator: MIEnsemble = field(repr=False)  # the estimator(s) used (not serialised)
    embedders: dict[str, str | None] = field(default_factory=dict)  # text and image embedder (None: no images)
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per split, EMI replicates

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["split"] == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        hist = {k: v for k, v in self.estimator_history.items() if not isinstance(v, list)}
        return {
            "config": self.config.to_dict(),
            "id_split": self.id_split,
            "embedders": self.embedders,
            "estimator": hist,
            "correlations": self.correlations,
            "seconds": self.seconds,
            "rows": self.rows,
        }


def _same_content(a: SplitEmbeddings, b: SplitEmbeddings) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(getattr(a, k), getattr(b, k)) for k in ("query", "response", "reference")
    )


def analyse_embeddings(
    embeddings: Sequence[SplitEmbeddings],
    config: ShiftConfig = ShiftConfig(),
    *,
    estimator: MIEstimator | MIEnsemble | None = None,
    id_index: int = 0,
    progress: bool = True,
) -> ShiftResult:
    """EMI per split, EMID and bound terms of every split against its base, correlations across shifts.

    The base is ``embeddings[id_index]`` unless the split's ``meta["emid_against"]`` names another split (e.g.
    translations against the English control). A split with exactly the ID's content, or with
    ``meta["family"] == "control"``, is a *control*: its row is reported (EMID ~ 0) but it is not a shift and
    stays out of the correlations."""
    if len(embeddings) < 1:
        raise InputError("need at least one split")
    names = [e.name for e in embeddings]
    if len(set(names)) != len(names):
        raise InputError("split names must be unique")
    if not 0 <= id_index < len(embeddings):
        raise InputError(f"id_index={id_index} is not the index of one of the {len(embeddings)} splits")
    for e in embeddings:
        base = e.meta.get("emid_against")
        if base is not None and base not in names:
            raise InputError(f"split {e.name!r} is compared against {base!r}, which is not among the splits")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if estimator is None:
        estimator = fit_estimator(embeddings, config, progress=progress)
        seconds["train_estimator"] = time.perf_counter() - t0
    ensemble = as_ensemble(estimator)
    t1 = time.perf_counter()
    ref = embeddings[id_index]
    perm: dict[str, Any] = dict(mixture=config.mixture, n_permutations=config.n_permutations, seed=config.seed)
    iterator = list(enumerate(embeddings))
    iterator = progress_bar(iterator, desc="splits", enabled=progress)
    points: dict[int, dict[str, Any]] = {}
    reps: dict[int, Any] = {}
    j_p: dict[int, Any] = {}
    for k, e in iterator:  # EMI of every split first: a split can be the base of another
        idx = np.flatnonzero(_eval_mask(e, config))
        points[k] = emi(ensemble, e, idx) | {"n": int(len(idx))}
        points[k]["emi_members"] = [emi(m, e, idx)["emi"] for m in ensemble.members]
        reps[k] = emi_replicates(ensemble, e, idx, config.n_bootstrap, config.seed)
    rows = []
    for k, e in enumerate(embeddings):
        m = points[k]
        row: dict[str, Any] = {
            "split": e.name,
            "n": m["n"],
            "emi": m["emi"],
            "mi_model": m["mi_model"],
            "mi_reference": m["mi_reference"],
            "emi_ci": _ci(reps[k]),
            "emi_seed_std": float(np.std(m["emi_members"])),
        }
        row.update({f"meta_{key}" if key in row else key: v for key, v in e.meta.items() if key != "emid_against"})
        if k != id_index:
            base_k = names.index(e.meta["emid_against"]) if e.meta.get("emid_against") else id_index
            base = embeddings[base_k]
            if e.meta.get("family") == "control" or (base_k == id_index and _same_content(e, ref)):
                row["control"] = True
                row["family"] = "control"
            row["emid_against"] = base.name
            row["emid"] = points[base_k]["emi"] - m["emi"]
            row["emid_ci"] = _ci(reps[base_k] - reps[k])  # paired replicates: same items, same member
            if base_k not in j_p:
                j_p[base_k] = rjsd_test(base.response, base.reference, **perm)
            terms = {
                "J_v": rjsd_test(base.image, e.image, **perm)
                if base.image is not None and e.image is not None
                else None,
                "J_t": rjsd_test(base.text, e.text, **perm),
                "J_P": j_p[base_k],
                "J_Q": rjsd_test(e.response, e.reference, **perm),
            }
            values = {key: (_term(t, config) if t is not None else None) for key, t in terms.items()}
            row["terms"] = {key: (t.to_dict() if t is not None else None) for key, t in terms.items()}
            row["bound"] = bound_value(values, config)
            row["bound_forms"] = {b: bound_value(values, replace(config, bound=b)) for b in BOUNDS}
            row["bound_text_side"] = bound_value({**values, "J_v": None}, config)
        rows.append(row)
    seconds["score"] = time.perf_counter() - t1
    replicates = {names[k]: reps[k] for k in reps}
    correlations = _correlations(rows, config, replicates)
    return ShiftResult(
        config,
        ref.name,
        rows,
        correlations,
        dict(ensemble.history_),
        seconds,
        estimator=ensemble,
        replicates=replicates,
    )


def split_correlation(
    values: dict[str, float],
    targets: dict[str, float],
    *,
    replicates: dict[str, np.ndarray] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Pearson and Spearman of per-split ``values`` against ``targets`` (over their common splits) with a
    split-level interval: each bootstrap draw resamples the splits *and*, when ``replicates`` (per split, e.g.
    :func:`emi_replicates` or EMID replicates) are given, replaces every split's value by one joint replicate
    (same item resample and estimator member for all splits), so the interval carries the split sampling, the
    item sampling and the estimator's seed spread."""
    names = [n for n in values if n in targets and np.isfinite(values[n]) and np.isfinite(targets[n])]
    x = np.array([values[n] for n in names], float)
    y = np.array([targets[n] for n in names], float)
    out: dict[str, Any] = {"n": len(names)}
    nan2 = [math.nan, math.nan]
    if len(names) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out | {
            "pearson": math.nan,
            "pearson_ci": nan2,
            "spearman": math.nan,
            "spearman_ci": nan2,
            "pearson_p": math.nan,
            "spearman_p": math.nan,
        }
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    rep = np.stack([replicates[n] for n in names]) if replicates else None  # [splits, B]
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.integers(0, len(names), len(names)) for _ in range(n_bootstrap)])  # [n_bootstrap, splits]
    # draw b: the splits draws[b], each at its joint replicate b mod B (or at its point value)
    xb = rep[:, np.arange(n_bootstrap) % rep.shape[1]].T if rep is not None else np.broadcast_to(x, draws.shape)
    bp, bs = _bootstrap_correlations(np.take_along_axis(xb, draws, axis=1), y[draws])

    def ci(v: list[float]) -> Any:
        return _ci(np.array(v), level) if v else nan2

    return out | {
        "pearson": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "pearson_ci": ci(bp),
        "spearman": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
        "spearman_ci": ci(bs),
        "interval": "split bootstrap" + (" x joint item/estimator replicates" if rep is not None else ""),
    }


def _bootstrap_correlations(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pearson and Spearman of each row pair of ``x``, ``y`` [draws, n] (rows where either is constant left out):
    the same values as ``np.corrcoef`` and ``stats.spearmanr`` row by row (Spearman = Pearson of the average
    ranks), in a few array operations."""
    ok = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    x, y = x[ok], y[ok]

    def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    ranks = (stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))
    return pearson(x, y).tolist(), pearson(*ranks).tolist()


def emid_replicates(result: ShiftResult) -> dict[str, np.ndarray]:
    """Per shifted split, the paired EMID replicates (base replicate minus the split's)."""
    return {
        r["split"]: result.replicates[r["emid_against"]] - result.replicates[r["split"]]
        for r in result.rows
        if "emid" in r
    }


def _correlations(
    rows: list[dict[str, Any]], config: ShiftConfig, replicates: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    ood = [r for r in rows if "emid" in r and not r.get("control")]
    out: dict[str, Any] = {}
    emid_reps = (
        {r["split"]: replicates[r["emid_against"]] - replicates[r["split"]] for r in ood} if replicates else None
    )
    if len(ood) >= 3:
        out["emid_bound"] = split_correlation(
            {r["split"]: r["emid"] for r in ood},
            {r["split"]: r["bound"] for r in ood},
            replicates=emid_reps,
            seed=config.seed,
        )
        families = sorted({str(r["family"]) for r in ood if r.get("family")})
        out["emid_bound_by_family"] = {
            f: split_correlation(
                {r["split"]: r["emid"] for r in ood if r.get("family") == f},
                {r["split"]: r["bound"] for r in ood if r.get("family") == f},
                replicates=emid_reps,
                seed=config.seed,
            )
            for f in families
        }
    for key in ("accuracy", "relative_preference", "win_rate"):
        pts = [r for r in rows if isinstance(r.get(key), (int, float)) and not r.get("control")]
        if len(pts) >= 3:
            out[f"emi_{key}"] = split_correlation(
                {r["split"]: r["emi"] for r in pts},
                {r["split"]: r[key] for r in pts},
                replicates=replicates,
                seed=config.seed,
            )
    return out


def analyse(
    splits: Sequence[ShiftSplit],
    config: ShiftConfig = ShiftConfig(),
    *,
    text_embedder: TextEmbedder | None = None,
    image_embedder: ImageEmbedder | None = None,
    estimator: MIEstimator | MIEnsemble | None = None,
    id_split: str | None = None,
    progress: bool = True,
) -> ShiftResult:
    """The whole analysis on raw splits: embed, train (or reuse) the estimator, score. The ID split is
    ``id_split`` (by name) or the first split."""
    from mmlens.models.embed import default_text_embedder

    if not splits:
        raise InputError("no splits given")
    names = [s.name for s in splits]
    id_index = 0 if id_split is None else _index_of(names, id_split)
    text_embedder = text_embedder or default_text_embedder(progress)
    t0 = time.perf_counter()
    embeddings = embed_splits(splits, text_embedder, image_embedder, config.fusion)
    embed_seconds = time.perf_counter() - t0
    result = analyse_embeddings(embeddings, config, estimator=estimator, id_index=id_index, progress=progress)
    result.seconds["embed"] = embed_seconds
    result.embedders = {"text": text_embedder.name, "image": image_embedder.name if image_embedder else None}
    return result


def _index_of(names: list[str], name: str) -> int:
    if name not in names:
        raise InputError(f"ID split {name!r} not among the splits {names}")
    return names.index(name)
