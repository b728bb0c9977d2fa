"""Shift stage: how much the model degrades under world shifts (EMI, EMID and its bound)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmlens.audit.stages.common import (
    MIN_SHIFT_IMAGES,
    Finding,
    StageContext,
    StageOutcome,
    finite_or_none,
    interval_words,
)
from mmlens.errors import InputError


def _one_question_per_record(ctx: StageContext, n: int) -> list[dict[str, Any]]:
    chosen, seen = [], set()
    for q in ctx.questions(len(ctx.data.questions())):
        if q["record"] not in seen:
            seen.add(q["record"])
            chosen.append(q)
            if len(chosen) == n:
                break
    return chosen


def run_shift(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from threadpoolctl import threadpool_limits

    from mmlens.models.embed import ClipImageEmbedder, text_embedder
    from mmlens.shift.analysis import ShiftConfig, analyse
    from mmlens.shift.data import load_splits
    from mmlens.shift.estimators import EstimatorConfig
    from mmlens.shift.generate import GenerateConfig, generate_responses
    from mmlens.shift.report import write_shift_report
    from mmlens.zoo.mini_llava import normalise

    cfg = ctx.config.shift
    items = _one_question_per_record(ctx, cfg.n_items)
    if len(items) < MIN_SHIFT_IMAGES:
        raise InputError(
            f"shift needs at least {MIN_SHIFT_IMAGES} questions on different images, got {len(items)} "
            f"(n_items {cfg.n_items})"
        )
    generation = GenerateConfig(
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=ctx.config.seed, scenarios=tuple(cfg.grid)
    )
    paths = generate_responses(
        ctx.model,
        [ctx.image(q["record"]) for q in items],
        [q["question"] for q in items],
        [q["answer"] for q in items],
        scratch / "splits",
        generation,
        model_id=ctx.config.model,
        item_ids=[f"q{i}" for i in range(len(items))],
        score=lambda a, r: normalise(a) == normalise(r),
        overwrite=True,
        progress=False,
    )
    splits = load_splits(paths, load_images=cfg.image_model is not None)
    config = ShiftConfig(
        estimator=EstimatorConfig(seed=ctx.config.seed, max_epochs=cfg.max_epochs),
        fusion=cfg.fusion,
        n_permutations=cfg.n_permutations,
        n_bootstrap=cfg.n_bootstrap,
        seed=ctx.config.seed,
    )
    image = ClipImageEmbedder(cfg.image_model) if cfg.image_model else None
    # One BLAS thread: the permutation nulls are many small eigendecompositions, and OpenBLAS's worker threads spin
    # while they wait: on the shared 2-core machine scoring one grid took 37 s with them and 4 s without.
    with threadpool_limits(limits=1, user_api="blas"):
        result = analyse(
            splits,
            config,
            text_embedder=text_embedder(cfg.text_embedder, progress=False),
            image_embedder=image,
            id_split="clean",
            progress=False,
        )
    write_shift_report(result, page_dir, title=f"Distribution-shift risk of {ctx.config.model} (EMI, EMID, bound)")

    clean = result.row("clean")
    shifted = [r for r in result.rows if "emid" in r]
    per_split = {
        r["split"]: {
            "accuracy": r.get("accuracy"),
            "emi": r["emi"],
            "emid": r["emid"],
            "emid_ci": r.get("emid_ci"),
            "bound": r["bound"],
        }
        for r in shifted
    }
    summary: dict[str, Any] = {
        "n_items": len(items),
        "clean_accuracy": clean.get("accuracy"),
        "clean_emi": clean["emi"],
        "splits": per_split,
        "pearson_emid_bound": finite_or_none(result.correlations.get("emid_bound", {}).get("pearson")),
    }
    ranked = sorted(shifted, key=lambda r: -r["emid"])
    findings = []
    for r in ranked[:3]:
        before, after = clean.get("accuracy", float("nan")), r.get("accuracy", float("nan"))
        lo, hi = r.get("emid_ci") or (float("nan"), float("nan"))
        findings.append(
            Finding(
                f"Under {_split_words(r['split'])} accuracy goes from {before:.2f} to {after:.2f} ({after - before:+.2f} "
                f"on {len(items)} questions); EMID {r['emid']:+.3f} (positive = EMI lower than clean), bootstrap "
                f"interval [{lo:.3f}, {hi:.3f}]: {interval_words(lo, hi)}; bound {r['bound']:.3f}."
            )
        )
    worst = ranked[0]
    above = [r for r in shifted if (r.get("emid_ci") or (float("nan"),))[0] > 0]
    if above:
        lead = (
            f"Of {len(shifted)} shifts, {len(above)} lower the EMI with an EMID interval above 0; the largest "
            f"EMID is under {_split_words(worst['split'])} ({worst['emid']:+.3f})."
        )
    else:
        lead = (
            f"None of the {len(shifted)} shifts has an EMID interval above 0 (the largest: "
            f"{_split_words(worst['split'])}, {worst['emid']:+.3f})."
        )
    lead += f" Clean EMI {clean['emi']:.3f}."
    corr = result.correlations.get("emid_bound", {})
    if corr.get("pearson") is not None and np.isfinite(corr["pearson"]):
        c_lo, c_hi = corr.get("pearson_ci", [float("nan")] * 2)
        lead += (
            f" Across the grid r(EMID, bound) = {corr['pearson']:.2f} over {corr.get('n', len(shifted))} shifts "
            f"(bootstrap interval [{c_lo:.2f}, {c_hi:.2f}])."
        )
    findings.insert(0, Finding(lead))
    return StageOutcome(summary, tuple(findings))


def _split_words(split: str) -> str:
    """``fog_5+keyboard_5`` -> ``fog severity 5 + keyboard severity 5``."""
    parts = [p.rpartition("_") for p in split.split("+")]
    return " + ".join(f"{name.replace('_', ' ')} severity {level}" for name, _, level in parts)


__all__ = ["run_shift"]
