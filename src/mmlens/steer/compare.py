"""Steering against its baselines on equal terms: one alpha rule on validation data, the test split read once.

Each *arm* (the steering vector, a random direction of its norm, a shuffled-label mean difference, the logit bias,
...) is a function ``alpha -> intervention``, given once per seed. For every seed and arm:

1. sweep the same alpha grid on the validation examples;
2. choose alpha by :class:`AlphaRule` (the same rule for every arm);
3. generate the test answers once at that alpha.

The result holds, per arm, the flip rate (source answers that became the target) and the accuracy drop on the other
answer types side by side, each ``{mean, ci}`` over seeds: flip rates with a Wilson interval on the counts pooled
over seeds, drops with a percentile bootstrap over test items and seeds; and the paired difference of every arm
against the reference arm (bootstrap over the same items and seeds). Arms share the test items and the baseline
answers, so the differences are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmlens.answers import DEFAULT_EXTRACTOR, AnswerExtractor
from mmlens.errors import InputError
from mmlens.steer.evaluate import FlipTarget, Intervention, VQAExample, generate_answers, steering_effect

Arm = Callable[[float], Intervention]


@dataclass(frozen=True)
class AlphaRule:
    """The one rule that picks alpha for every arm, on validation data only."""

    max_drop: float = 0.05

    def describe(self) -> str:
        return (
            f"on the validation split, among the grid's alphas whose accuracy drop on the other answer types is at "
            f"most {self.max_drop:g} (a fraction of 1), the alpha with the highest flip rate (ties: the smaller "
            f"alpha); if no alpha qualifies, the smallest alpha of the grid. The same rule and grid for every arm."
        )

    def choose(self, rows: Sequence[Mapping[str, Any]]) -> float:
        """``rows``: ``{"alpha", "flip_rate", "other_types_acc_drop"}`` per swept alpha."""
        if not rows:
            raise InputError("no sweep rows to choose an alpha from")

        def drop(row: Mapping[str, Any]) -> float:
            value = float(row["other_types_acc_drop"])
            return 0.0 if math.isnan(value) else value  # no other types: nothing to hurt

        def flip(row: Mapping[str, Any]) -> float:
            value = float(row["flip_rate"])
            return -1.0 if math.isnan(value) else value

        ok = [r for r in rows if drop(r) <= self.max_drop + 1e-12]
        if not ok:
            return float(min(r["alpha"] for r in rows))
        return float(max(ok, key=lambda r: (flip(r), -float(r["alpha"])))["alpha"])


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95 % Wilson score interval of a proportion (``[nan, nan]`` for n = 0)."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _outcomes(
    examples: Sequence[VQAExample],
    baseline: Sequence[str],
    answers: Sequence[str],
    flip: FlipTarget,
    extractor: AnswerExtractor,
) -> tuple[np.ndarray, np.ndarray]:
    """(flipped per source item, correct per other-type item) of one pass."""
    source, target = extractor.extract(flip.source), extractor.extract(flip.target)
    src = [i for i, (e, b) in enumerate(zip(examples, baseline)) if flip.in_scope(e) and b == source]
    other = [i for i, e in enumerate(examples) if flip.answer_type is not None and e.answer_type != flip.answer_type]
    flipped = np.array([answers[i] == target for i in src], dtype=bool)
    correct = np.array([extractor.matches(answers[i], examples[i].answer) for i in other], dtype=bool)
    return flipped, correct


def _ci(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def compare_arms(
    model: Any,
    arms_by_seed: Sequence[Mapping[str, Arm]],
    validation: Sequence[VQAExample],
    test: Sequence[VQAExample],
    flip: FlipTarget,
    *,
    alphas: Sequence[float],
    rule: AlphaRule = AlphaRule(),
    reference: str = "steer",
    base_validation: Sequence[str] | None = None,
    base_test: Sequence[str] | None = None,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    n_boot: int = 2000,
    boot_seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; returns a JSON-ready dict (see :func:`summarise_arms` for its keys)."""
    if not arms_by_seed:
        raise InputError("compare_arms needs at least one seed of arms")
    names = list(arms_by_seed[0])
    if any(list(arms) != names for arms in arms_by_seed):
        raise InputError("every seed must have the same arms, in the same order")
    if reference not in names:
        raise InputError(f"reference arm {reference!r} is not among the arms {names}")
    if not alphas:
        raise InputError("the alpha grid is empty")
    val, tst = list(validation), list(test)
    gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "extractor": extractor}
    base_val = list(base_validation) if base_validation is not None else generate_answers(model, val, **gen)
    base_tst = list(base_test) if base_test is not None else generate_answers(model, tst, **gen)
    per_arm: dict[str, dict[str, Any]] = {n: {"alpha": [], "validation": [], "flips": [], "correct": []} for n in names}
    jobs = [(s, n) for s in range(len(arms_by_seed)) for n in names]
    for seed, name in tqdm(jobs, desc="arms x seeds", disable=not progress, leave=False):
        arm = arms_by_seed[seed][name]
        rows = []
        for a in alphas:
            answers = generate_answers(model, val, arm(float(a)), **gen)
            eff = steering_effect(val, base_val, answers, flip, extractor)
            rows.append(
                {"alpha": float(a), "flip_rate": eff["flip_rate"], "other_types_acc_drop": eff["other_types_acc_drop"]}
            )
        alpha = rule.choose(rows)
        answers = generate_answers(model, tst, arm(alpha), **gen)  # the test split, read once at the chosen alpha
        flipped, correct = _outcomes(tst, base_tst, answers, flip, extractor)
        rec = per_arm[name]
        rec["alpha"].append(alpha)
        rec["validation"].append(rows)
        rec["flips"].append(flipped)
        rec["correct"].append(correct)
    _, base_correct = _outcomes(tst, base_tst, base_tst, flip, extractor)
    return summarise_arms(
        per_arm, base_correct, reference=reference, rule=rule, alphas=alphas, n_boot=n_boot, boot_seed=boot_seed
    )


