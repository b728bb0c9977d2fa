"""Steering stage: a yes -> no steering vector, and steering toward a fine-tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmlens.audit.stages.common import (
    Finding,
    NotApplicable,
    StageContext,
    StageOutcome,
    finite_or_none,
    paired_interval,
    percent,
)
from mmlens.html import CardLine, HtmlReport, ImageCard


def run_steering(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from collections import Counter

    from mmlens.steer import (
        FlipTarget,
        VQAExample,
        answer_labels,
        capture_examples,
        evaluate_vectors,
        save_vectors,
        shuffled_vector,
        vectors_from_capture,
        write_steering_report,
    )

    cfg = ctx.config.steering
    questions = ctx.questions(cfg.n_items)
    examples = [
        VQAExample(ctx.image(q["record"]), q["question"], q["answer"], q["answer_type"], q["template"])
        for q in questions
    ]
    half = len(examples) // 2
    build, held_out = examples[:half], examples[half:]
    yes_no_types = Counter(e.answer_type for e in examples if e.answer.strip().lower() in ("yes", "no"))
    if not yes_no_types:
        raise NotApplicable(
            f"none of the {len(examples)} questions drawn for steering (n_items) is a yes/no "
            "question: no yes->no vector to build"
        )
    answer_type = yes_no_types.most_common(1)[0][0] or None
    layer = (cfg.layer if cfg.layer is not None else ctx.model.num_layers // 2) % ctx.model.num_layers
    cap = capture_examples(
        ctx.model, build, [layer], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False
    )
    labels = answer_labels(cap.generated, build)
    if not {"yes", "no"} <= set(labels):
        raise NotApplicable(
            "the model does not answer both 'yes' and 'no' correctly on the yes/no questions of the "
            "build half: no yes->no mean difference to take"
        )
    vector = vectors_from_capture(cap, labels, "yes", "no", layers=[layer], model=ctx.config.model)[layer]
    rows = [labels[i] for i in cap.sample_index.tolist()]
    control = shuffled_vector(
        cap.layer(layer),
        rows,
        vector.source,
        vector.target,
        layer=layer,
        seed=ctx.config.seed,
        model=ctx.config.model,
        position=vector.position,
    )
    save_vectors(scratch / "yes-no.safetensors", [vector, control])
    result = evaluate_vectors(
        ctx.model,
        held_out,
        [vector, control],
        FlipTarget("yes", "no", answer_type),
        alphas=cfg.alphas,
        random_seed=ctx.config.seed,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        progress=False,
    )
    result["model"] = ctx.config.model
    write_steering_report(result, page_dir, held_out, title=f"Steering {ctx.config.model}: yes -> no at layer {layer}")
    best = result["vectors"][0]
    at = best["at_best"]
    flip = {kind: at.get(kind, {}).get("flip_rate") for kind in ("steer", "random", "shuffled", "logit_bias")}
    summary: dict[str, Any] = {
        "layer": layer,
        "n_build": len(build),
        "n_eval": len(held_out),
        "alpha": best["best_alpha"],
        "flip_rate": flip,
        "n_source": at["steer"].get("n_source"),
        "other_types_acc_drop": at["steer"].get("other_types_acc_drop"),
    }
    pct = percent
    n_source = int(at["steer"].get("n_source") or 0)
    if n_source == 0:
        findings = [
            Finding(
                f"A yes->no steering vector was built at layer {layer}, but the model answers 'yes' to "
                "none of the held-out yes/no questions: no answer to flip, no measurement."
            )
        ]
    else:
        drop = at["steer"].get("other_types_acc_drop")
        findings = [
            Finding(
                f"A yes->no steering vector at layer {layer} (alpha {best['best_alpha']:g}, chosen on the same held-out "
                f"questions) flips {pct(flip['steer'])} of the {n_source} held-out 'yes' answers, against "
                f"{pct(flip['random'])} for a random direction, {pct(flip['shuffled'])} for shuffled labels and "
                f"{pct(flip['logit_bias'])} for a logit bias"
                + (
                    f"; accuracy on the other answer types changes by {-drop:+.2f}."
                    if finite_or_none(drop) is not None
                    else "."
                )
            )
        ]
    pages = ["index.html"]
    if ctx.finetuned is not None:
        extra = _finetune_steering(ctx, layer, page_dir / "finetune")
        summary["finetuning"] = extra
        pages.append("finetune/index.html")
        (p_lo, p_hi), (r_lo, r_hi) = extra["gain_over_plain_ci"], extra["gain_over_random_ci"]
        moved = p_lo > 0 and r_lo > 0
        findings.append(
            Finding(
                f"The fine-tuning shift vector as steering (layer {layer}, best alpha {extra['best_alpha']:g}, chosen on "
                "the same images) "
                + (
                    "moves the original model's descriptions toward the fine-tuned model's"
                    if moved
                    else "does not measurably move the original model's descriptions toward the fine-tuned model's"
                )
                + f": word overlap {extra['overlap_steered']:.2f} against {extra['overlap_plain']:.2f} unsteered "
                f"(gain interval [{p_lo:+.3f}, {p_hi:+.3f}]) and {extra['overlap_random']:.2f} with a random direction of "
                f"the same norm (gain interval [{r_lo:+.3f}, {r_hi:+.3f}]).",
                "finetune/index.html",
            )
        )
    return StageOutcome(summary, tuple(findings), tuple(pages))


def _word_overlap(a: str, b: str) -> float:
    """Jaccard similarity of the word sets of two texts (1 = the same words)."""
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def _finetune_steering(ctx: StageContext, layer: int, page_dir: Path) -> dict[str, Any]:
    """The fine-tuning shift vector (mean difference of the two models' last-prompt states on "describe the image")
    applied to the original model: do its descriptions move toward the fine-tuned model's, more than with a random
    direction of the same norm? Vector built on half of the images, measured on the other half."""
    from mmlens.align.eval import DESCRIBE_PROMPT
    from mmlens.models.capture import PositionKind, PositionRule, common_samples
    from mmlens.steer import (
        SteerConfig,
        Steering,
        VQAExample,
        capture_examples,
        finetuning_shift_vectors,
        generate_answers,
        random_like,
    )

    cfg = ctx.config.steering
    order = np.random.default_rng(ctx.config.seed).permutation(len(ctx.data))[: cfg.n_describe]
    examples = [VQAExample(ctx.image(int(i)), DESCRIBE_PROMPT, "", "description", "") for i in order]
    half = len(examples) // 2
    build, held_out = examples[:half], examples[half:]
    # each model's mean state over its own generated description: what the fine-tune says differently
    mean_rule = PositionRule(PositionKind.GENERATED_MEAN)
    cap_a = capture_examples(
        ctx.model,
        build,
        [layer],
        position=mean_rule,
        max_new_tokens=cfg.describe_tokens,
        batch_size=cfg.batch_size,
        progress=False,
    )
    cap_b = capture_examples(
        ctx.finetuned,
        build,
        [layer],
        position=mean_rule,
        max_new_tokens=cfg.describe_tokens,
        batch_size=cfg.batch_size,
        progress=False,
    )
    cap_a, cap_b = common_samples(cap_a, cap_b)
    shift = finetuning_shift_vectors(
        cap_a.layer(layer),
        cap_b.layer(layer),
        layer=layer,
        model=ctx.config.model,
        position="generated_mean",
        finetuned=str(ctx.config.finetuned),
    )[0]
    random = random_like(shift, seed=ctx.config.seed)
    kw: dict[str, Any] = {"max_new_tokens": cfg.describe_tokens, "batch_size": cfg.batch_size}
    plain = generate_answers(ctx.model, held_out, **kw)
    tuned = generate_answers(ctx.finetuned, held_out, **kw)

    def overlaps(texts: list[str]) -> np.ndarray:
        return np.array([_word_overlap(t, f) for t, f in zip(texts, tuned)])

    rows, steered_by_alpha, per_image = [], {}, {}
    for alpha in cfg.shift_alphas:
        steered = generate_answers(ctx.model, held_out, Steering((shift,), SteerConfig(alpha)), **kw)
        randomised = generate_answers(ctx.model, held_out, Steering((random,), SteerConfig(alpha)), **kw)
        steered_by_alpha[alpha] = steered
        per_image[float(alpha)] = (overlaps(steered), overlaps(randomised))
        rows.append(
            {
                "alpha": float(alpha),
                "overlap_steered": float(per_image[float(alpha)][0].mean()),
                "overlap_random": float(per_image[float(alpha)][1].mean()),
            }
        )
    best = max(rows, key=lambda r: r["overlap_steered"])
    plain_overlap = overlaps(plain)
    best_steered, best_random = per_image[best["alpha"]]
    # paired over the held-out images: steered minus unsteered, steered minus random direction
    out = {
        "layer": layer,
        "n_build": len(build),
        "n_eval": len(held_out),
        "overlap_plain": float(plain_overlap.mean()),
        "best_alpha": best["alpha"],
        "overlap_steered": best["overlap_steered"],
        "overlap_random": best["overlap_random"],
        "gain_over_plain_ci": paired_interval(best_steered - plain_overlap, ctx.config.seed),
        "gain_over_random_ci": paired_interval(best_steered - best_random, ctx.config.seed),
        "sweep": rows,
        "norm": float(shift.norm),
    }
    report = HtmlReport(
        "Fine-tuning shift vector as steering",
        subtitle=f"{ctx.config.model} steered toward {ctx.config.finetuned} at layer {layer}, on "
        f"descriptions of {len(held_out)} held-out images",
    )
    sec = report.section("How close the steered descriptions come to the fine-tuned model's")
    sec.text(
        "Word overlap = Jaccard similarity of the word sets of a description and the fine-tuned model's "
        "description of the same image, averaged. The random direction has the shift vector's norm and runs at "
        "the same alpha. The best alpha is chosen on these same images (in-sample).",
        note=True,
    )
    sec.table([{"alpha": 0.0, "overlap_steered": out["overlap_plain"], "overlap_random": out["overlap_plain"]}, *rows])
    steered = steered_by_alpha[best["alpha"]]
    sec = report.section(f"Examples at alpha {best['alpha']:g}")
    sec.images(
        [
            ImageCard(
                held_out[i].image,
                f"image {i}",
                (
                    CardLine(f"original: {plain[i]}"),
                    CardLine(f"steered: {steered[i]}"),
                    CardLine(f"fine-tuned: {tuned[i]}"),
                ),
            )
            for i in range(min(8, len(held_out)))
        ]
    )
    report.data = {
        **out,
        "examples": [{"plain": p, "steered": st, "finetuned": t} for p, st, t in zip(plain, steered, tuned)],
    }
    report.write(page_dir)
    return out


__all__ = ["run_steering"]
