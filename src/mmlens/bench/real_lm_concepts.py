"""The real-LM tier of ``mmlens bench concepts``: are SmolLM2-135M-Instruct's concepts sentiment-pure?

Forward passes only. The samples are the steer tier's prompts (:mod:`mmlens.bench.real_lm`): the positive and
negative reviews of all three content-disjoint vocabularies and the other prompts (capitals, antonyms). At each
screened layer (the same layers for every seed and dictionary kind) the residual of the last prompt token is
captured; concept dictionaries (:class:`mmlens.concepts.ConceptDictionary`, k-means and semi-NMF) are fitted on all
samples with several seeds. Per dictionary: the attribute purity of each concept's top samples for the review's
sentiment (positive / negative / none for other prompts) and the prompt kind (review / capital / antonym) against
:func:`mmlens.concepts.random_purity`; the *best sentiment concept* (the purest concept whose top samples are
mostly reviews of one sentiment) and the cosine between its direction and the steering vector of that layer.

The steering vector here is mean(negative) - mean(positive) over the fit-vocabulary reviews by their *true* labels
(no generation); the steer tier keeps only the reviews the model labels correctly (70 % of them), so the two
vectors are close but not the same. A concept's direction: k-means, its centroid minus the mean of the reviews (the
centroid itself is dominated by the shared mean, and the steering vector is a difference within reviews); semi-NMF,
the concept as fitted (signed, no centre).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mmlens.bench.real_lm import LABELS, RealLMConfig, other_examples, sentiment_examples
from mmlens.concepts import (
    ConceptDictionary,
    DecomposerConfig,
    DecomposerKind,
    attribute_purity,
    random_purity,
    top_samples,
)
from mmlens.errors import InputError
from mmlens.steer.evaluate import VQAExample

NONE = "none"  # the sentiment attribute of a prompt that is not a review


@dataclass(frozen=True)
class RealLMConceptsConfig:
    """The tier's recipe (defaults = the committed run)."""

    model: str = RealLMConfig.model
    n_reviews_per_label: int = 24  # per split and label: 3 splits x 2 labels x 24 = 144 reviews
    layers: tuple[int, ...] = (8, 16, 24, 28)
    kinds: tuple[str, ...] = ("kmeans", "snmf")
    n_concepts: int = 10
    n_top: int = 10
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_size: int = 32
    seed: int = 0


def tier_samples(cfg: RealLMConceptsConfig) -> tuple[list[VQAExample], list[str], list[str], np.ndarray]:
    """The prompts, their sentiment and kind attributes, and the mask of the fit-vocabulary reviews (the steering
    vector's samples)."""
    items: list[VQAExample] = []
    fit_mask: list[bool] = []
    for split in ("fit", "validation", "test"):
        reviews = sentiment_examples(split, cfg.n_reviews_per_label, seed=cfg.seed)
        others = other_examples(split)
        items += reviews + others
        fit_mask += [split == "fit"] * len(reviews) + [False] * len(others)
    sentiment = [e.answer if e.answer_type == "sentiment" else NONE for e in items]
    kind = [e.template for e in items]  # review / capital / antonym
    return items, sentiment, kind, np.array(fit_mask)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


