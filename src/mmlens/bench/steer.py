"""``mmlens bench steer``: steering on equal terms, the paper's ungated vector first.

Tiers: ``mini_llava`` (the zoo's mini-llava on the miniature world) and ``real_lm`` (SmolLM2-135M-Instruct on
review sentiment, :mod:`mmlens.bench.real_lm`). Each tier records its commit, model and time in ``tier_runs``; a
rerun of one tier (e.g. on a new mini-llava) replaces only its keys.

Data: vectors come from the world's ``val`` split (scenes ``0..n_train``), every choice (alpha, layer, the
selection score) is made on the next ``n_select`` val scenes, and every reported number is measured on ``test``
scenes (content disjoint from both), each chosen setting read once.

The alpha rule (:class:`mmlens.steer.AlphaRule`, the same for steering and every baseline, the logit bias
included, each at its own alpha from the same grid): on validation, among the alphas whose other-type accuracy drop
is at most ``max_drop``, the one with the highest flip rate (ties: the smaller alpha); if none, the smallest alpha.

1. yes -> no. Screening: each layer's coarse vector (mean "no" - mean "yes" at the last prompt position, correct
   answers only) over the alpha grid on validation; the layer rule picks a layer. At that layer and at the last
   layer: steering, a random direction of its norm, the shuffled-label mean difference and the logit bias of the
   same vector, over ``seeds`` (each seed: the vector's fit subsample and the controls' draws), flip rate and
   other-type drop side by side with 95 % intervals. ``ungated`` is the paper's method (every sample); ``gated``
   is our addition (the ``SOURCE_CONCEPT`` gate, every arm gated alike), reported beside it.
2. colour -> colour and number -> number (exploratory): candidates are answer-pair mean differences and k-means
   concept differences at the last layer; the selection score picks the vectors that push an answer up; each is
   measured on test ungated and gated.
3. caption style at a middle layer: the fine-tuning shift vector mini-llava -> mini-llava-colour at the position
   emitting the first colour word in both models (the same token, as in the paper), against the logit bias and a
   random direction; colour-only captions (colours named, all correct, no shape word, not looping: the
   fine-tune's defining change), colour recall and loops against the scenes' ground truth.
4. overhead: steered against plain batched generation of the same number of tokens, interleaved repeats.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mmlens.answers import DEFAULT_EXTRACTOR
from mmlens.errors import InputError
from mmlens.steer.apply import (
    LogitBias,
    SteerCondition,
    SteerConfig,
    Steering,
    SteerPositions,
    steer,
)
from mmlens.steer.build import WRONG, answer_labels, capture_examples
from mmlens.steer.compare import AlphaRule, compare_arms
from mmlens.steer.evaluate import (
    FlipTarget,
    VQAExample,
    evaluate_interventions,
    generate_answers,
    select_vectors,
    steering_effect,
)
from mmlens.steer.vectors import (
    SteeringVector,
    VectorKind,
    concept_vectors,
    finetuning_shift_vectors,
    random_like,
    shuffled_vector,
    vector_from_labels,
)
from mmlens.zoo import world_of

CAPTION_PROMPT = "describe the image ."


@dataclass(frozen=True)
class SteerBenchConfig:
    """The benchmark's recipe (defaults = the committed run)."""

    model: str = "zoo:mini-llava"
    finetuned: str = "zoo:mini-llava-colour"
    seed: int = 0
    n_train: int = 400  # val scenes the vectors are built from
    n_select: int = 60  # further val scenes: alpha choice, layer screening and selection score
    n_test: int = 150  # test scenes: every reported number
    # one grid for steering and every baseline, reaching small strengths (the chosen alpha must not sit on an edge)
    alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0)
    caption_alphas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
    select_alphas: tuple[float, ...] = (1.0,)  # concept and answer differences at their natural scale
    positions: SteerPositions = SteerPositions.ALL  # the reference adds the vector at every position
    max_drop: float = 0.05  # the alpha rule's cap on the other-type accuracy drop (the 5-point target)
    seeds: tuple[int, ...] = (0, 1, 2)  # each: the fit subsample of the vector, the random and shuffled controls
    fit_fraction: float = 0.8  # share of the fit rows a seed's vector is built from
    n_boot: int = 2000  # bootstrap resamples of the intervals
    n_concepts: int = 8
    n_selected: int = 5
    vqa_tokens: int = 3
    caption_tokens: int = 24
    batch_size: int = 128
    overhead_repeats: int = 5
    overhead_copies: int = 3  # the test images repeated: enough work per timing to rise above timer noise
    threads: int = 2


# ------------------------------------------------------------------------------------------------ the world


def _vqa(world, scenes, seed: int) -> list[VQAExample]:
    rng = np.random.default_rng(seed)
    out: list[VQAExample] = []
    for scene in scenes:
        image = world.render(scene)
        out.extend(VQAExample(image, q.question, q.answer, q.answer_type, q.template) for q in world.vqa(scene, rng))
    return out


