"""Recalibrating BDHS's similarity threshold ``eps_s`` for another sentence embedder.

The paper's eps_s = 0.97 belongs to all-mpnet-base-v2: a rejected answer is kept when its cosine similarity to the
chosen one is below it, i.e. when it is not a near-paraphrase. Another embedder (MiniLM here) puts paraphrases and
one-object changes at other similarities, so the number does not transfer; what transfers is its role. The
calibration therefore asks the embedder to separate two kinds of answer pairs with known labels:

- ``same``: two wordings of the same content (e.g. the same objects listed in another order), which BDHS must
  treat as copies (similarity >= eps_s, try again);
- ``changed``: the answer with one object replaced by another (the smallest hallucination), which BDHS must
  accept (similarity < eps_s).

``eps_s`` is the threshold with the highest balanced accuracy (mean of the two pass rates), midway between the
two neighbouring observed similarities; ties go to the lower threshold (the stricter filter). The record says how
well the embedder separates the kinds at that threshold and at the paper's 0.97.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmlens.errors import InputError
from mmlens.models.embed import TextEmbedder

PAPER_EPS_S = 0.97


@dataclass(frozen=True)
class EpsCalibration:
    eps_s: float
    balanced_accuracy: float
    same_kept_out: float  # fraction of same-content pairs with similarity >= eps_s (BDHS retries them)
    changed_accepted: float  # fraction of one-object changes with similarity < eps_s (BDHS accepts them)
    paper_same_kept_out: float  # the same two rates at the paper's 0.97
    paper_changed_accepted: float
    same_quantiles: list[float]  # 5, 25, 50, 75, 95 % of the similarities
    changed_quantiles: list[float]
    n_same: int
    n_changed: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "method": "max balanced accuracy between same-content rewordings and one-object changes",
            "paper_eps_s": PAPER_EPS_S,
        }


def _similarities(embedder: TextEmbedder, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    from mmlens.align.bdhs import answer_similarity

    return answer_similarity(embedder, [a for a, _ in pairs], [b for _, b in pairs])


def calibrate_eps_s(
    embedder: TextEmbedder, same: Sequence[tuple[str, str]], changed: Sequence[tuple[str, str]]
) -> EpsCalibration:
    """The ``eps_s`` that best separates ``same``-content pairs (to be retried) from one-object ``changed`` pairs
    (to be accepted) under ``embedder`` (see the module docstring)."""
    if not same or not changed:
        raise InputError("calibration needs at least one same-content pair and one changed pair")
    s_same, s_changed = _similarities(embedder, same), _similarities(embedder, changed)
    values = np.unique(np.concatenate([s_same, s_changed]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    best, best_score = float(candidates[0]), -1.0
    for eps in candidates:  # ascending: the first maximum is the lowest threshold
        score = 0.5 * (float(np.mean(s_same >= eps)) + float(np.mean(s_changed < eps)))
        if score > best_score + 1e-12:
            best, best_score = float(eps), score
    q = [5, 25, 50, 75, 95]
    return EpsCalibration(
        eps_s=best,
        balanced_accuracy=best_score,
        same_kept_out=float(np.mean(s_same >= best)),
        changed_accepted=float(np.mean(s_changed < best)),
        paper_same_kept_out=float(np.mean(s_same >= PAPER_EPS_S)),
        paper_changed_accepted=float(np.mean(s_changed < PAPER_EPS_S)),
        same_quantiles=[round(float(x), 4) for x in np.percentile(s_same, q)],
        changed_quantiles=[round(float(x), 4) for x in np.percentile(s_changed, q)],
        n_same=len(same),
        n_changed=len(changed),
    )


def world_calibration_pairs(world, n_scenes: int, *, split: str = "val", seed: int = 0):
    """(same, changed) pairs from ``world`` captions: two object captions of one scene that list the same objects
    in another order, and a caption with one object word replaced by another class (of ``split`` scenes)."""
    from mmlens.align.baselines import world_substitutions

    subs = world_substitutions(world).objects
    rng = np.random.default_rng(seed)
    same, changed = [], []
    for scene in world.sample_scenes(n_scenes, split, start=50_000):
        a = world.caption(scene, rng)
        for _ in range(8):  # another order of the same objects (a one-object scene has none)
            b = world.caption(scene, rng)
            if b != a and world.mentioned_objects(a) == world.mentioned_objects(b):
                same.append((a, b))
                break
        words = a.split()
        spots = [i for i, w in enumerate(words) if w in subs]
        if spots:
            i = spots[int(rng.integers(len(spots)))]
            words[i] = str(subs[words[i]][int(rng.integers(len(subs[words[i]])))])
            changed.append((a, " ".join(words)))
    return same, changed


__all__ = ["PAPER_EPS_S", "EpsCalibration", "calibrate_eps_s", "world_calibration_pairs"]
