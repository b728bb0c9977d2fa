"""HTML reports of the align commands: example chosen/rejected pairs, BDHS statistics, each arm's metrics side by
side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmlens.align.data import PreferencePair
from mmlens.align.eval import DESCRIBE_PROMPT, vocabulary_parser
from mmlens.html import CardLine, HtmlReport, ImageCard

HEADLINE = (
    "pope_adversarial_acc",
    "pope_adversarial_f1",
    "pope_random_acc",
    "pope_popular_acc",
    "pope_adversarial_yes_ratio",
    "yes_ratio",
    "chair_i",
    "chair_s",
    "recall",
    "image_gap",
)


def _pair_cards(pairs: Sequence[PreferencePair], n: int) -> list[ImageCard]:
    step = max(1, len(pairs) // max(1, n))
    cards = []
    for p in list(pairs)[::step][:n]:
        lines = [
            CardLine(f"Q: {p.prompt}"),
            CardLine(f"chosen: {p.chosen}", True),
            CardLine(f"rejected: {p.rejected}", False),
        ]
        if "similarity" in p.meta:
            lines.append(CardLine(f"try {p.meta.get('try')}, similarity {p.meta['similarity']:.3f}"))
        cards.append(ImageCard(p.image, p.meta.get("source", "pair"), tuple(lines)))
    return cards


def pairs_report(
    pairs: Sequence[PreferencePair],
    stats: Mapping[str, Any] | None = None,
    *,
    title: str = "Preference pairs",
    n_examples: int = 12,
) -> HtmlReport:
    report = HtmlReport(title, subtitle=f"{len(pairs)} pairs", data={"stats": dict(stats or {})})
    if stats:
        sec = report.section("Generation statistics")
        acc = stats.get("accepted_by_try")
        if acc:
            sec.table(
                [
                    {"try": i + 1, "accepted": a, "unguided": i + 1 == len(acc) and len(acc) > 1}
                    for i, a in enumerate(acc)
                ]
            )
        sec.table([{k: v for k, v in stats.items() if not isinstance(v, (list, dict))}])
    report.section("Example pairs").images(_pair_cards(pairs, n_examples))
    return report


def _cell(v: Any) -> Any:
    if isinstance(v, Mapping) and v.get("mean") is None:
        return "n/a"  # a metric without items (null in the JSON)
    if isinstance(v, Mapping) and "ci" in v:
        return f"{v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
    if isinstance(v, Mapping) and "std" in v:
        return f"{v['mean']:.3f} ± {v['std']:.3f}"
    return v


def metrics_report(
    results: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Hallucination metrics",
    pairs: Mapping[str, Sequence[PreferencePair]] | None = None,
) -> HtmlReport:
    """One row per model/arm; metric values may be numbers or {"mean", "std"} summaries."""
    report = HtmlReport(title, data={"results": {k: dict(v) for k, v in results.items()}})
    rows = []
    for name, metrics in results.items():
        row: dict[str, Any] = {"arm": name}
        for key in HEADLINE:
            if key in metrics:
                v = metrics[key]
                row[key] = _cell(v)
        rows.append(row)
    report.section("Metrics side by side").text(
        "POPE: yes/no probes on held-out images (adversarial negatives = absent co-occurrence partners). CHAIR_i / "
        "CHAIR_s: hallucinated objects in free descriptions, with object recall so that saying less does not pass. "
        "image_gap: log p(answer | image) - log p(answer | image hidden)."
    ).table(rows)
    for name, items in (pairs or {}).items():
        report.section(f"Example pairs: {name}").images(_pair_cards(items, 8))
    return report


def hallucination_report(
    vlm: Any,
    results: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    described: Sequence[tuple[Image.Image, Sequence[str]]] = (),
    vocabulary: Sequence[str] = (),
    max_new_tokens: int = 32,
) -> HtmlReport:
    """The hallucination page of a model (and others side by side in ``results``): the metrics table, POPE accuracy
    per probe kind, and ``vlm``'s descriptions of the ``described`` (image, objects) examples with the objects it
    names that are absent (parsed over ``vocabulary``) in red."""
    report = metrics_report(results, title=title)
    first = next(iter(results.values()), {})
    kinds = [k for k in ("random", "popular", "adversarial", "all") if f"pope_{k}_acc" in first]
    if kinds:
        report.section("POPE accuracy by probe kind").figure(
            pope_figure(results, kinds), "POPE accuracy per probe kind (adversarial = absent co-occurring objects)."
        )
    if described:
        said = vlm.generate(
            [image for image, _ in described], [DESCRIBE_PROMPT] * len(described), max_new_tokens=max_new_tokens
        )
        parser = vocabulary_parser(list(vocabulary))
        cards = []
        for (image, objects), text in zip(described, said):
            extra = parser(text) - {o.lower() for o in objects}
            cards.append(
                ImageCard(
                    image,
                    "objects: " + ", ".join(objects),
                    (
                        CardLine(f"says: {text}", ok=not extra),
                        CardLine("hallucinated: " + (", ".join(sorted(extra)) or "none"), ok=not extra),
                    ),
                )
            )
        report.section("Descriptions (red: mentions an absent object)").images(cards)
    return report


def pope_figure(results: Mapping[str, Mapping[str, Any]], kinds: Sequence[str]) -> Any:
    """Grouped bars: POPE accuracy per probe kind, one bar per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    width = 0.8 / len(results)
    xs = np.arange(len(kinds))
    for j, (name, metrics) in enumerate(results.items()):
        ax.bar(xs + j * width, [metrics.get(f"pope_{k}_acc", 0.0) for k in kinds], width, label=name)
    ax.set_xticks(xs + width * (len(results) - 1) / 2, kinds)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", linewidth=1, linestyle=":")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


