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


def load_validation_pairs(spec: str | Path):
    """The trusted validation pairs: a folder in the ``mmlens world export`` layout (``data.jsonl`` with captions),
    a JSONL of ``{image, caption}`` or a ``datasets`` folder with image and caption columns."""
    from mmlens.audit.data import DATA_FILE, load_audit_data
    from mmlens.errors import InputError
    from mmlens.influence import PairData, load_pair_data

    path = Path(spec).expanduser()
    if path.is_dir() and (path / DATA_FILE).is_file():
        data = load_audit_data(path)
        if not data.has_captions:
            raise InputError(f"validation data {path}: every record needs a caption")
        return PairData(tuple(r["image"] for r in data.records), tuple(r["caption"] for r in data.records))
    pairs = load_pair_data(path)
    if len(pairs) < 2:
        raise InputError(f"validation data {path}: need at least 2 pairs (a contrastive batch)")
    return pairs


def _fit_or_resume(analyzer, folder: Path):
    """The fit saved in ``folder`` by an interrupted run of the same work folder (same partition and start), else a
    new fit, saved there atomically."""
    import torch

    from mmlens.errors import InputError
    from mmlens.influence import FitResult
    from mmlens.io import atomic_folder

    if (folder / "fit.json").is_file():
        try:
            saved = FitResult.load(folder)
            if saved.partition.batches == analyzer.partition.batches and torch.equal(saved.theta0, analyzer.theta0):
                analyzer.use_fit(saved)
                return saved
        except InputError:
            pass
    fit = analyzer.fit()
    with atomic_folder(folder) as tmp:
        fit.save(tmp)
    return fit