def caption_metrics(world, scenes, captions: Sequence[str]) -> dict[str, float]:
    """Caption style against the scenes' ground truth.

    - ``colour_mention_rate`` / ``shape_mention_rate``: captions naming a colour / a shape (any synonym);
    - ``colours_correct_rate``: of the captions naming colours, those whose colours are all in the scene;
    - ``colour_recall``: mean share of the scene's colours a caption names;
    - ``colour_only_rate``: the fine-tune's defining change (mini-llava-colour: "two red objects on a black
      background"): names colours, all correct, no shape word, and not degenerate;
    - ``colour_style_rate``: the same with the word "object(s)" (the fine-tune's exact template);
    - ``repetition_rate``: degenerate captions (:func:`is_degenerate`), which count as failures in the two rates
      above; ``mean_words``.
    """
    colours = set(world.cfg.colours)
    words = [re.findall(r"[a-z]+", c.lower()) for c in captions]
    named = [colours & set(w) for w in words]
    shapes = [bool(world.mentioned_objects(c)) for c in captions]
    correct = [bool(n) and n <= sc.colours for n, sc in zip(named, scenes)]
    style = [("object" in w or "objects" in w) and not s for w, s in zip(words, shapes)]
    loops = [is_degenerate(w) for w in words]

    def rate(values: Sequence[float]) -> float:
        return round(float(np.mean(values)), 4) if values else float("nan")

    return {
        "colour_mention_rate": rate([bool(n) for n in named]),
        "shape_mention_rate": rate(shapes),
        "colours_correct_rate": rate([c for c, n in zip(correct, named) if n]),
        "colour_recall": rate([len(n & sc.colours) / len(sc.colours) for n, sc in zip(named, scenes)]),
        "colour_only_rate": rate([c and not s and not loop for c, s, loop in zip(correct, shapes, loops)]),
        "colour_style_rate": rate([st and c and not loop for st, c, loop in zip(style, correct, loops)]),
        "repetition_rate": rate(loops),
        "mean_words": round(float(np.mean([len(w) for w in words])), 2) if words else float("nan"),
    }


def is_degenerate(words: Sequence[str], *, max_repeats: int = 3, max_ngram: int = 3) -> bool:
    """A looping caption: some 1- to ``max_ngram``-word sequence repeated ``max_repeats`` times back to back
    ("object object object", "object bottom object bottom object bottom")."""
    for n in range(1, max_ngram + 1):
        for i in range(len(words) - n * max_repeats + 1):
            gram = list(words[i : i + n])
            if all(list(words[i + k * n : i + (k + 1) * n]) == gram for k in range(1, max_repeats)):
                return True
    return False


