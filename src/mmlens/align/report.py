"""HTML reports of the align commands: example chosen/rejected pairs, BDHS statistics, each arm's metrics side by
side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmlens.align.data import PreferencePair
from mmlens.report import CardLine, HtmlReport, ImageCard

HEADLINE = ("pope_adversarial_acc", "pope_adversarial_f1", "pope_random_acc", "pope_popular_acc",
            "pope_adversarial_yes_ratio", "yes_ratio", "chair_i", "chair_s", "recall", "image_gap")


def _pair_cards(pairs: Sequence[PreferencePair], n: int) -> list[ImageCard]:
    step = max(1, len(pairs) // max(1, n))
    cards = []
    for p in list(pairs)[::step][:n]:
        lines = [CardLine(f"Q: {p.prompt}"), CardLine(f"chosen: {p.chosen}", True),
                 CardLine(f"rejected: {p.rejected}", False)]
        if "similarity" in p.meta:
            lines.append(CardLine(f"try {p.meta.get('try')}, similarity {p.meta['similarity']:.3f}"))
        cards.append(ImageCard(p.image, p.meta.get("source", "pair"), tuple(lines)))
    return cards


def pairs_report(pairs: Sequence[PreferencePair], stats: Mapping[str, Any] | None = None, *,
                 title: str = "Preference pairs", n_examples: int = 12) -> HtmlReport:
    report = HtmlReport(title, subtitle=f"{len(pairs)} pairs", data={"stats": dict(stats or {})})
    if stats:
        sec = report.section("Generation statistics")
        acc = stats.get("accepted_by_try")
        if acc:
            sec.table([{"try": i + 1, "accepted": a, "unguided": i + 1 == len(acc) and len(acc) > 1}
                       for i, a in enumerate(acc)])
        sec.table([{k: v for k, v in stats.items() if not isinstance(v, (list, dict))}])
    report.section("Example pairs").images(_pair_cards(pairs, n_examples))
    return report


def metrics_report(results: Mapping[str, Mapping[str, Any]], *, title: str = "Hallucination metrics",
                   pairs: Mapping[str, Sequence[PreferencePair]] | None = None) -> HtmlReport:
    """One row per model/arm; metric values may be numbers or {"mean", "std"} summaries."""
    report = HtmlReport(title, data={"results": {k: dict(v) for k, v in results.items()}})
    rows = []
    for name, metrics in results.items():
        row: dict[str, Any] = {"arm": name}
        for key in HEADLINE:
            if key in metrics:
                v = metrics[key]
                row[key] = f"{v['mean']:.3f} ± {v['std']:.3f}" if isinstance(v, Mapping) else v
        rows.append(row)
    report.section("Metrics side by side").text(
        "POPE: yes/no probes on held-out images (adversarial negatives = absent co-occurrence partners). CHAIR_i / "
        "CHAIR_s: hallucinated objects in free descriptions, with object recall so that saying less does not pass. "
        "image_gap: log p(answer | image) - log p(answer | image hidden).").table(rows)
    for name, items in (pairs or {}).items():
        report.section(f"Example pairs: {name}").images(_pair_cards(items, 8))
    return report


def bench_report(result: Mapping[str, Any]) -> HtmlReport:
    report = metrics_report(result["arms"], title="Alignment benchmark")
    report.data = dict(result)
    report.section("Targets").table([{"target": k, "measured": v["measured"], "met": v["met"]}
                                     for k, v in result.get("targets", {}).items()])
    sec = report.section("BDHS and cost")
    sec.table([{k: v for k, v in result["bdhs_stats"].items() if k != "per_seed"}])
    sec.table([result["cost"]])
    for arm, pairs in result.get("example_pairs", {}).items():
        report.section(f"Example pairs: {arm}").table(pairs)
    return report


__all__ = ["bench_report", "metrics_report", "pairs_report"]