def run_influence(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.influence import (
        FitArguments,
        HeadTask,
        InfluenceAnalyzer,
        NoiseKind,
        PairData,
        detection_metrics,
        encode_cached,
        inject_noise,
        score_pairs,
    )
    from mmlens.influence.report import REMOVAL_SCORE_NOTE, influence_scatter, ranking_report

    cfg = ctx.config.influence
    rng = np.random.default_rng(ctx.config.seed)
    n_data = len(ctx.data.records)
    sampled = cfg.max_pairs is not None and cfg.max_pairs < n_data
    chosen = sorted(rng.choice(n_data, cfg.max_pairs, replace=False)) if sampled else range(n_data)
    records = [ctx.data.records[i] for i in chosen]
    ids = tuple(str(r.get("scene_id", i)) for i, r in zip(chosen, records))
    pairs = PairData(tuple(r["image"] for r in records), tuple(r["caption"] for r in records), ids=ids)
    if cfg.val is not None:  # the user's trusted validation set: every (sampled) pair is a training pair
        val, train = load_validation_pairs(cfg.val), pairs
        val_words = f"the trusted validation set {cfg.val} ({len(val)} pairs)"
    else:  # every pair is still scored; the value is measured on a seeded share of the same, possibly noisy, pairs
        order = rng.permutation(len(pairs))
        n_val = max(2, round(cfg.val_fraction * len(pairs)))
        val, train = pairs.subset(sorted(order[:n_val])), pairs
        val_words = (
            f"{len(val)} pairs of the same data ({cfg.val_fraction:.0%}, also training pairs; not a "
            "trusted validation set)"
        )
    truth = None
    if cfg.inject_swap_rate > 0:
        noisy = inject_noise(train, cfg.inject_swap_rate, NoiseKind.RANDOM_SWAP, seed=ctx.config.seed)
        train, truth = noisy.data, noisy.is_noisy
        if not truth.any():  # too few pairs to swap (or swapped captions that were equal): nothing to detect
            truth = None
    # dataset scale: tower outputs cached in the work folder, the fit saved there, every pair scored in resumable
    # shards (an interrupted audit resumes where it stopped)
    task = HeadTask(ctx.model)
    encoded = encode_cached(task, train, scratch / "encoded", key=ctx.config.model)
    analyzer = InfluenceAnalyzer(
        task,
        train,
        encoded=encoded,
        fit_args=FitArguments(batch_size=min(cfg.batch_size, len(train)), l2=cfg.l2, seed=ctx.config.seed),
    )
    fit = _fit_or_resume(analyzer, scratch / "fit")
    scores = score_pairs(analyzer, scratch / "scores", val, val_seed=ctx.config.seed)
    value = scores.value  # delta_val_loss_if_removed (both roles, exact form)
    self_influence = scores.self_influence
    k = max(1, round(cfg.flag_fraction * len(train)))
    # with a trusted validation set the flags are the pairs whose removal most lowers its loss; without one, the
    # value would be judged against the same possibly-noisy data, so the flags are by self-influence only
    flag_score, flag_name = (
        (-value, "delta_val_loss_if_removed") if cfg.val is not None else (self_influence, "self_influence")
    )
    ranking = np.argsort(-flag_score, kind="stable")
    flagged = ranking[:k]
    # the same seeded measurement batches as the value, so the first-order prediction and the refit are comparable
    loss_before = analyzer.validation_loss(fit.params, val, seed=ctx.config.seed)
    loss_after = analyzer.validation_loss(analyzer.retrain(remove=flagged.tolist()), val, seed=ctx.config.seed)
    summary: dict[str, Any] = {
        "n_pairs_in_data": n_data,
        "n_scored": len(train),
        "max_pairs": cfg.max_pairs,
        "sampled": sampled,
        "n_train": len(train),
        "n_val": len(val),
        "validation": str(cfg.val) if cfg.val is not None else "part of the same data (also training pairs)",
        "flagged_by": flag_name,
        "n_flagged": int(k),
        "n_harmful": int((value < 0).sum()),
        "val_loss": loss_before,
        "val_loss_without_flagged": loss_after,
        "predicted_val_loss_change": float(value[flagged].sum()),
        "fit_seconds": fit.seconds,
        "score_seconds": scores.seconds,
        "injected_swap_rate": cfg.inject_swap_rate,
    }
    if cfg.inject_swap_rate > 0:
        summary["n_injected"] = 0 if truth is None else int(truth.sum())
    if truth is not None:
        summary["flagged_precision"] = float(truth[flagged].mean())
        summary["auroc_self_influence"] = detection_metrics(truth, self_influence)["auroc"]
        summary["auroc_value"] = detection_metrics(truth, -value)["auroc"]

    rows = [
        {
            "rank": rank,
            "index": int(i),
            "id": train.ids[i],
            "caption": train.captions[i],
            "self_influence": float(self_influence[i]),
            "delta_val_loss_if_removed": float(value[i]),
            **({"injected_swap": bool(truth[i])} if truth is not None else {}),
        }
        for rank, i in enumerate(ranking, 1)
    ]
    scope = (
        f"a random sample of {len(pairs)} of the {n_data} pairs of the data (max_pairs = {cfg.max_pairs})"
        if sampled
        else f"all {len(pairs)} pairs of the data"
    )
    flag_words = (
        f"flagged by their harm to {val_words} (most negative delta_val_loss_if_removed)"
        if cfg.val is not None
        else "flagged by self-influence only: no trusted validation set was given (--val), and the held-out "
        f"value was measured on {val_words}"
    )
    report = ranking_report(
        train,
        rows,
        title="Suspicious training pairs (ECIF influence)",
        subtitle=f"{ctx.config.model}: {len(train)} training pairs scored ({scope}), validation: {val_words}; "
        "projection heads refit by L-BFGS, exact negative form",
        explanation="Self-influence = g^T H^-1 g of a pair's own loss gradient: pairs the model had to bend to fit "
        "(often mislabelled) score high. " + REMOVAL_SCORE_NOTE + f" The pairs are {flag_words}.",
        summary=summary,
        card_scores=(flag_name, "self_influence" if cfg.val is not None else "delta_val_loss_if_removed"),
        cards=cfg.cards,
        cards_title=f"The {min(cfg.cards, len(rows))} flagged candidates, by {flag_name}",
        truth_key="injected_swap" if truth is not None else None,
        figure=influence_scatter(self_influence, value, truth),
        figure_title="Self-influence of every training pair",
        figure_caption="Self-influence against the held-out value of each pair"
        + (" (red: injected caption swaps)." if truth is not None else "."),
        ranking_title="Ranking (top 60)",
        max_rows=60,
        data={"summary": summary, "rows": rows},
    )
    report.write(page_dir)

    scored = (
        f"Influence scored {len(train)} training pairs: {scope}"
        + (" (without max_pairs every pair is scored)" if sampled else "")
        + f"; validation data: {val_words}."
    )
    findings = [Finding(scored)]
    if cfg.val is None:
        findings.append(
            Finding(
                "No trusted validation set was given (--val): suspicious pairs are flagged by self-influence only, "
                f"and the held-out value (delta_val_loss_if_removed) used part of the same data: {len(val)} of the "
                "scored, possibly noisy, pairs (not independent of training). Give a clean validation set to flag "
                "pairs by their harm to it."
            )
        )
    flag_reason = (
        "whose removal most lowers the loss of the trusted validation set"
        if cfg.val is not None
        else "with the highest self-influence (the pairs the model had to bend most to fit, where "
        "mislabelled captions tend to rank)"
    )
    findings.append(
        Finding(
            f"The {k} of {len(train)} training pairs {flag_reason} are flagged; refitting the projection heads without "
            f"them changes the summed validation loss from {loss_before:.2f} to {loss_after:.2f} "
            f"({loss_after - loss_before:+.2f}; first-order prediction {summary['predicted_val_loss_change']:+.2f}). "
            f"To first order, removing any one of {summary['n_harmful']} pairs alone would lower the validation loss "
            "(delta_val_loss_if_removed < 0)."
        )
    )
    if cfg.inject_swap_rate > 0 and truth is None:
        findings.append(
            Finding(
                f"No caption was swapped at rate {cfg.inject_swap_rate:g} on {len(train)} training "
                "pairs (a swap needs two chosen pairs with different captions): no detection check."
            )
        )
    if truth is not None:
        findings.append(
            Finding(
                f"Against the {summary['n_injected']} injected caption swaps: self-influence AUROC "
                f"{summary['auroc_self_influence']:.3f}, held-out value AUROC {summary['auroc_value']:.3f}; "
                f"{summary['flagged_precision']:.0%} of the flagged pairs are real swaps."
            )
        )
    return StageOutcome(summary, tuple(findings))


__all__ = ["load_validation_pairs", "run_influence"]