ARM_PLOT_METRICS: tuple[tuple[str, str], ...] = (
    ("pope_adversarial_acc", "POPE adversarial accuracy"),
    ("partner_false_yes", "false 'yes' to the absent partner"),
    ("recall", "object recall (descriptions)"),
    ("chair_i", "CHAIR_i (descriptions)"),
)


def arms_figure(result: Mapping[str, Any]) -> Any:
    """The arms side by side on the anchor-without-partner test scenes: mean and 95 % interval per metric."""
    from matplotlib.figure import Figure

    arms = result["arms"]
    names = list(arms)
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, len(ARM_PLOT_METRICS), sharey=True)
    ys = np.arange(len(names))
    for ax, (key, title) in zip(axes, ARM_PLOT_METRICS):
        # metrics without items are null in the JSON (e.g. CHAIR_i when nothing is named): not drawn
        means = np.array([arms[n][key]["mean"] for n in names], dtype=float)
        lo = np.array([arms[n][key]["ci"][0] for n in names], dtype=float)
        hi = np.array([arms[n][key]["ci"][1] for n in names], dtype=float)
        ax.errorbar(means, ys, xerr=[means - lo, hi - means], fmt="o", capsize=3)
        if arms["sft"][key]["mean"] is not None:
            ax.axvline(arms["sft"][key]["mean"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def bench_report(result: Mapping[str, Any]) -> HtmlReport:
    report = metrics_report(result["arms"], title="Alignment benchmark")
    report.data = dict(result)
    report.section("Arms side by side").figure(
        arms_figure(result), "Test metrics on anchor-without-partner scenes, mean and 95 % interval (dotted: SFT)."
    )
    report.section("Targets").table(
        [{"target": k, "measured": str(v["measured"]), "met": v["met"]} for k, v in result.get("targets", {}).items()]
    )
    report.section("Tuned settings").table(
        [
            {"arm": k, **{a: str(b) for a, b in v.get("tuned", {}).items()}}
            for k, v in result["arms"].items()
            if k != "sft"
        ]
    )
    sec = report.section("BDHS and cost")
    for kind, stats in result.get("bdhs_stats", {}).items():
        if isinstance(stats, Mapping):
            sec.table([{"pairs": kind, **{k: str(v) for k, v in stats.items()}}])
    sec.table([{k: str(v) for k, v in result["cost"].items()}])
    return report


__all__ = ["arms_figure", "bench_report", "hallucination_report", "metrics_report", "pairs_report", "pope_figure"]