def summarise_arms(
    per_arm: Mapping[str, Mapping[str, Any]],
    base_correct: np.ndarray,
    *,
    reference: str,
    rule: AlphaRule,
    alphas: Sequence[float],
    n_boot: int = 2000,
    boot_seed: int = 0,
) -> dict[str, Any]:
    """Means and intervals from per-seed outcomes: ``arms[name] = {flip, other_drop, alpha_per_seed, ...}`` and
    ``differences[name] = {flip, other_drop}`` (reference minus arm, paired)."""
    rng = np.random.default_rng(boot_seed)
    names = list(per_arm)
    n_seeds = len(per_arm[names[0]]["flips"])
    n_src = len(per_arm[names[0]]["flips"][0])
    n_other = len(base_correct)
    flips = {n: np.stack([np.asarray(f, dtype=float) for f in per_arm[n]["flips"]]) for n in names}  # (S, n_src)
    correct = {n: np.stack([np.asarray(c, dtype=float) for c in per_arm[n]["correct"]]) for n in names}  # (S, n_oth)
    base = np.asarray(base_correct, dtype=float)
    boot_flip = {n: np.full(n_boot, np.nan) for n in names}
    boot_drop = {n: np.full(n_boot, np.nan) for n in names}
    for b in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        src = rng.integers(0, n_src, n_src) if n_src else np.zeros(0, dtype=int)
        oth = rng.integers(0, n_other, n_other) if n_other else np.zeros(0, dtype=int)
        for n in names:
            if n_src:
                boot_flip[n][b] = flips[n][np.ix_(seeds, src)].mean()
            if n_other:
                boot_drop[n][b] = base[oth].mean() - correct[n][np.ix_(seeds, oth)].mean()
    arms: dict[str, Any] = {}
    for n in names:
        k, total = int(flips[n].sum()), int(flips[n].size)
        arms[n] = {
            "flip": {"mean": _mean(flips[n]), "ci": wilson_interval(k, total), "interval": "Wilson, pooled seeds"},
            "other_drop": {
                "mean": (_mean(base) - _mean(correct[n])) if n_other else float("nan"),
                "ci": _ci(boot_drop[n]),
                "interval": "bootstrap over items and seeds",
            },
            "alpha_per_seed": list(per_arm[n]["alpha"]),
            "flip_per_seed": [_mean(f) for f in flips[n]],
            "other_drop_per_seed": [(_mean(base) - _mean(c)) if n_other else float("nan") for c in correct[n]],
            "validation": per_arm[n]["validation"],
        }
    differences = {
        n: {
            "flip": {"mean": _mean(flips[reference]) - _mean(flips[n]), "ci": _ci(boot_flip[reference] - boot_flip[n])},
            "other_drop": {
                "mean": (_mean(correct[n]) - _mean(correct[reference])) if n_other else float("nan"),
                "ci": _ci(boot_drop[reference] - boot_drop[n]),
            },
        }
        for n in names
        if n != reference
    }
    return {
        "arms": arms,
        "differences": differences,
        "difference_of": f"{reference} minus arm (paired bootstrap over test items and seeds, {n_boot} resamples)",
        "n_seeds": n_seeds,
        "n_source_items": n_src,
        "n_other_items": n_other,
        "other_acc_baseline": _mean(base),
        "alphas": [float(a) for a in alphas],
        "alpha_rule": rule.describe(),
        "max_drop": rule.max_drop,
    }


def verdict(difference: Mapping[str, Any], *, better: str, worse: str) -> str:
    """The evidence wording for a paired difference ``{mean, ci}`` (``better`` minus ``worse``)."""
    lo, hi = difference["ci"]
    d = difference["mean"]
    if any(math.isnan(float(x)) for x in (lo, hi, d)):
        return "not measured"
    if lo > 0:
        return f"{better} beats {worse} (difference {d:.3f}, 95 % interval [{lo:.3f}, {hi:.3f}])"
    if hi < 0:
        return f"{worse} beats {better} (difference {-d:.3f}, 95 % interval [{-hi:.3f}, {-lo:.3f}])"
    return f"no measurable difference (difference {d:.3f}, 95 % interval [{lo:.3f}, {hi:.3f}])"