def sentiment_concepts(
    feats: np.ndarray,
    sentiment: Sequence[str],
    kind: Sequence[str],
    steer: np.ndarray,
    *,
    decomposer: DecomposerKind,
    n_concepts: int,
    n_top: int,
    seed: int,
) -> dict[str, Any]:
    """One dictionary's sentiment purity and its best sentiment concept's cosine with ``steer`` (see the module
    docstring). ``aligned_cosine`` is the cosine signed so that + means the concept points the way of its own
    sentiment along ``steer`` (negative concepts along +steer, positive ones along -steer)."""
    if not (len(feats) == len(sentiment) == len(kind)):
        raise InputError(f"{len(feats)} samples but {len(sentiment)} sentiment and {len(kind)} kind labels")
    dictionary = ConceptDictionary(DecomposerConfig(decomposer, n_concepts=n_concepts, seed=seed)).fit(feats)
    top = top_samples(dictionary.transform(feats), n_top)
    attrs = {"sentiment": list(sentiment), "kind": list(kind)}
    purity = attribute_purity(top, attrs)
    rand = random_purity(len(feats), top.shape[1], attrs, seed=seed)
    modal = [Counter(sentiment[r] for r in rows).most_common(1)[0][0] for rows in top]
    sent = [k for k, m in enumerate(modal) if m in LABELS]
    reviews = np.array([lab in LABELS for lab in sentiment])
    # the headline: among the concepts of reviews, purity for sentiment against random sets of reviews (over all
    # concepts, a concept of capitals is trivially pure "none": that number mostly measures the prompt kind)
    review_labels = [lab for lab in sentiment if lab in LABELS]
    rand_review = random_purity(len(review_labels), top.shape[1], {"sentiment": review_labels}, seed=seed)
    out: dict[str, Any] = {
        "review_concepts_sentiment_purity": float(purity["sentiment"][sent].mean()) if sent else None,
        "random_review_sentiment_purity": rand_review["sentiment"],
        "sentiment_purity": float(purity["sentiment"].mean()),
        "kind_purity": float(purity["kind"].mean()),
        "random_sentiment_purity": rand["sentiment"],
        "random_kind_purity": rand["kind"],
        "n_sentiment_concepts": len(sent),
        "n_pure_sentiment_concepts": int(sum(purity["sentiment"][k] == 1.0 for k in sent)),
        "sentiment_concepts_by_label": {lab: sum(modal[k] == lab for k in sent) for lab in LABELS},
    }
    if not sent:
        return {**out, "best": None}
    best = max(sent, key=lambda k: (purity["sentiment"][k], -k))
    concepts = dictionary.concepts
    direction = concepts[best] - feats[reviews].mean(0) if decomposer is DecomposerKind.KMEANS else concepts[best]
    cos = _cos(direction, steer)
    sign = 1.0 if modal[best] == "negative" else -1.0
    out["best"] = {
        "concept": int(best),
        "label": modal[best],
        "purity": float(purity["sentiment"][best]),
        "cosine_with_steering": cos,
        "aligned_cosine": sign * cos,
    }
    return out