# ------------------------------------------------------------------------------------------------- helpers
def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------- 1. yes -> no
def steering_arms(
    acts: torch.Tensor,
    labels: Sequence[str],
    source: str,
    target: str,
    *,
    layer: int,
    seed: int,
    positions: SteerPositions,
    condition: SteerCondition,
    fraction: float,
    model: str = "",
) -> tuple[SteeringVector, dict[str, Callable[[float], Any]]]:
    """One seed's arms on equal terms: the coarse vector built from a ``fraction`` subsample of the fit rows (the
    seed draws it), a random direction of its norm, the shuffled-label mean difference (same rows) and the logit
    bias of the same vector. Every arm is a function alpha -> intervention with the same positions and condition."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    rows = (
        np.sort(rng.choice(n, size=max(2, int(round(fraction * n))), replace=False)) if fraction < 1 else np.arange(n)
    )
    sub, sub_labels = acts[torch.as_tensor(rows)], [labels[i] for i in rows]
    vec = vector_from_labels(sub, sub_labels, source, target, layer=layer, model=model, position="last_prompt")
    shuffled = shuffled_vector(sub, sub_labels, source, target, layer=layer, seed=seed)
    random = random_like(vec, seed=seed)

    def steering(v: SteeringVector) -> Callable[[float], Any]:
        return lambda a: Steering((v,), SteerConfig(a, positions, condition))

    arms: dict[str, Callable[[float], Any]] = {
        "steer": steering(vec),
        "random": steering(random),
        "shuffled": steering(shuffled),
        "logit_bias": lambda a: LogitBias(vec, a, condition),
    }
    return vec, arms


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """``{arm: {flip, other_drop}}`` (means and intervals) of one comparison, the table the docs show."""
    return {
        name: {"flip": arm["flip"], "other_drop": arm["other_drop"], "alpha_per_seed": arm["alpha_per_seed"]}
        for name, arm in result["arms"].items()
    }


def _yes_to_no(
    vlm, cap, labels, select, test, base_select, base_test, cfg: SteerBenchConfig, log, condition: SteerCondition
) -> dict:
    """1. Screening: every layer's vector (seed 0, all fit rows) swept over the alpha grid on validation; the
    layer rule picks the layer. 2. At that layer and at the last layer (the paper's layer for VQA), steering and
    its three baselines over ``cfg.seeds`` on equal terms (:func:`compare_arms`): the test is read once per
    compared layer, arm and seed."""
    flip = FlipTarget("yes", "no", "yes/no")
    rule = AlphaRule(cfg.max_drop)
    rows = cap.sample_index.tolist()
    row_labels = [labels[i] for i in rows]
    screening: dict[str, Any] = {}
    vectors: dict[int, SteeringVector] = {}
    gen: dict[str, Any] = {"max_new_tokens": cfg.vqa_tokens, "batch_size": cfg.batch_size}
    for layer in range(vlm.num_layers):
        log(f"yes_to_no ({condition.value}): screening layer {layer} on validation")
        try:
            vec = vector_from_labels(
                cap.layer(layer), row_labels, "yes", "no", layer=layer, model=cfg.model, position="last_prompt"
            )
        except InputError as err:  # e.g. a model that never answers "yes" correctly: nothing to steer from
            screening[str(layer)] = {"error": str(err)}
            continue
        vectors[layer] = vec
        sweep = []
        for a in cfg.alphas:
            answers = generate_answers(
                vlm, select, Steering((vec,), SteerConfig(float(a), cfg.positions, condition)), **gen
            )
            eff = steering_effect(select, base_select, answers, flip)
            sweep.append(
                {"alpha": float(a), "flip_rate": eff["flip_rate"], "other_types_acc_drop": eff["other_types_acc_drop"]}
            )
        alpha = rule.choose(sweep)
        at = next(r for r in sweep if r["alpha"] == alpha)
        drop = 0.0 if math.isnan(at["other_types_acc_drop"]) else at["other_types_acc_drop"]
        score = float(np.nan_to_num(at["flip_rate"], nan=-1.0)) if drop <= cfg.max_drop + 1e-12 else -1.0
        screening[str(layer)] = _round(
            {"alpha": alpha, "validation_score": score, "validation": sweep, "vector_norm": vec.norm}
        )
    scored = {int(k): v["validation_score"] for k, v in screening.items() if "error" not in v}
    best = max(scored, key=lambda k: (scored[k], k)) if scored else None
    last = vlm.num_layers - 1
    compared: dict[str, Any] = {}
    full: dict[str, Any] = {}
    for layer in sorted({layer for layer in (best, last) if layer is not None and layer in vectors}):
        log(f"yes_to_no ({condition.value}): layer {layer}, {len(cfg.seeds)} seeds x 4 arms x {len(cfg.alphas)} alphas")
        acts = cap.layer(layer)
        seeded = [
            steering_arms(
                acts,
                row_labels,
                "yes",
                "no",
                layer=layer,
                seed=seed,
                positions=cfg.positions,
                condition=condition,
                fraction=cfg.fit_fraction,
                model=cfg.model,
            )
            for seed in cfg.seeds
        ]
        res = compare_arms(
            vlm,
            [arms for _, arms in seeded],
            select,
            test,
            flip,
            alphas=cfg.alphas,
            rule=rule,
            base_validation=base_select,
            base_test=base_test,
            max_new_tokens=cfg.vqa_tokens,
            batch_size=cfg.batch_size,
            n_boot=cfg.n_boot,
            boot_seed=cfg.seed,
        )
        compared[str(layer)] = _round(
            {
                **_headline(res),
                "steer_minus": res["differences"],
                "n_source_items": res["n_source_items"],
                "n_other_items": res["n_other_items"],
            }
        )
        full[str(layer)] = res
    return {
        "screening": screening,
        "best_layer": best,
        "layer_rule": "screening on validation: each layer's vector (seed 0) over the alpha grid, alpha by the "
        "rule; the layer with the highest validation flip rate whose validation drop is within the cap (ties: the "
        "deeper layer). Compared on test with every baseline: that layer and the last (the paper's VQA layer)",
        "at_best_layer": compared.get(str(best)) if best is not None else None,
        "at_last_layer": compared.get(str(last)),
        "per_layer": compared,
        "full": full,
        "vectors": vectors,
    }


# -------------------------------------------------------------------------- 2. colour -> colour, number -> number
def _dominant(labels: Sequence[str]) -> str:
    counts = Counter(lab for lab in labels if lab != WRONG)
    return counts.most_common(1)[0][0] if counts else "?"


def _answer_to_answer(
    vlm, cap, train, labels, select, test, base_test, cfg: SteerBenchConfig, *, scope: FlipTarget, log
) -> dict:
    """Candidates at the last layer, selection score on the selection set, the best ones measured on test."""
    from sklearn.cluster import KMeans

    layer = vlm.num_layers - 1
    rows = cap.sample_index.tolist()
    in_scope_rows = [r for r, i in enumerate(rows) if scope.in_scope(train[i]) and labels[i] != WRONG]
    acts = cap.layer(layer)[in_scope_rows]
    row_labels = [labels[rows[r]] for r in in_scope_rows]
    counts = Counter(row_labels)
    answers = sorted(a for a, n in counts.items() if n >= 5)  # too few samples make a noisy mean
    if len(row_labels) < 2 or len(counts) < 2:
        raise InputError(
            f"fewer than two correctly answered {scope.template or scope.answer_type} answers to build candidates from"
        )
    candidates: list[SteeringVector] = []
    for s in answers:
        for t in answers:
            if s != t:
                candidates.append(
                    vector_from_labels(acts, row_labels, s, t, layer=layer, model=cfg.model, position="last_prompt")
                )
    k = min(cfg.n_concepts, len(row_labels))
    km = KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit(acts.numpy())
    dominant = [_dominant([row_labels[i] for i in np.flatnonzero(km.labels_ == c)]) for c in range(k)]
    names = [f"k{c}:{answer}" for c, answer in enumerate(dominant)]  # several clusters can share an answer
    candidates += concept_vectors(
        torch.from_numpy(km.cluster_centers_).float(), layer=layer, names=names, model=cfg.model, position="last_prompt"
    )
    select_scope = [e for e in select if scope.in_scope(e)]
    log(
        f"{scope.answer_type}: {len(candidates)} candidates x {len(cfg.select_alphas)} alphas on "
        f"{len(select_scope)} selection questions"
    )
    selected = []
    for alpha in cfg.select_alphas:
        for s in select_vectors(
            vlm,
            candidates,
            select_scope,
            SteerConfig(alpha, cfg.positions),
            max_new_tokens=cfg.vqa_tokens,
            batch_size=cfg.batch_size,
            progress=False,
        ):
            selected.append((alpha, s))
    selected.sort(key=lambda pair: -pair[1].selection.score)
    seen: set[tuple[str, ...]] = set()
    top = []
    for alpha, s in selected:  # de-duplicate targets across alphas too
        key = tuple(sorted(s.selection.primary))
        if key not in seen:
            seen.add(key)
            top.append((alpha, s))
    top = top[: cfg.n_selected]
    results = []
    for alpha, s in top:
        target = s.selection.primary[0]
        source = s.vector.source.split(":", 1)[-1]  # a concept's name is "k<index>:<its dominant answer>"
        flip = FlipTarget(source, target, scope.answer_type, scope.template)
        measured = {}
        for condition in SteerCondition:
            config = SteerConfig(alpha, cfg.positions, condition)
            interventions: dict[str, Any] = {
                "steer": Steering((s.vector,), config),
                "random": Steering((random_like(s.vector, seed=cfg.seed),), config),
                "logit_bias": LogitBias(s.vector, alpha, condition),
            }
            res = evaluate_interventions(
                vlm,
                test,
                interventions,
                flip,
                baseline=base_test,
                max_new_tokens=cfg.vqa_tokens,
                batch_size=cfg.batch_size,
                progress=False,
            )
            measured[condition] = {
                "flip_rate": res["steer"]["flip_rate"],
                "n_source": res["steer"]["n_source"],
                "target_rate": res["steer"]["target_rate"],
                "other_types_acc_drop": res["steer"]["other_types_acc_drop"],
                "random_target_rate": res["random"]["target_rate"],
                "random_flip_rate": res["random"]["flip_rate"],
                "random_other_types_acc_drop": res["random"]["other_types_acc_drop"],
                "logit_bias_target_rate": res["logit_bias"]["target_rate"],
                "logit_bias_flip_rate": res["logit_bias"]["flip_rate"],
                "logit_bias_other_types_acc_drop": res["logit_bias"]["other_types_acc_drop"],
                "target_count_delta": res["steer"]["target_count_delta"],
            }
        results.append(
            _round(
                {
                    "vector": s.vector.name,
                    "kind": s.vector.kind.value,
                    "alpha": alpha,
                    "score": s.selection.score,
                    "primary": list(s.selection.primary),
                    "source": source,
                    "target": target,
                    "ungated": measured[SteerCondition.ALWAYS],
                    "gated (addition)": measured[SteerCondition.SOURCE_CONCEPT],
                }
            )
        )
    return {
        "layer": layer,
        "n_candidates": len(candidates),
        "n_answer_pairs": len(candidates) - k * (k - 1),
        "n_concepts": k,
        "concept_names": names,
        "alphas": list(cfg.select_alphas),
        "status": "exploratory: one seed, alpha fixed at the selection score's scale (no validation sweep), "
        "the gate an addition",
        "selected": results,
        "best": results[0] if results else None,
    }


# ---------------------------------------------------------------------------------------- 3. caption style
def _captions(vlm, images, intervention=None, *, cfg: SteerBenchConfig) -> list[str]:
    import contextlib

    context = intervention.apply(vlm) if intervention is not None else contextlib.nullcontext()
    with context:
        return vlm.generate(
            images, [CAPTION_PROMPT] * len(images), max_new_tokens=cfg.caption_tokens, batch_size=cfg.batch_size
        )


def _caption_style(vlm, tuned, world, train_scenes, select_scenes, test_scenes, cfg: SteerBenchConfig, log) -> dict:
    from mmlens.models.capture import (
        CaptureConfig,
        PositionKind,
        PositionRule,
        capture_activations,
        common_samples,
    )

    n_layers = vlm.num_layers
    middle = n_layers // 2 - 1  # the output of the first half of the decoder
    layers = tuple(range(n_layers))
    colours = tuple(world.cfg.colours)
    train_images = [world.render(s) for s in train_scenes]
    prompts = [CAPTION_PROMPT] * len(train_images)
    # the same token in both models (as in the paper): the position emitting the first colour word of the caption
    log("caption style: capturing both models at the position emitting the first colour word")
    base_rule = PositionRule(PositionKind.TOKEN_CLASS, words=colours)
    tuned_rule = base_rule
    cap_a = capture_activations(
        vlm,
        train_images,
        prompts,
        CaptureConfig(layers=layers, position=base_rule, max_new_tokens=cfg.caption_tokens, batch_size=cfg.batch_size),
        progress=False,
    )
    cap_b = capture_activations(
        tuned,
        train_images,
        prompts,
        CaptureConfig(layers=layers, position=tuned_rule, max_new_tokens=cfg.caption_tokens, batch_size=cfg.batch_size),
        progress=False,
    )
    cap_a, cap_b = common_samples(cap_a, cap_b)
    vectors = {
        layer: finetuning_shift_vectors(
            cap_a.layer(layer), cap_b.layer(layer), layer=layer, model=cfg.model, position="first colour word"
        )[0]
        for layer in layers
    }
    select_images = [world.render(s) for s in select_scenes]
    test_images = [world.render(s) for s in test_scenes]

    def metrics(images, scenes, intervention=None):
        return caption_metrics(world, scenes, _captions(vlm, images, intervention, cfg=cfg))

    def best_alpha(make) -> tuple[float, list[dict]]:
        rows = [{"alpha": float(a), **metrics(select_images, select_scenes, make(a))} for a in cfg.caption_alphas]
        best = max(rows, key=lambda r: (r["colour_only_rate"], -r["alpha"]))
        return best["alpha"], rows

    vec = vectors[middle]
    log(f"caption style: alpha selection at layer {middle}")
    alpha, select_rows = best_alpha(lambda a: Steering((vec,), SteerConfig(a, cfg.positions)))
    lb_alpha, lb_rows = best_alpha(lambda a: LogitBias(vec, a))
    before_caps = _captions(vlm, test_images, cfg=cfg)
    steered_caps = _captions(vlm, test_images, Steering((vec,), SteerConfig(alpha, cfg.positions)), cfg=cfg)
    result = {
        "layer": middle,
        "n_layers": n_layers,
        "vector": vec.describe(),
        "n_vector_samples": len(cap_a),
        "alpha": alpha,
        "before": caption_metrics(world, test_scenes, before_caps),
        "after": caption_metrics(world, test_scenes, steered_caps),
        "logit_bias_same_alpha": metrics(test_images, test_scenes, LogitBias(vec, alpha)),
        "logit_bias_own_alpha": {"alpha": lb_alpha, **metrics(test_images, test_scenes, LogitBias(vec, lb_alpha))},
        "random_same_alpha": metrics(
            test_images, test_scenes, Steering((random_like(vec, seed=cfg.seed),), SteerConfig(alpha, cfg.positions))
        ),
        "finetuned_model": caption_metrics(
            world,
            test_scenes,
            tuned.generate(
                test_images,
                [CAPTION_PROMPT] * len(test_images),
                max_new_tokens=cfg.caption_tokens,
                batch_size=cfg.batch_size,
            ),
        ),
        "selection_sweep": {"steer": select_rows, "logit_bias": lb_rows},
    }
    log("caption style: layer sweep on test")
    result["layer_sweep"] = [
        {
            "layer": layer,
            "alpha": float(a),
            **metrics(test_images, test_scenes, Steering((vectors[layer],), SteerConfig(a, cfg.positions))),
        }
        for layer in layers
        for a in cfg.caption_alphas
    ]
    steer_score = result["after"]["colour_only_rate"]
    lb_score = max(
        result["logit_bias_same_alpha"]["colour_only_rate"], result["logit_bias_own_alpha"]["colour_only_rate"]
    )
    result["steering_beats_logit_bias"] = bool(steer_score > lb_score)
    result["examples"] = [
        {"scene": s.scene_id, "before": b, "after": a}
        for s, b, a in zip(test_scenes[:8], before_caps[:8], steered_caps[:8])
    ]
    return _round(result)


# -------------------------------------------------------------------------------------------- 4. overhead
def _overhead(vlm, images, prompts, vector: SteeringVector, alpha: float, cfg: SteerBenchConfig) -> dict:
    """Batched caption generation, plain and steered, interleaved repeats in the same process. Every run generates
    exactly ``caption_tokens`` tokens per sequence (min = max new tokens): steering changes the text, and answers
    that end earlier would make the steered run look cheaper than it is. The headline is the minimum wall time
    over the repeats (the least disturbed run: the cores are shared with other jobs); medians and this process's
    CPU time are reported beside it."""
    import contextlib

    images, prompts = list(images) * cfg.overhead_copies, list(prompts) * cfg.overhead_copies

    def run(context=None) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        with context or contextlib.nullcontext():
            vlm.generate(
                images,
                prompts,
                max_new_tokens=cfg.caption_tokens,
                min_new_tokens=cfg.caption_tokens,
                batch_size=cfg.batch_size,
            )
        return time.perf_counter() - wall, time.process_time() - cpu

    run()  # warm-up
    timings: dict[str, list[tuple[float, float]]] = {"plain": [], "steered": [], "text_only": []}
    for _ in range(cfg.overhead_repeats):  # interleaved, so load changes hit all three alike
        timings["plain"].append(run())
        timings["steered"].append(run(steer(vlm, vector, SteerConfig(alpha, SteerPositions.ALL))))
        timings["text_only"].append(run(steer(vlm, vector, SteerConfig(alpha, SteerPositions.TEXT_ONLY))))
    wall = {k: [w for w, _ in v] for k, v in timings.items()}
    cpu = {k: [c for _, c in v] for k, v in timings.items()}
    plain, steered, text_only = min(wall["plain"]), min(wall["steered"]), min(wall["text_only"])
    return _round(
        {
            "steered_s": steered,
            "plain_s": plain,
            "overhead_fraction": steered / plain - 1,
            "statistic": "min wall time over interleaved repeats",
            "steered_text_only_s": text_only,
            "text_only_overhead_fraction": text_only / plain - 1,
            "median_overhead_fraction": statistics.median(wall["steered"]) / statistics.median(wall["plain"]) - 1,
            "cpu_overhead_fraction": min(cpu["steered"]) / min(cpu["plain"]) - 1,
            "n_sequences": len(prompts),
            "new_tokens_per_sequence": cfg.caption_tokens,
            "batch_size": cfg.batch_size,
            "repeats": cfg.overhead_repeats,
            "positions": "all (text_only also timed)",
            "load_average_1min": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
            "wall_s": wall,
            "cpu_s": cpu,
        }
    )


# ----------------------------------------------------------------------------------------------- the run
def _guarded(part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A part that cannot run on this model (e.g. no sample of an answer) records why instead of failing the run."""
    try:
        return part()
    except InputError as err:
        return {"error": str(err)}


def _section(part: dict[str, Any], what: str) -> dict[str, Any]:
    return {
        "what": what,
        "best_layer": part["best_layer"],
        "layer_rule": part["layer_rule"],
        "at_best_layer": part["at_best_layer"],
        "at_last_layer": part["at_last_layer"],
        "per_layer": part["per_layer"],
        "screening": part["screening"],
    }


def steer_benchmark(
    config: SteerBenchConfig = SteerBenchConfig(), *, progress_cb: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the four parts and return the JSON-ready result (see the module docstring)."""
    from mmlens.models import VisionLanguageModel, load_model

    log = progress_cb or (lambda message: None)
    cfg = config
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    vlm = load_model(cfg.model, expect=VisionLanguageModel)
    vlm.model.eval()
    world = world_of(cfg.model)
    train_scenes = world.sample_scenes(cfg.n_train, "val")
    select_scenes = world.sample_scenes(cfg.n_select, "val", start=cfg.n_train)
    test_scenes = world.sample_scenes(cfg.n_test, "test")
    train = _vqa(world, train_scenes, cfg.seed + 1)
    select = _vqa(world, select_scenes, cfg.seed + 2)
    test = _vqa(world, test_scenes, cfg.seed + 3)
    if not train or not test:
        raise InputError("the benchmark world produced no questions")
    log(f"capturing {len(train)} training questions at every layer")
    cap = capture_examples(
        vlm, train, range(vlm.num_layers), max_new_tokens=cfg.vqa_tokens, batch_size=cfg.batch_size, progress=False
    )
    labels = answer_labels(cap.generated, train)
    base_select = generate_answers(vlm, select, max_new_tokens=cfg.vqa_tokens, batch_size=cfg.batch_size)
    base_test = generate_answers(vlm, test, max_new_tokens=cfg.vqa_tokens, batch_size=cfg.batch_size)

    yes_no = _yes_to_no(vlm, cap, labels, select, test, base_select, base_test, cfg, log, SteerCondition.ALWAYS)
    yes_no_gated = _yes_to_no(
        vlm, cap, labels, select, test, base_select, base_test, cfg, log, SteerCondition.SOURCE_CONCEPT
    )
    last, middle = vlm.num_layers - 1, vlm.num_layers // 2 - 1
    colour = _guarded(
        lambda: _answer_to_answer(
            vlm,
            cap,
            train,
            labels,
            select,
            test,
            base_test,
            cfg,
            scope=FlipTarget("", "", "other", "colour_of_shape"),
            log=log,
        )
    )
    number = _guarded(
        lambda: _answer_to_answer(
            vlm, cap, train, labels, select, test, base_test, cfg, scope=FlipTarget("", "", "number"), log=log
        )
    )
    tuned = load_model(cfg.finetuned, expect=VisionLanguageModel)
    tuned.model.eval()
    caption = _guarded(
        lambda: _caption_style(vlm, tuned, world, train_scenes[:300], select_scenes[:100], test_scenes, cfg, log)
    )
    log("overhead")
    best = yes_no["best_layer"]
    best_vec = yes_no["vectors"].get(best) if best is not None else None
    if best_vec is not None:
        overhead_vec = best_vec
        overhead_alpha = float(statistics.median(yes_no["per_layer"][str(best)]["steer"]["alpha_per_seed"]))
    else:  # the cost of the hooks does not depend on the direction
        overhead_vec = SteeringVector(torch.randn(vlm.lm_head.weight.shape[1]), last, VectorKind.CUSTOM)
        overhead_alpha = 1.0
    overhead = _overhead(
        vlm,
        [world.render(s) for s in test_scenes],
        [CAPTION_PROMPT] * len(test_scenes),
        overhead_vec,
        overhead_alpha,
        cfg,
    )

    examples: dict[str, list] = {}
    yn_test = [i for i, e in enumerate(test) if e.answer_type == "yes/no" and base_test[i] == "yes"][:8]
    for key, part, condition in (
        ("yes_to_no_ungated_best_layer", yes_no, SteerCondition.ALWAYS),
        ("yes_to_no_gated_best_layer", yes_no_gated, SteerCondition.SOURCE_CONCEPT),
    ):
        layer = part["best_layer"]
        if not yn_test or layer is None:
            continue
        vec = part["vectors"][layer]
        alpha = float(part["per_layer"][str(layer)]["steer"]["alpha_per_seed"][0])
        chosen = [test[i] for i in yn_test]
        after = generate_answers(
            vlm,
            chosen,
            Steering((vec,), SteerConfig(alpha, cfg.positions, condition)),
            max_new_tokens=cfg.vqa_tokens,
            batch_size=cfg.batch_size,
        )
        examples[key] = [
            {
                "question": e.question,
                "truth": e.answer,
                "before": base_test[i],
                "after": a,
                "layer": layer,
                "alpha": alpha,
                "condition": condition.value,
            }
            for i, e, a in zip(yn_test, chosen, after)
        ]

    targets = {
        "ungated_best_layer_flip_min": 0.8,
        "other_types_acc_drop_max": 0.05,
        "random_and_shuffled_flip_max": 0.05,
        "steering_beats_logit_bias": "on at least one target at equal drop (paired interval of the flip difference "
        "above 0, both arms at their own validation-chosen alpha under the same drop cap)",
        "overhead_fraction_max": 0.05,
        "caption_style_middle_layer": "steering beats the logit bias (non-degenerate colour-only captions, both at "
        "their best alpha)",
    }

    def meets(row: dict[str, Any] | None) -> bool:
        if not row or "error" in row:
            return False
        return bool(
            row["steer"]["flip"]["mean"] >= 0.8
            and row["steer"]["other_drop"]["mean"] <= 0.05
            and row["random"]["flip"]["mean"] <= 0.05
            and row["shuffled"]["flip"]["mean"] <= 0.05
        )

    def beats_logit_bias(row: dict[str, Any] | None) -> bool:
        return bool(row and "error" not in row and row["steer_minus"]["logit_bias"]["flip"]["ci"][0] > 0)

    met = {
        "yes_to_no_ungated_best_layer": meets(yes_no["at_best_layer"]),
        "yes_to_no_gated_best_layer (addition)": meets(yes_no_gated["at_best_layer"]),
        "yes_to_no_ungated_beats_logit_bias": beats_logit_bias(yes_no["at_best_layer"]),
        "caption_style_beats_logit_bias": bool(caption.get("steering_beats_logit_bias", False)),
        "overhead": bool(overhead["overhead_fraction"] <= 0.05),
    }
    acc = {
        t: round(
            float(
                np.mean([DEFAULT_EXTRACTOR.matches(b, e.answer) for e, b in zip(test, base_test) if e.answer_type == t])
            ),
            4,
        )
        for t in sorted({e.answer_type for e in test})
    }
    yes_rate = float(np.mean([b == "yes" for e, b in zip(test, base_test) if e.answer_type == "yes/no"]))
    return _round(
        {
            "benchmark": "steer",
            "model": cfg.model,
            "finetuned": cfg.finetuned,
            "layers": {"last": last, "middle": middle, "n_layers": vlm.num_layers},
            "data": {
                "train_questions": len(train),
                "select_questions": len(select),
                "test_questions": len(test),
                "train_scenes": cfg.n_train,
                "select_scenes": cfg.n_select,
                "test_scenes": cfg.n_test,
                "splits": "vectors: val[0:n_train]; selection: val[n_train:n_train+n_select]; reported: test",
                "baseline_test_accuracy": acc,
                "train_answer_counts": dict(Counter(lab for lab in labels if lab in ("yes", "no"))),
            },
            "positions": cfg.positions.value,
            "alpha_rule": AlphaRule(cfg.max_drop).describe(),
            "failure_present": {
                "note": "steering needs answers to flip: the share of yes/no test questions answered yes at baseline",
                "yes_rate": yes_rate,
            },
            "yes_to_no": {
                "ungated": _section(yes_no, "the paper's method: the vector added at every position, to every sample"),
                "gated": _section(
                    yes_no_gated,
                    "ADDITION (not in the paper): SOURCE_CONCEPT gate, a nearest-centre classifier over the labelled "
                    "fit activations decides per sample whether the vector is added; every arm gated alike",
                ),
            },
            "colour_to_colour": colour,
            "number_to_number": number,
            "caption_style": caption,
            "overhead": overhead,
            "targets": targets,
            "met": met,
            "examples": {**examples, "caption_style": caption.get("examples", [])},
            "sweeps": {
                "yes_to_no": {
                    cond: {
                        layer: {arm: r["validation"] for arm, r in res["arms"].items()}
                        for layer, res in part["full"].items()
                    }
                    for cond, part in (("ungated", yes_no), ("gated", yes_no_gated))
                }
            },
            "config": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cfg).items()},
            "seconds": time.perf_counter() - t0,
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
        }
    )


# ----------------------------------------------------------------------------------------------- the tiers
TIERS = ("mini_llava", "real_lm")


def run_steer_tiers(
    tiers: Sequence[str],
    config: SteerBenchConfig = SteerBenchConfig(),
    *,
    progress_cb: Callable[[str], None] | None = None,
    command: str | None = None,
    real_lm: Any = None,
) -> dict[str, Any]:
    """Run the chosen tiers into one JSON-ready dict. ``mini_llava`` puts :func:`steer_benchmark`'s keys at the top
    level; ``real_lm`` goes under ``real_lm`` (SmolLM2 from its wheel unless a model is given). A tier that cannot
    run (a zoo model not built, the wheel absent) records its error. ``tier_runs[tier]`` holds the commit, the
    finish time, the seconds, the command and the top-level keys the tier wrote (what a later merge replaces)."""
    import datetime

    from mmlens.bench.real_lm import RealLMConfig, real_lm_tier
    from mmlens.bench.shift import _git_commit
    from mmlens.errors import MMLensError

    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        raise InputError(f"unknown steer tiers {unknown}: use {', '.join(TIERS)}")
    log = progress_cb or (lambda message: None)
    out: dict[str, Any] = {"benchmark": "steer", "tier_runs": {}}
    code = _git_commit()
    for tier in tiers:
        t = time.perf_counter()
        if tier == "mini_llava":
            try:
                part = steer_benchmark(config, progress_cb=log)
            except MMLensError as err:
                part = {"mini_llava_error": f"{type(err).__name__}: {err}"}
            model = config.model
        else:
            try:
                if real_lm is None:
                    from mmlens.models.gguf import load_smollm2

                    log("real LM: loading SmolLM2-135M-Instruct (plain copy of the wheel's GGUF)")
                    real_lm = load_smollm2()
                torch.set_num_threads(config.threads)
                part = {"real_lm": _round(real_lm_tier(real_lm, RealLMConfig(seed=config.seed), log=log))}
            except MMLensError as err:
                part = {"real_lm": {"error": f"{type(err).__name__}: {err}"}}
            model = RealLMConfig().model
        part.pop("benchmark", None)
        out.update(part)
        out["tier_runs"][tier] = {
            **code,
            "model": model,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t, 1),
            "command": command,
            "keys": sorted(part),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    return out


def merge_steer_tiers(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` (a file this command wrote) with the tiers of ``new`` replacing their old keys; the other
    tiers are kept with their own provenance. A file without ``tier_runs`` was not written by this command."""
    runs = existing.get("tier_runs")
    if not isinstance(runs, dict):
        raise InputError("the existing steer result has no tier_runs (an older or hand-edited file): use --fresh")
    merged = dict(existing)
    for tier, run in new["tier_runs"].items():
        for key in runs.get(tier, {}).get("keys", []):
            merged.pop(key, None)
        for key in run["keys"]:
            merged[key] = new[key]
        merged["tier_runs"] = {**merged["tier_runs"], tier: run}
    return merged
