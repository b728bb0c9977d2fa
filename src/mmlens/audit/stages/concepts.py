"""Concepts stage: the model's concept dictionary and what fine-tuning shifted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmlens.audit.stages.common import (
    Finding,
    StageContext,
    StageOutcome,
)
from mmlens.io import write_jsonl_atomic


def _concept_inputs(ctx: StageContext, n: int, path: Path) -> Path:
    rows = [
        {
            "image": ctx.data.records[q["record"]]["image_path"],
            "prompt": q["question"],
            "reference": q["answer"],
            "attributes": {"answer": q["answer"], "answer_type": q["answer_type"]},
        }
        for q in ctx.questions(n)
    ]
    write_jsonl_atomic(path, rows)
    return path


def _purity_value(value: Any) -> str:
    if isinstance(value, dict):  # random_purity may carry a spread: report its mean
        value = value.get("mean")
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def _purity_verdict(value: float, random: Any) -> str:
    if isinstance(random, dict):
        random = random.get("mean")
    if not isinstance(random, (int, float)):
        return "no random baseline"
    return "above random" if value > random else "no purer than random"


def run_concepts(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.concepts.compare import CompareConfig
    from mmlens.concepts.decompose import DecomposerConfig, DecomposerKind
    from mmlens.concepts.workflow import compare, extract, learn
    from mmlens.models.capture import CaptureConfig, PositionKind, PositionRule

    cfg = ctx.config.concepts
    inputs = _concept_inputs(ctx, cfg.n_items, scratch / "inputs.jsonl")
    layer = ctx.model.num_layers // 2
    capture = CaptureConfig(
        layers=(layer,),
        position=PositionRule(PositionKind.LAST_PROMPT),
        final_norm=True,
        max_new_tokens=1,
        batch_size=cfg.batch_size,
    )
    n_items = len(inputs.read_text(encoding="utf-8").splitlines())
    n_concepts = max(2, min(cfg.n_concepts, n_items // 4))
    decomposer = DecomposerConfig(DecomposerKind.KMEANS, n_concepts=n_concepts, seed=ctx.config.seed)
    # captures resume from their shards when a run was interrupted (same fingerprint = same scratch folder)
    extract(ctx.config.model, scratch / "capture-model", capture, data=inputs, progress=False)
    learned = learn(scratch / "capture-model", page_dir, decomposer, layer=cfg.layer)
    purity, random = learned.get("mean_purity") or {}, learned.get("random_purity") or {}
    summary: dict[str, Any] = {
        "n_inputs": n_items,
        "n_concepts": n_concepts,
        "layer": cfg.layer,
        "mean_purity": purity,
        "random_purity": random,
        "disentanglement": learned.get("disentanglement"),
    }
    text = (
        f"A {n_concepts}-concept dictionary over the {cfg.layer} hidden state at the last prompt token of "
        f"{n_items} questions"
    )
    if purity:
        text += ": the most-activating samples of a concept share their " + " and their ".join(
            f"{name.replace('_', ' ')} at mean purity {value:.2f} against {_purity_value(random.get(name))} for "
            f"random sets of the same size ({_purity_verdict(value, random.get(name))})"
            for name, value in purity.items()
        )
    findings = [Finding(text + ".")]
    pages = ["index.html"]
    if ctx.config.finetuned is not None:
        extract(ctx.config.finetuned, scratch / "capture-finetuned", capture, data=inputs, progress=False)
        analysis, _, _ = compare(
            scratch / "capture-model",
            scratch / "capture-finetuned",
            page_dir / "compare",
            CompareConfig(decomposer=decomposer, seed=ctx.config.seed),
            layer=cfg.layer,
        )
        shift = analysis.summary()
        keys = (
            "frac_improved",
            "mean_gain",
            "baseline_global_gain",
            "baseline_random_gain",
            "baseline_permuted_gain",
            "alpha_peak",
        )
        summary["finetuning"] = {k: shift.get(k) for k in keys}
        pages.append("compare/index.html")
        summary["finetuning"]["beats_every_baseline"] = shift.get("beats_every_baseline")
        verdict = (
            "more than every baseline"
            if shift.get("beats_every_baseline")
            else "not more than every baseline, so no concept-specific change is shown"
        )
        findings.append(
            Finding(
                f"Fine-tuning ({ctx.config.finetuned}): per-concept shift vectors bring {shift['frac_improved']:.0%} of the "
                f"original concepts closer to their fine-tuned match, mean cosine gain {shift['mean_gain']:.3f} against "
                f"{shift['baseline_global_gain']:.3f} for one global shift, {shift['baseline_permuted_gain']:.3f} for "
                f"permuted shifts and {shift['baseline_random_gain']:.3f} for random vectors: {verdict}.",
                "compare/index.html",
            )
        )
    return StageOutcome(summary, tuple(findings), tuple(pages))


__all__ = ["run_concepts"]
