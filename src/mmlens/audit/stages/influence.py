"""Influence stage: which training pairs the contrastive model had to bend to fit (ECIF self-influence and held-out value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmlens.audit.stages.common import (
    Finding,
    StageContext,
    StageOutcome,
)


def run_influence(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.influence import (
        FitArguments,
        HeadTask,
        InfluenceAnalyzer,
        NoiseKind,
        PairData,
        detection_metrics,
        inject_noise,
    )
    from mmlens.influence.report import REMOVAL_SCORE_NOTE, influence_scatter, ranking_report

    cfg = ctx.config.influence
    records = ctx.data.records[: cfg.max_pairs]
    ids = tuple(str(r.get("scene_id", i)) for i, r in enumerate(records))
    pairs = PairData(tuple(r["image"] for r in records), tuple(r["caption"] for r in records), ids=ids)
    order = np.random.default_rng(ctx.config.seed).permutation(len(pairs))
    n_val = max(2, round(cfg.val_fraction * len(pairs)))
    val, train = pairs.subset(sorted(order[:n_val])), pairs.subset(sorted(order[n_val:]))
    truth = None
    if cfg.inject_swap_rate > 0:
        noisy = inject_noise(train, cfg.inject_swap_rate, NoiseKind.RANDOM_SWAP, seed=ctx.config.seed)
        train, truth = noisy.data, noisy.is_noisy
        if not truth.any():  # too few pairs to swap (or swapped captions that were equal): nothing to detect
            truth = None
    analyzer = InfluenceAnalyzer(HeadTask(ctx.model), train,
                                 fit_args=FitArguments(batch_size=min(cfg.batch_size, len(train)), l2=cfg.l2,
                                                       seed=ctx.config.seed))
    fit = analyzer.fit()
    value = analyzer.value(val, seed=ctx.config.seed).role()  # delta_val_loss_if_removed (both roles, exact form)
    self_influence = analyzer.self_influence()
    k = max(1, round(cfg.flag_fraction * len(train)))
    flagged = np.argsort(-self_influence, kind="stable")[:k]
    # the same seeded measurement batches as the value, so the first-order prediction and the refit are comparable
    loss_before = analyzer.validation_loss(fit.params, val, seed=ctx.config.seed)
    loss_after = analyzer.validation_loss(analyzer.retrain(remove=flagged.tolist()), val, seed=ctx.config.seed)
    summary: dict[str, Any] = {
        "n_train": len(train), "n_val": len(val), "n_flagged": int(k), "n_harmful": int((value < 0).sum()),
        "val_loss": loss_before, "val_loss_without_flagged": loss_after,
        "predicted_val_loss_change": float(value[flagged].sum()),
        "fit_seconds": fit.seconds, "injected_swap_rate": cfg.inject_swap_rate,
    }
    if cfg.inject_swap_rate > 0:
        summary["n_injected"] = 0 if truth is None else int(truth.sum())
    if truth is not None:
        summary["flagged_precision"] = float(truth[flagged].mean())
        summary["auroc_self_influence"] = detection_metrics(truth, self_influence)["auroc"]
        summary["auroc_value"] = detection_metrics(truth, -value)["auroc"]

    rows = [{"rank": rank, "index": int(i), "id": train.ids[i], "caption": train.captions[i],
             "self_influence": float(self_influence[i]), "delta_val_loss_if_removed": float(value[i]),
             **({"injected_swap": bool(truth[i])} if truth is not None else {})}
            for rank, i in enumerate(np.argsort(-self_influence, kind="stable"), 1)]
    report = ranking_report(
        train, rows, title="Suspicious training pairs (ECIF influence)",
        subtitle=f"{ctx.config.model}: {len(train)} training pairs, {len(val)} held out; projection heads refit by "
                 "L-BFGS, exact negative form",
        explanation="Self-influence = g^T H^-1 g of a pair's own loss gradient: pairs the model had to bend to fit "
                    "(often mislabelled) score high. " + REMOVAL_SCORE_NOTE,
        summary=summary, card_scores=("self_influence", "delta_val_loss_if_removed"), cards=cfg.cards,
        cards_title=f"The {min(cfg.cards, len(rows))} pairs with the highest self-influence",
        truth_key="injected_swap" if truth is not None else None,
        figure=influence_scatter(self_influence, value, truth),
        figure_title="Self-influence of every training pair",
        figure_caption="Self-influence against the held-out value of each pair"
                       + (" (red: injected caption swaps)." if truth is not None else "."),
        ranking_title="Ranking (top 60)", max_rows=60, data={"summary": summary, "rows": rows})
    report.write(page_dir)

    findings = [Finding(
        f"The {k} of {len(train)} training pairs with the highest self-influence (the pairs the model had to bend "
        f"most to fit, where mislabelled captions tend to rank) are flagged; refitting the projection heads without "
        f"them changes the summed held-out loss from {loss_before:.2f} to {loss_after:.2f} ({loss_after - loss_before:+.2f}; "
        f"first-order prediction {summary['predicted_val_loss_change']:+.2f}). To first order, removing any one of "
        f"{summary['n_harmful']} pairs alone would lower the held-out loss (delta_val_loss_if_removed < 0).")]
    if cfg.inject_swap_rate > 0 and truth is None:
        findings.append(Finding(f"No caption was swapped at rate {cfg.inject_swap_rate:g} on {len(train)} training "
                                "pairs (a swap needs two chosen pairs with different captions): no detection check."))
    if truth is not None:
        findings.append(Finding(
            f"Against the {summary['n_injected']} injected caption swaps: self-influence AUROC "
            f"{summary['auroc_self_influence']:.3f}, held-out value AUROC {summary['auroc_value']:.3f}; "
            f"{summary['flagged_precision']:.0%} of the flagged pairs are real swaps."))
    return StageOutcome(summary, tuple(findings))


__all__ = ["run_influence"]