def _interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95 % t-interval over seeds (few seeds: the t quantile, not a bootstrap)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return {"mean": float(v.mean()), "ci": None, "n": len(v)}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": float(v.mean()), "ci": [float(v.mean() - half), float(v.mean() + half)], "n": len(v)}


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Intervals over seeds of one layer and dictionary kind, and the verdict on sentiment purity."""
    keys = ("sentiment_purity", "kind_purity", "random_sentiment_purity", "random_kind_purity")
    out: dict[str, Any] = {k: _interval([r[k] for r in per_seed]) for k in keys}
    out["sentiment_minus_random"] = _interval([r["sentiment_purity"] - r["random_sentiment_purity"] for r in per_seed])
    with_reviews = [r for r in per_seed if r["review_concepts_sentiment_purity"] is not None]
    if with_reviews:
        out["review_concepts_sentiment_purity"] = _interval(
            [r["review_concepts_sentiment_purity"] for r in with_reviews]
        )
        out["random_review_sentiment_purity"] = _interval([r["random_review_sentiment_purity"] for r in with_reviews])
        out["review_minus_random"] = _interval(
            [r["review_concepts_sentiment_purity"] - r["random_review_sentiment_purity"] for r in with_reviews]
        )
    bests = [r["best"] for r in per_seed if r["best"] is not None]
    out["n_seeds_with_a_sentiment_concept"] = len(bests)
    out["n_sentiment_concepts"] = _interval([r["n_sentiment_concepts"] for r in per_seed])
    if bests:
        out["best_purity"] = _interval([b["purity"] for b in bests])
        out["best_aligned_cosine"] = _interval([b["aligned_cosine"] for b in bests])
    low = out["review_minus_random"]["ci"] if with_reviews else None
    out["verdict"] = (
        "review concepts are more sentiment-pure than random sets of reviews (interval above 0)"
        if low is not None and low[0] > 0
        else "no measurable difference from random sets of reviews"
    )
    return out


def real_lm_concepts_tier(
    lm: Any, cfg: RealLMConceptsConfig = RealLMConceptsConfig(), *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the module docstring's protocol on ``lm`` (a :class:`~mmlens.models.CausalLanguageModel`)."""
    from mmlens.steer.build import capture_examples

    say = log or (lambda message: None)
    t0 = time.perf_counter()
    n_layers = int(lm.num_layers)
    layers = sorted({layer % n_layers for layer in cfg.layers})
    items, sentiment, kind, fit_mask = tier_samples(cfg)
    say(f"real LM concepts: capturing {len(items)} prompts (last prompt token, no generation) at layers {layers}")
    t_cap = time.perf_counter()
    cap = capture_examples(lm, items, layers, max_new_tokens=0, batch_size=cfg.batch_size, progress=False)
    capture_seconds = time.perf_counter() - t_cap
    if len(cap.sample_index) != len(items):
        raise InputError(f"the capture kept {len(cap.sample_index)} of {len(items)} prompts")
    fit_labels = [sentiment[i] for i in np.flatnonzero(fit_mask)]
    per_layer: dict[str, Any] = {}
    for layer in layers:
        feats = cap.layer(layer).double().numpy()
        fit_feats = feats[fit_mask]
        is_neg = np.array([lab == "negative" for lab in fit_labels])
        steer = fit_feats[is_neg].mean(0) - fit_feats[~is_neg].mean(0)
        per_kind: dict[str, Any] = {"steering_vector_norm": float(np.linalg.norm(steer))}
        for name in cfg.kinds:
            decomposer = DecomposerKind(name)
            say(f"real LM concepts: layer {layer}, {name}, {len(cfg.seeds)} seeds")
            runs = [
                sentiment_concepts(
                    feats,
                    sentiment,
                    kind,
                    steer,
                    decomposer=decomposer,
                    n_concepts=cfg.n_concepts,
                    n_top=cfg.n_top,
                    seed=s,
                )
                for s in cfg.seeds
            ]
            per_kind[name] = {**summarise(runs), "per_seed": runs}
        per_layer[str(layer)] = per_kind
    return {
        "model": cfg.model,
        "task": "review sentiment (positive and negative reviews of three content-disjoint vocabularies) and other "
        "prompts (capitals, antonyms); residual of the last prompt token, forward passes only",
        "n_layers": n_layers,
        "layers": layers,
        "layer_rule": "the configured layers, the same for every seed and dictionary kind (no selection)",
        "attributes": {
            "sentiment": "positive / negative for reviews, none for other prompts",
            "kind": "review / capital / antonym",
        },
        "purity": "attribute purity of each concept's top samples (share holding their most common value), mean over "
        "concepts, against mmlens.concepts.random_purity (random sets of the same size); 95 % t-intervals over "
        "dictionary seeds. Headline (verdict): review_concepts_sentiment_purity, the mean over the concepts whose top "
        "samples are mostly reviews of one sentiment, against random sets of reviews (review_minus_random); "
        "sentiment_purity over all concepts counts a concept of other prompts as pure 'none'",
        "best_concept_rule": "among concepts whose top samples are mostly reviews of one sentiment, the one with the "
        "highest sentiment purity (ties: the lower index)",
        "steering_vector": "mean(negative) - mean(positive) over the fit-vocabulary reviews by their true labels",
        "direction": "k-means: centroid minus the mean of the reviews; semi-NMF: the concept as fitted",
        "per_layer": per_layer,
        "data": {
            "n_samples": len(items),
            "by_kind": dict(Counter(kind)),
            "by_sentiment": dict(Counter(sentiment)),
            "n_steering_samples": int(fit_mask.sum()),
        },
        "config": asdict(cfg),
        "capture_seconds": capture_seconds,
        "seconds": time.perf_counter() - t0,
    }
