"""Hallucination metrics usable on any vision-language model: POPE, CHAIR with object recall, image dependence.

- :func:`pope_metrics`: yes/no probes (image, question, label) -> accuracy, precision, recall, F1 and yes-ratio
  (answers parsed by their first word; anything else counts as neither yes nor no, hence wrong).
- :func:`chair_metrics`: free descriptions vs the true object set: CHAIR_i (hallucinated mentions / mentions), CHAIR_s
  (descriptions with at least one hallucination / descriptions) and object recall, so "say less" cannot pass.
- :func:`image_dependence_gap`: mean of log p(answer | image) - log p(answer | image tokens hidden from attention),
  sums over answer tokens (mDPO's image-conditional margin).
- :func:`evaluate_on_world`: all of them on held-out scenes of the miniature world with fixed probes.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmlens.align.masking import block_image_tokens
from mmlens.answers import DEFAULT_EXTRACTOR, YES_NO
from mmlens.errors import InputError
from mmlens.models.generative import IGNORE_INDEX, VisionLanguageModel

DESCRIBE_PROMPT = "describe the image ."


def parse_yes_no(answer: str) -> str | None:
    """The leading yes/no word (:class:`mmlens.answers.AnswerExtractor`, as POPE reads answers); None otherwise."""
    answer = DEFAULT_EXTRACTOR.extract(answer)
    return answer if answer in YES_NO else None


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE scores with "yes" as the positive class."""
    if len(answers) != len(labels) or not answers:
        raise InputError(f"need as many answers as labels (got {len(answers)} and {len(labels)}), at least one")
    if any(lab not in ("yes", "no") for lab in labels):
        raise InputError("POPE labels must be 'yes' or 'no'")
    pred = [parse_yes_no(a) for a in answers]
    tp = sum(p == "yes" and lab == "yes" for p, lab in zip(pred, labels))
    fp = sum(p == "yes" and lab == "no" for p, lab in zip(pred, labels))
    fn = sum(p != "yes" and lab == "yes" for p, lab in zip(pred, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "acc": float(np.mean([p == lab for p, lab in zip(pred, labels)])),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": float(np.mean([p == "yes" for p in pred])),
        "unparsed_ratio": float(np.mean([p is None for p in pred])),
        "n": len(labels),
    }


def chair_metrics(
    descriptions: Sequence[str], true_objects: Sequence[frozenset[str] | set[str]], mentioned: Callable[[str], set[str]]
) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and object recall; ``mentioned`` maps a text to the canonical objects it names (e.g.
    ``World.mentioned_objects``)."""
    if len(descriptions) != len(true_objects) or not descriptions:
        raise InputError("need one set of true objects per description, and at least one description")
    found = [set(mentioned(d)) for d in descriptions]
    n_mentions = sum(len(m) for m in found)
    halluc = [len(m - set(t)) for m, t in zip(found, true_objects)]
    recall = [len(m & set(t)) / len(t) for m, t in zip(found, true_objects) if t]
    return {
        "chair_i": sum(halluc) / n_mentions if n_mentions else 0.0,
        "chair_s": float(np.mean([h > 0 for h in halluc])),
        "recall": float(np.mean(recall)) if recall else 0.0,
        "mean_objects_mentioned": n_mentions / len(descriptions),
        "n": len(descriptions),
    }


@torch.no_grad()
def answer_logprobs(
    vlm: VisionLanguageModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    hide_image: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """Sum of answer-token log-probabilities per example (prompt, image and padding positions excluded); with
    ``hide_image`` every image token is hidden from attention (positions unchanged)."""
    if not (len(images) == len(prompts) == len(answers)) or not prompts:
        raise InputError("need equally many (and at least one) images, prompts and answers")
    out = []
    for lo in range(0, len(prompts), batch_size):
        hi = min(lo + batch_size, len(prompts))
        batch = vlm.to_device(vlm.prepare(list(images[lo:hi]), list(prompts[lo:hi]), answers=list(answers[lo:hi])))
        labels = batch.pop("labels")
        hidden = vlm.image_token_mask(batch) if hide_image else torch.zeros_like(labels, dtype=torch.bool)
        with block_image_tokens(vlm.decoder_layers, hidden):
            logits = vlm.forward(batch).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        tok_lp = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.extend((tok_lp * keep).sum(1).tolist())
    return np.asarray(out)


def image_dependence_gap(
    vlm: VisionLanguageModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 32,
) -> float:
    """Mean log p(answer | image) - log p(answer | image hidden): how much the answer relies on the image."""
    with_image = answer_logprobs(vlm, images, prompts, answers, batch_size=batch_size)
    without = answer_logprobs(vlm, images, prompts, answers, hide_image=True, batch_size=batch_size)
    return float(np.mean(with_image - without))


class EvalScenes(enum.StrEnum):
    """Which held-out scenes the world evaluation uses."""

    HELD_OUT = "held_out"  # the first scenes of the split, as they come
    # Only scenes that hold a bias anchor without its partner (the specification's protocol): where the language
    # prior and the image disagree, so adversarial POPE probes are mostly the absent partner.
    ANCHOR_WITHOUT_PARTNER = "anchor_without_partner"


def world_eval_scenes(world, n: int, split: str, scenes: EvalScenes = EvalScenes.HELD_OUT) -> list:
    """``n`` scenes of ``split`` chosen by ``scenes`` (deterministic: the first that qualify, in scene order)."""
    if scenes is EvalScenes.HELD_OUT:
        return world.sample_scenes(n, split)
    if not world.cfg.bias_pairs:
        raise InputError("scenes=anchor_without_partner needs a world with bias pairs (WorldConfig.bias_pairs)")
    chosen: list[Any] = []
    index, limit = 0, 200 * n + 1000
    while len(chosen) < n:
        if index >= limit:
            raise InputError(
                f"only {len(chosen)} of the first {limit} {split} scenes hold a bias anchor without its "
                f"partner (bias_strength {world.cfg.bias_strength}); ask for fewer than {n}"
            )
        scene = world.sample_scene(index, split)
        index += 1
        if world.absent_partners(scene):
            chosen.append(scene)
    return chosen


@dataclass(frozen=True)
class WorldEvalConfig:
    """Held-out world evaluation; the probes depend only on these fields, so they are fixed across models."""

    n_pope_scenes: int = 100
    pope_per_image: int = 3
    n_caption_scenes: int = 100
    n_gap_examples: int = 100
    split: str = "test"
    scenes: EvalScenes = EvalScenes.HELD_OUT
    probe_seed: int = 1000
    batch_size: int = 100
    max_new_tokens: int = 24


def evaluate_on_world(vlm: VisionLanguageModel, world, config: WorldEvalConfig = WorldEvalConfig()) -> dict:
    """POPE (random, popular, adversarial), CHAIR/recall on descriptions and the image gap on ground-truth
    captions, on held-out scenes of ``world`` (a :class:`mmlens.world.World`)."""
    n = max(config.n_pope_scenes, config.n_caption_scenes, config.n_gap_examples)
    scenes = world_eval_scenes(world, n, config.split, config.scenes)
    images = {s.scene_id: world.render(s) for s in scenes}
    out: dict = {}
    pope_scenes = scenes[: config.n_pope_scenes]
    for kind in ("random", "popular", "adversarial"):
        probes = world.pope_probes(
            pope_scenes, kind=kind, per_image=config.pope_per_image, rng=np.random.default_rng(config.probe_seed)
        )
        answers = vlm.generate(
            [images[p.scene_id] for p in probes],
            [p.question for p in probes],
            max_new_tokens=2,
            batch_size=config.batch_size,
        )
        for key, value in pope_metrics(answers, [p.label for p in probes]).items():
            out[f"pope_{kind}_{key}"] = value
        out[f"pope_{kind}_top_answers"] = Counter(" ".join(a.lower().split()) for a in answers).most_common(5)
    cap_scenes = scenes[: config.n_caption_scenes]
    descriptions = vlm.generate(
        [images[s.scene_id] for s in cap_scenes],
        [DESCRIBE_PROMPT] * len(cap_scenes),
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
    )
    out.update(chair_metrics(descriptions, [s.object_classes for s in cap_scenes], world.mentioned_objects))
    out.pop("n", None)
    gap_scenes = scenes[: config.n_gap_examples]
    captions = [world.caption(s, np.random.default_rng(config.probe_seed + i)) for i, s in enumerate(gap_scenes)]
    out["image_gap"] = image_dependence_gap(
        vlm, [images[s.scene_id] for s in gap_scenes], [DESCRIBE_PROMPT] * len(gap_scenes), captions
    )
    out["examples"] = [
        {"scene_id": s.scene_id, "description": d, "objects": sorted(s.object_classes)}
        for s, d in zip(cap_scenes[:6], descriptions[:6])
    ]
    return out


def vocabulary_parser(objects: Sequence[str]) -> Callable[[str], set[str]]:
    """A ``mentioned`` function for :func:`chair_metrics` over your own object vocabulary: whole-word matches of each
    object name or its plural (+s / +es), case-insensitive; multi-word names are matched as phrases."""
    names = sorted({o.lower().strip() for o in objects if o.strip()}, key=len, reverse=True)
    if not names:
        raise InputError("the object vocabulary is empty")
    patterns = [(n, re.compile(rf"\b{re.escape(n)}(s|es)?\b")) for n in names]

    def mentioned(text: str) -> set[str]:
        low = text.lower()
        return {n for n, pat in patterns if pat.search(low)}

    return mentioned


def evaluate_files(
    vlm: VisionLanguageModel,
    *,
    pope: str | None = None,
    chair: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
) -> dict:
    """The metrics on your own data: ``pope`` a JSONL of ``{"image", "question", "label": "yes"|"no"}`` (optional
    ``kind``: random/popular/adversarial); ``chair`` a JSONL of ``{"image", "objects": [...]}`` (optional
    ``prompt``, default "describe the image ."; optional ``answer``, the reference description for the image gap).
    Image paths are relative to the JSONL. The ``data.jsonl`` of ``mmlens world export`` serves as both (its records
    hold their POPE probes in a ``pope`` list, and ``objects``)."""
    from pathlib import Path

    from mmlens.align.data import _open_image
    from mmlens.world.export import read_jsonl

    if pope is None and chair is None:
        raise InputError("give a POPE file, a CHAIR file, or both")
    out: dict = {}
    if pope is not None:
        rows = read_jsonl(pope)
        if not rows:
            raise InputError(f"{pope} has no probes")
        by_kind: dict[str, list] = {}
        for lineno, rec in rows:
            # a record of `mmlens world export` carries its image's probes in a 'pope' list
            probes = rec["pope"] if "question" not in rec and isinstance(rec.get("pope"), list) else [rec]
            if not all(
                isinstance(p, dict) and p.get("label") in ("yes", "no") and isinstance(p.get("question"), str)
                for p in probes
            ):
                raise InputError(
                    f"{pope}:{lineno}: each probe needs a question and a label 'yes' or 'no' (or a 'pope' list of "
                    "such probes, as `mmlens world export` writes)"
                )
            image = _open_image(Path(pope).parent / str(rec.get("image", "")), f"{pope}:{lineno}")
            for p in probes:
                by_kind.setdefault(str(p.get("kind", "all")), []).append((image, p["question"], p["label"]))
        for kind, probes in by_kind.items():
            answers = vlm.generate(
                [p[0] for p in probes], [p[1] for p in probes], max_new_tokens=2, batch_size=batch_size
            )
            for key, value in pope_metrics(answers, [p[2] for p in probes]).items():
                out[f"pope_{kind}_{key}"] = value
    if chair is not None:
        rows = read_jsonl(chair)
        if not rows:
            raise InputError(f"{chair} has no images")
        items = []
        for lineno, rec in rows:
            if not isinstance(rec.get("objects"), list):
                raise InputError(f"{chair}:{lineno}: each line needs 'objects', the list of objects in the image")
            items.append(
                (
                    _open_image(Path(chair).parent / str(rec.get("image", "")), f"{chair}:{lineno}"),
                    str(rec.get("prompt", DESCRIBE_PROMPT)),
                    [str(o).lower() for o in rec["objects"]],
                    # a world export record: its caption is the reference description
                    rec.get("answer", rec.get("caption") if isinstance(rec.get("vqa"), list) else None),
                )
            )
        descriptions = vlm.generate(
            [i[0] for i in items], [i[1] for i in items], max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        parser = vocabulary_parser([o for i in items for o in i[2]])
        out.update(chair_metrics(descriptions, [frozenset(i[2]) for i in items], parser))
        with_ref = [i for i in items if isinstance(i[3], str) and i[3].strip()]
        if with_ref:
            out["image_gap"] = image_dependence_gap(
                vlm,
                [i[0] for i in with_ref],
                [i[1] for i in with_ref],
                [str(i[3]) for i in with_ref],
                batch_size=batch_size,
            )
    return out


# ------------------------------------------------------------------------------ evaluation on the failure
@dataclass(frozen=True)
class FailureEvalConfig:
    """Where the language prior acts: ``n_anchor_scenes`` scenes of ``split`` that hold a bias anchor without its
    partner, against ``n_ordinary_scenes`` ordinary scenes of the same split. The probes depend only on these
    fields, so every model evaluated with one config answers the same items (paired comparisons)."""

    n_anchor_scenes: int = 150
    n_ordinary_scenes: int = 150
    pope_per_image: int = 3
    split: str = "test"
    probe_seed: int = 1000
    batch_size: int = 100
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        if self.n_anchor_scenes < 1 or self.n_ordinary_scenes < 1 or self.pope_per_image < 1:
            raise InputError("n_anchor_scenes, n_ordinary_scenes and pope_per_image must be >= 1")


#: metric -> per-item (numerator, denominator): the metric is sum(num) / sum(den) over the items, so a ratio metric
#: (CHAIR_i = hallucinated mentions / mentions) is resampled by its items (descriptions), as the accuracies are.
ItemMetrics = dict[str, tuple[list[float], list[float]]]

#: Metrics of :func:`evaluate_failure` that are proportions of 0/1 items (Wilson intervals apply).
PROPORTIONS: tuple[str, ...] = (
    "pope_random_acc",
    "pope_popular_acc",
    "pope_adversarial_acc",
    "yes_ratio",
    "partner_false_yes",
    "other_false_yes",
    "chair_s",
    "partner_mention_rate",
    "pope_random_acc_ordinary",
    "chair_s_ordinary",
)


def _answers_yes(vlm: VisionLanguageModel, images: list, questions: list[str], batch_size: int) -> list[str | None]:
    answers = vlm.generate(images, questions, max_new_tokens=2, batch_size=batch_size)
    return [parse_yes_no(a) for a in answers]  # the one place where a yes/no answer is read (issue 17 swaps it)


def evaluate_failure(vlm: VisionLanguageModel, world, config: FailureEvalConfig = FailureEvalConfig()) -> dict:
    """The hallucination metrics on the failure, per item (``items``: :data:`ItemMetrics`) and pooled
    (``metrics``), plus a few example descriptions.

    On the anchor-without-partner scenes: POPE random / popular / adversarial accuracy, the yes-ratio of the
    adversarial probes, the false-"yes" rate on the absent partner of a present anchor and on every other absent
    class (negatives of the three probe kinds pooled, each (scene, class) once), CHAIR_i / CHAIR_s / recall of
    descriptions and how often they name the absent partner, and the image-dependence gap of ground-truth captions.
    On ordinary scenes: POPE random accuracy and CHAIR_i / CHAIR_s / recall (``*_ordinary``), so a gain on the
    failure is read beside what it costs elsewhere."""
    anchor = world_eval_scenes(world, config.n_anchor_scenes, config.split, EvalScenes.ANCHOR_WITHOUT_PARTNER)
    ordinary = world.sample_scenes(config.n_ordinary_scenes, config.split)
    images = {s.scene_id: world.render(s) for s in (*anchor, *ordinary)}
    partners = {s.scene_id: world.absent_partners(s) for s in anchor}
    items: ItemMetrics = {}

    def put(name: str, num: Sequence[float], den: Sequence[float] | None = None) -> None:
        items[name] = ([float(x) for x in num], [1.0] * len(num) if den is None else [float(x) for x in den])

    negatives: dict[tuple[str, str], bool] = {}
    for kind in ("random", "popular", "adversarial"):
        probes = world.pope_probes(
            anchor, kind=kind, per_image=config.pope_per_image, rng=np.random.default_rng(config.probe_seed)
        )
        said = _answers_yes(vlm, [images[p.scene_id] for p in probes], [p.question for p in probes], config.batch_size)
        put(f"pope_{kind}_acc", [s == p.label for s, p in zip(said, probes)])
        if kind == "adversarial":
            put("yes_ratio", [s == "yes" for s in said])
            put("unparsed", [s is None for s in said])
        for s, p in zip(said, probes):
            if p.label == "no":
                negatives.setdefault((p.scene_id, p.object_class), s == "yes")
    keys = sorted(negatives)
    put("partner_false_yes", [negatives[k] for k in keys if k[1] in partners[k[0]]])
    put("other_false_yes", [negatives[k] for k in keys if k[1] not in partners[k[0]]])
    probes = world.pope_probes(
        ordinary, kind="random", per_image=config.pope_per_image, rng=np.random.default_rng(config.probe_seed)
    )
    said = _answers_yes(vlm, [images[p.scene_id] for p in probes], [p.question for p in probes], config.batch_size)
    put("pope_random_acc_ordinary", [s == p.label for s, p in zip(said, probes)])
    examples = []
    for suffix, scenes in (("", anchor), ("_ordinary", ordinary)):
        texts = vlm.generate(
            [images[s.scene_id] for s in scenes],
            [DESCRIBE_PROMPT] * len(scenes),
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
        )
        named = [world.mentioned_objects(t) for t in texts]
        halluc = [len(m - s.object_classes) for m, s in zip(named, scenes)]
        put(f"chair_i{suffix}", halluc, [len(m) for m in named])
        put(f"chair_s{suffix}", [h > 0 for h in halluc])
        put(f"recall{suffix}", [len(m & s.object_classes) / len(s.object_classes) for m, s in zip(named, scenes)])
        if not suffix:
            put("partner_mention_rate", [bool(m & partners[s.scene_id]) for m, s in zip(named, scenes)])
        examples += [
            {"scene_id": s.scene_id, "description": t, "objects": sorted(s.object_classes)}
            for s, t in zip(scenes[:3], texts[:3])
        ]
    captions = [world.caption(s, np.random.default_rng(config.probe_seed + i)) for i, s in enumerate(anchor)]
    images_a = [images[s.scene_id] for s in anchor]
    prompts = [DESCRIBE_PROMPT] * len(anchor)
    gap = answer_logprobs(vlm, images_a, prompts, captions, batch_size=config.batch_size) - answer_logprobs(
        vlm, images_a, prompts, captions, hide_image=True, batch_size=config.batch_size
    )
    put("image_gap", gap.tolist())
    metrics = {k: (sum(n) / sum(d) if sum(d) else float("nan")) for k, (n, d) in items.items()}
    return {"metrics": metrics, "items": items, "examples": examples}


__all__ = [
    "DESCRIBE_PROMPT",
    "PROPORTIONS",
    "FailureEvalConfig",
    "ItemMetrics",
    "evaluate_failure",
    "WorldEvalConfig",
    "answer_logprobs",
    "chair_metrics",
    "evaluate_files",
    "evaluate_on_world",
    "image_dependence_gap",
    "parse_yes_no",
    "pope_metrics",
    "vocabulary_parser",
]
