"""Measuring what steering changes: answers per type, flips toward a target, and the selection score.

Everything compares answers of the same examples with and without an intervention, generated in the same run:
the flip rate (of the answers that were the source, how many became the target), the accuracy kept on the other
answer types, and the share of changed predictions. The selection score (Khayatan et al. 2025, App. B.3) ranks
candidate vectors by how cleanly they push a few answers up.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from mmlens.answers import DEFAULT_EXTRACTOR, AnswerExtractor, normalise_text
from mmlens.errors import InputError
from mmlens.models.generative import CausalLanguageModel
from mmlens.progress import progress_bar
from mmlens.steer.apply import SteerConfig, Steering
from mmlens.steer.vectors import SteeringVector


class Intervention(Protocol):
    """Anything with ``apply(model)`` returning a context manager (:class:`Steering`, :class:`LogitBias`)."""

    def apply(self, model: Any) -> contextlib.AbstractContextManager: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class VQAExample:
    """One question with its ground truth; ``image`` is None for a text-only model."""

    image: Image.Image | None
    question: str
    answer: str
    answer_type: str
    template: str = ""


@dataclass(frozen=True)
class FlipTarget:
    """The change steering should make: answers ``source`` become ``target``, on the questions of ``answer_type``
    (and of ``template`` if given); the "other types" whose accuracy must hold are the other answer types."""

    source: str
    target: str
    answer_type: str | None = None
    template: str | None = None

    def in_scope(self, example: VQAExample) -> bool:
        return (self.answer_type is None or example.answer_type == self.answer_type) and (
            self.template is None or example.template == self.template
        )


def normalise_answer(text: str) -> str:
    """:func:`mmlens.answers.normalise_text` (lower case, single spaces, no trailing punctuation, immediate word
    repeats collapsed: "no no no" -> "no")."""
    return normalise_text(text)


def _check_examples(examples: Sequence[VQAExample]) -> list[VQAExample]:
    items = list(examples)
    if not items:
        raise InputError("no examples to evaluate")
    return items


def generate_answers(
    model: Any,
    examples: Sequence[VQAExample],
    intervention: Intervention | None = None,
    *,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
) -> list[str]:
    """Batched greedy answers, each the answer ``extractor`` reads from the generated text, under ``intervention``
    if given."""
    items = _check_examples(examples)
    questions = [e.question for e in items]
    context = intervention.apply(model) if intervention is not None else contextlib.nullcontext()
    with context:
        if isinstance(model, CausalLanguageModel):
            raw = model.generate(questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
        else:
            raw = model.generate(
                [e.image for e in items], questions, max_new_tokens=max_new_tokens, batch_size=batch_size
            )
    return [extractor.extract(a) for a in raw]


def _rate(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def accuracy_by_type(
    examples: Sequence[VQAExample], answers: Sequence[str], extractor: AnswerExtractor = DEFAULT_EXTRACTOR
) -> dict[str, float]:
    """Share of answers that match the ground truth (``extractor.matches``), per answer type."""
    groups: dict[str, list[bool]] = {}
    for ex, ans in zip(examples, answers):
        groups.setdefault(ex.answer_type, []).append(extractor.matches(ans, ex.answer))
    return {t: _rate(v) for t, v in sorted(groups.items())}


def steering_effect(
    examples: Sequence[VQAExample],
    baseline: Sequence[str],
    steered: Sequence[str],
    flip: FlipTarget,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
) -> dict[str, Any]:
    """What an intervention did to the answers of ``examples``, against the baseline answers of the same run.

    - ``flip_rate``: of the in-scope questions answered ``source`` at baseline, the share answered ``target`` under
      the intervention (``n_source`` of them); ``target_rate``: the same over every in-scope question not
      answered ``target`` at baseline.
    - ``other_types_acc_drop``: accuracy on the other answer types, baseline minus steered (a fraction: 0.02 = 2
      points); ``acc_baseline`` / ``acc_steered`` per type.
    - ``changed_rate``: share of all predictions that changed, also per type; target/source answer count changes.
    """
    items = _check_examples(examples)
    if not (len(items) == len(baseline) == len(steered)):
        raise InputError(f"got {len(items)} examples, {len(baseline)} baseline and {len(steered)} steered answers")
    source, target = extractor.extract(flip.source), extractor.extract(flip.target)
    baseline = [extractor.extract(b) for b in baseline]
    steered = [extractor.extract(s) for s in steered]
    in_scope = [flip.in_scope(e) for e in items]
    flips = [s == target for b, s, scope in zip(baseline, steered, in_scope) if scope and b == source]
    reached = [s == target for b, s, scope in zip(baseline, steered, in_scope) if scope and b != target]
    acc_b, acc_s = accuracy_by_type(items, baseline, extractor), accuracy_by_type(items, steered, extractor)
    others = [i for i, e in enumerate(items) if flip.answer_type is not None and e.answer_type != flip.answer_type]
    other_b = _rate([extractor.matches(baseline[i], items[i].answer) for i in others])
    other_s = _rate([extractor.matches(steered[i], items[i].answer) for i in others])
    changed: dict[str, list[bool]] = {}
    for e, b, s in zip(items, baseline, steered):
        changed.setdefault(e.answer_type, []).append(b != s)
    scoped_b = Counter(b for b, scope in zip(baseline, in_scope) if scope)
    scoped_s = Counter(s for s, scope in zip(steered, in_scope) if scope)
    return {
        "flip_rate": _rate(flips),
        "n_source": len(flips),
        "target_rate": _rate(reached),
        "other_types_acc_drop": other_b - other_s if others else float("nan"),
        "other_types_acc_baseline": other_b,
        "other_types_acc_steered": other_s,
        "acc_baseline": acc_b,
        "acc_steered": acc_s,
        "changed_rate": _rate([b != s for b, s in zip(baseline, steered)]),
        "changed_rate_by_type": {t: _rate(v) for t, v in sorted(changed.items())},
        "target_count_delta": scoped_s[target] - scoped_b[target],
        "source_count_delta": scoped_s[source] - scoped_b[source],
    }


def evaluate_interventions(
    model: Any,
    examples: Sequence[VQAExample],
    interventions: Mapping[str, Intervention],
    flip: FlipTarget,
    *,
    baseline: Sequence[str] | None = None,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    progress: bool = True,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
) -> dict[str, dict[str, Any]]:
    """:func:`steering_effect` of each named intervention against one baseline pass (computed if not given)."""
    items = _check_examples(examples)
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "extractor": extractor}
    if baseline is None:
        baseline = generate_answers(model, items, **gen)
    out = {}
    for name, intervention in progress_bar(list(interventions.items()), desc="interventions", enabled=progress):
        steered = generate_answers(model, items, intervention, **gen)
        out[name] = {
            **steering_effect(items, baseline, steered, flip, extractor),
            "intervention": intervention.describe(),
        }
    return out


def alpha_sweep(
    model: Any,
    examples: Sequence[VQAExample],
    vectors: Sequence[SteeringVector],
    alphas: Sequence[float],
    flip: FlipTarget,
    config: SteerConfig | None = None,
    *,
    baseline: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """The effect at each alpha (same positions), as rows with an ``alpha`` key."""
    base = config or SteerConfig()
    interventions = {
        f"{a:g}": Steering(tuple(vectors), SteerConfig(float(a), base.positions, base.condition)) for a in alphas
    }
    res = evaluate_interventions(model, examples, interventions, flip, baseline=baseline, **kwargs)
    return [{"alpha": float(a), **res[f"{a:g}"]} for a in alphas]


def layer_sweep(
    model: Any,
    examples: Sequence[VQAExample],
    vectors_by_layer: Mapping[int, SteeringVector],
    flip: FlipTarget,
    config: SteerConfig | None = None,
    *,
    baseline: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """The effect of one vector per layer (each applied alone), as rows with a ``layer`` key."""
    interventions = {
        str(layer): Steering((vec,), config or SteerConfig()) for layer, vec in sorted(vectors_by_layer.items())
    }
    res = evaluate_interventions(model, examples, interventions, flip, baseline=baseline, **kwargs)
    return [{"layer": int(layer), **res[str(layer)]} for layer in sorted(vectors_by_layer)]


# ------------------------------------------------------------------------------------------ selection score
@dataclass(frozen=True)
class SelectionScore:
    """Score of one candidate: ``primary`` are the answers it pushes up together, ``delta_counts`` the count change
    of every answer (steered minus baseline)."""

    score: float
    primary: tuple[str, ...]
    delta_counts: Mapping[str, int] = field(default_factory=dict)


def selection_score(baseline: Sequence[str], steered: Sequence[str], *, top_n: int = 5) -> SelectionScore:
    """Khayatan et al. (2025, B.3): Delta c = answer counts with steering minus without; keep the ``top_n`` answers
    by Delta c; split them in two by 1-D k-means; the primary cluster holds the maximum; score = min over the
    primary cluster minus max over the secondary one (0 when nothing rises).

    Falling answers enter the 2-means as 0 (Delta c clipped at 0 from below): the source answer's own drop (-100
    when 100 answers flip away from it) would otherwise be a cluster of its own, pulling the other unchanged answers
    into the primary cluster and adding its size to the score. ``delta_counts`` keeps the signed changes."""
    from sklearn.cluster import KMeans

    base, new = Counter(baseline), Counter(steered)
    deltas = {a: new[a] - base[a] for a in sorted(set(base) | set(new))}
    top = sorted(deltas.items(), key=lambda kv: (-kv[1], kv[0]))[: max(top_n, 2)]
    values = np.array([[max(float(v), 0.0)] for _, v in top])
    if len(top) < 2 or values.max() <= 0:
        return SelectionScore(0.0, (), deltas)
    if np.unique(values).size == 1:
        return SelectionScore(0.0, tuple(a for a, _ in top), deltas)
    labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(values)
    primary_label = labels[int(values.argmax())]
    primary = [i for i in range(len(top)) if labels[i] == primary_label]
    secondary = [i for i in range(len(top)) if labels[i] != primary_label]
    score = float(values[primary].min() - values[secondary].max())
    return SelectionScore(score, tuple(top[i][0] for i in primary), deltas)


@dataclass(frozen=True, eq=False)
class Selected:
    """A candidate vector with its selection score on the validation examples."""

    vector: SteeringVector
    selection: SelectionScore

    def describe(self) -> dict[str, Any]:
        return {
            **self.vector.describe(),
            "score": self.selection.score,
            "primary": list(self.selection.primary),
            "top_deltas": dict(sorted(self.selection.delta_counts.items(), key=lambda kv: -kv[1])[:5]),
        }


def select_vectors(
    model: Any,
    candidates: Sequence[SteeringVector],
    examples: Sequence[VQAExample],
    config: SteerConfig | None = None,
    *,
    top_n: int = 5,
    max_primary: int = 2,
    baseline: Sequence[str] | None = None,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    progress: bool = True,
    on_candidate: Callable[[SteeringVector, Sequence[str]], None] | None = None,
) -> list[Selected]:
    """Score every candidate on ``examples``; keep those whose primary cluster has at most ``max_primary`` answers,
    rank by score, and keep the best vector per primary answer set (targets de-duplicated)."""
    items = _check_examples(examples)
    if not candidates:
        raise InputError("no candidate vectors to select from")
    if baseline is None:
        baseline = generate_answers(model, items, max_new_tokens=max_new_tokens, batch_size=batch_size)
    scored = []
    for vec in progress_bar(candidates, desc="candidates", enabled=progress):
        steered = generate_answers(
            model,
            items,
            Steering((vec,), config or SteerConfig()),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        if on_candidate is not None:
            on_candidate(vec, steered)
        sel = selection_score(baseline, steered, top_n=top_n)
        if sel.primary and len(sel.primary) <= max_primary and sel.score > 0:
            scored.append(Selected(vec, sel))
    scored.sort(key=lambda s: -s.selection.score)
    best: dict[tuple[str, ...], Selected] = {}
    for s in scored:
        best.setdefault(tuple(sorted(s.selection.primary)), s)
    return list(best.values())


# ------------------------------------------------------------------------------------ sweeps with baselines
SUMMARY_KEYS = (
    "flip_rate",
    "target_rate",
    "n_source",
    "other_types_acc_drop",
    "changed_rate",
    "target_count_delta",
    "source_count_delta",
    "acc_baseline",
    "acc_steered",
)


def _summary(effect: Mapping[str, Any]) -> dict[str, Any]:
    return {k: effect[k] for k in SUMMARY_KEYS if k in effect}


class SweepKind(enum.StrEnum):
    """What :func:`sweep_with_baselines` applies at each alpha; the value is the key of its effect in a row."""

    STEER = "steer"  # the vector itself
    RANDOM = "random"  # a random direction of the vector's norm
    SHUFFLED = "shuffled"  # a mean difference with shuffled labels (given by the caller)
    LOGIT_BIAS = "logit_bias"  # the vector through the final norm and the unembedding


def sweep_with_baselines(
    model: Any,
    examples: Sequence[VQAExample],
    vector: SteeringVector,
    alphas: Sequence[float],
    flip: FlipTarget,
    *,
    positions: Any = None,
    condition: Any = None,
    shuffled: SteeringVector | None = None,
    random_seed: int = 0,
    kinds: Sequence[SweepKind] = tuple(SweepKind),
    baseline: Sequence[str] | None = None,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    progress: bool = False,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
) -> list[dict[str, Any]]:
    """One row per alpha: ``{"alpha", "steer": effect, "random": ..., "shuffled": ..., "logit_bias": ...}``, every
    intervention at the same alpha against one baseline pass. ``random`` is a direction of the vector's norm
    (``random_seed``); ``shuffled`` is used only if given (it needs the labelled activations); ``logit_bias`` is
    the vector through the final norm and the unembedding (:func:`mmlens.steer.logit_bias`). With a ``condition``
    every intervention is gated the same way (the controls keep the vector's reference and contrasts)."""
    from mmlens.steer.apply import LogitBias, SteerCondition, SteerPositions
    from mmlens.steer.vectors import random_like

    rule = positions if positions is not None else SteerPositions.ALL
    cond = condition if condition is not None else SteerCondition.ALWAYS
    control = random_like(vector, seed=random_seed)
    makers: dict[SweepKind, Callable[[float], Intervention]] = {
        SweepKind.STEER: lambda a: Steering((vector,), SteerConfig(a, rule, cond)),
        SweepKind.RANDOM: lambda a: Steering((control,), SteerConfig(a, rule, cond)),
        SweepKind.LOGIT_BIAS: lambda a: LogitBias(vector, a, cond),
    }
    if shuffled is not None:
        makers[SweepKind.SHUFFLED] = lambda a: Steering((shuffled,), SteerConfig(a, rule, cond))
    try:
        requested = [SweepKind(k) for k in kinds]
    except ValueError:
        raise InputError(f"unknown sweep kinds in {list(kinds)}; use {[k.value for k in SweepKind]}") from None
    chosen = [k for k in requested if k in makers]  # "shuffled" only when its vector is given
    interventions = {f"{k}@{a:g}": makers[k](float(a)) for a in alphas for k in chosen}
    res = evaluate_interventions(
        model,
        examples,
        interventions,
        flip,
        baseline=baseline,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        extractor=extractor,
    )
    return [{"alpha": float(a), **{k: _summary(res[f"{k}@{a:g}"]) for k in chosen}} for a in alphas]


def choose_alpha(
    rows: Sequence[Mapping[str, Any]],
    *,
    max_drop: float = 0.02,
    kind: SweepKind = SweepKind.STEER,
    key: str = "flip_rate",
) -> float:
    """The alpha rule used throughout: among rows whose ``kind`` effect drops other-type accuracy by at most
    ``max_drop``, the highest ``key`` (ties: the smaller alpha); if none qualifies, the smallest alpha. Choose it on
    data that is not used for the reported numbers."""
    if not rows:
        raise InputError("no sweep rows to choose an alpha from")

    def drop(row: Mapping[str, Any]) -> float:
        value = row[kind]["other_types_acc_drop"]
        return 0.0 if math.isnan(value) else value  # NaN: no other types to hurt

    ok = [r for r in rows if drop(r) <= max_drop]
    if ok:
        best = max(ok, key=lambda r: (np.nan_to_num(r[kind][key], nan=-1.0), -r["alpha"]))
        return float(best["alpha"])
    return float(min(r["alpha"] for r in rows))


def evaluate_vectors(
    model: Any,
    examples: Sequence[VQAExample],
    vectors: Sequence[SteeringVector],
    flip: FlipTarget,
    *,
    alphas: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    positions: Any = None,
    condition: Any = None,
    max_drop: float = 0.02,
    random_seed: int = 0,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    n_examples: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything ``mmlens steer eval`` reports: per steering vector an alpha sweep with its baselines (random
    direction, shuffled labels when the file holds that control for the same layer, logit bias), the alpha chosen
    by :func:`choose_alpha` (on these same examples: in-sample), and before/after answers of a few examples."""
    from mmlens.steer.apply import SteerCondition, SteerPositions
    from mmlens.steer.settings import EvalSettings, GenerationSettings
    from mmlens.steer.vectors import VectorKind

    # the settings dataclasses validate (finite, in range) as the command line does
    settings = EvalSettings(alphas=tuple(alphas), max_drop=max_drop, random_seed=random_seed)
    GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    alphas = settings.alphas
    cond = condition if condition is not None else SteerCondition.ALWAYS
    items = _check_examples(examples)
    if not vectors:
        raise InputError("no steering vectors to evaluate")
    controls = {(v.layer, v.source, v.target): v for v in vectors if v.kind is VectorKind.SHUFFLED}
    main = [v for v in vectors if v.kind not in (VectorKind.SHUFFLED, VectorKind.RANDOM)]
    if not main:
        raise InputError("the file holds only control vectors (random/shuffled): nothing to evaluate")
    rule = positions if positions is not None else SteerPositions.ALL
    baseline = generate_answers(model, items, max_new_tokens=max_new_tokens, batch_size=batch_size)
    results = []
    for vec in progress_bar(main, desc="vectors", enabled=progress and len(main) > 1):
        rows = sweep_with_baselines(
            model,
            items,
            vec,
            alphas,
            flip,
            positions=rule,
            condition=cond,
            shuffled=controls.get((vec.layer, vec.source, vec.target)),
            random_seed=random_seed,
            baseline=baseline,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        best = choose_alpha(rows, max_drop=max_drop)
        results.append(
            {
                "vector": vec.describe(),
                "best_alpha": best,
                "sweep": rows,
                "at_best": next(r for r in rows if r["alpha"] == best),
            }
        )
    # the before/after cards show the vector that flips most at its chosen alpha (not the file's first vector,
    # which may flip nothing)
    pick = max(range(len(main)), key=lambda i: results[i]["at_best"]["steer"]["flip_rate"])
    first = main[pick]
    best_alpha = results[pick]["best_alpha"]
    source = normalise_answer(flip.source)
    chosen = [i for i, (e, b) in enumerate(zip(items, baseline)) if flip.in_scope(e) and b == source][:n_examples]
    chosen += [i for i, e in enumerate(items) if not flip.in_scope(e)][: max(0, n_examples - len(chosen))]
    shown: list[dict[str, Any]] = []
    if chosen:
        after = generate_answers(
            model,
            [items[i] for i in chosen],
            Steering((first,), SteerConfig(best_alpha, rule, cond)),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        shown = [
            {
                "index": i,
                "question": items[i].question,
                "truth": items[i].answer,
                "answer_type": items[i].answer_type,
                "before": baseline[i],
                "after": a,
            }
            for i, a in zip(chosen, after)
        ]
    return {
        "flip": {
            "source": flip.source,
            "target": flip.target,
            "answer_type": flip.answer_type,
            "template": flip.template,
        },
        "n_examples": len(items),
        "positions": rule.value,
        "condition": cond.value,
        "alphas": [float(a) for a in alphas],
        "max_drop": max_drop,
        "baseline_accuracy": accuracy_by_type(items, baseline),
        "vectors": results,
        "examples": shown,
        "example_vector": first.name,
        "example_alpha": best_alpha,
    }
