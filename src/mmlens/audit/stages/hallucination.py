"""Hallucination stage: POPE probes and CHAIR on descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmlens.audit.stages.common import (
    INTERVAL_LEVEL,
    Finding,
    StageContext,
    StageOutcome,
)
from mmlens.io import write_jsonl_atomic


def run_hallucination(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.align.eval import evaluate_files
    from mmlens.align.report import hallucination_report

    cfg = ctx.config.hallucination
    records = ctx.data.records[: cfg.n_images]
    pope_rows = [
        {"image": r["image_path"], "question": p["question"], "label": p["label"], "kind": p.get("kind", "all")}
        for r in records
        for p in (r.get("pope") or ())
        if isinstance(p, dict)
    ]
    chair_rows = [
        {
            "image": r["image_path"],
            "objects": list(r["objects"]),
            **({"answer": r["caption"]} if isinstance(r.get("caption"), str) else {}),
        }
        for r in records
        if isinstance(r.get("objects"), list) and r["objects"]
    ]
    pope = write_jsonl_atomic(scratch / "pope.jsonl", pope_rows) if pope_rows else None
    chair = write_jsonl_atomic(scratch / "chair.jsonl", chair_rows) if chair_rows else None
    kw: dict[str, Any] = {
        "pope": str(pope) if pope else None,
        "chair": str(chair) if chair else None,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
    }
    results = {ctx.config.model: evaluate_files(ctx.model, **kw)}
    if ctx.finetuned is not None:
        results[str(ctx.config.finetuned)] = evaluate_files(ctx.finetuned, **kw)
    described = [
        (r["image"], [str(o) for o in r["objects"]])
        for r in records
        if isinstance(r.get("objects"), list) and r["objects"]
    ][:8]
    report = hallucination_report(
        ctx.model,
        results,
        title=f"Hallucination probes of {ctx.config.model}",
        described=described,
        vocabulary=[o for row in chair_rows for o in row["objects"]],
        max_new_tokens=cfg.max_new_tokens,
    )
    metrics = results[ctx.config.model]
    kinds = [k for k in ("random", "popular", "adversarial", "all") if f"pope_{k}_acc" in metrics]
    report.write(page_dir)

    summary: dict[str, dict[str, Any]] = {
        name: {k: v for k, v in m.items() if isinstance(v, (int, float))} for name, m in results.items()
    }
    findings = []
    if "pope_random_acc" in metrics and "pope_adversarial_acc" in metrics:
        gap = metrics["pope_random_acc"] - metrics["pope_adversarial_acc"]
        lo, hi = _accuracy_gap_interval(
            metrics["pope_random_acc"],
            _count(pope_rows, "random"),
            metrics["pope_adversarial_acc"],
            _count(pope_rows, "adversarial"),
        )
        summary[ctx.config.model]["pope_gap_ci"] = [lo, hi]
        verdict = (
            "it is less accurate on probes about co-occurring objects than on random ones"
            if lo > 0
            else "no sign that co-occurring objects are hallucinated more than random ones"
            if hi >= 0
            else "it is more accurate on probes about co-occurring objects than on random ones"
        )
        findings.append(
            Finding(
                f"POPE adversarial accuracy {metrics['pope_adversarial_acc']:.2f} vs random "
                f"{metrics['pope_random_acc']:.2f} (gap {gap:+.2f}, {INTERVAL_LEVEL:.0%} interval [{lo:+.2f}, {hi:+.2f}]): "
                f"{verdict}; it answers 'yes' to "
                f"{metrics.get('pope_adversarial_yes_ratio', float('nan')):.0%} of the adversarial probes "
                f"({_share_present(pope_rows, 'adversarial'):.0%} of their objects are present)."
            )
        )
    elif kinds:
        k = kinds[0]
        findings.append(
            Finding(
                f"POPE ({k}) accuracy {metrics[f'pope_{k}_acc']:.2f}, yes-ratio {metrics[f'pope_{k}_yes_ratio']:.2f}."
            )
        )
    if "chair_i" in metrics:
        findings.append(
            Finding(
                f"In free descriptions {metrics['chair_i']:.1%} of the object mentions are hallucinated (CHAIR_i; "
                f"CHAIR_s {metrics['chair_s']:.2f}) with object recall {metrics['recall']:.2f}"
                + (f"; image-dependence gap {metrics['image_gap']:.2f} nats" if "image_gap" in metrics else "")
                + "."
            )
        )
    if ctx.finetuned is not None:
        tuned = results[str(ctx.config.finetuned)]
        names = {"pope_adversarial_acc": "POPE adversarial accuracy", "chair_i": "CHAIR_i", "recall": "object recall"}
        parts = [
            f"{name} {metrics[key]:.2f} -> {tuned[key]:.2f}"
            for key, name in names.items()
            if key in metrics and key in tuned
        ]
        if parts:
            findings.append(Finding(f"After fine-tuning ({ctx.config.finetuned}): " + ", ".join(parts) + "."))
    return StageOutcome(summary, tuple(findings))


def _count(probes: list[dict[str, Any]], kind: str) -> int:
    return sum(p["kind"] == kind for p in probes)


def _accuracy_gap_interval(acc_a: float, n_a: int, acc_b: float, n_b: int) -> tuple[float, float]:
    """Normal-approximation interval of the difference of two accuracies on independent probe sets."""
    from scipy.stats import norm

    if n_a == 0 or n_b == 0:
        return float("nan"), float("nan")
    se = np.sqrt(acc_a * (1 - acc_a) / n_a + acc_b * (1 - acc_b) / n_b)
    z = float(norm.ppf(0.5 + INTERVAL_LEVEL / 2))
    return float(acc_a - acc_b - z * se), float(acc_a - acc_b + z * se)


def _share_present(probes: list[dict[str, Any]], kind: str) -> float:
    labels = [p["label"] == "yes" for p in probes if p["kind"] == kind]
    return float(np.mean(labels)) if labels else float("nan")


__all__ = ["run_hallucination"]
