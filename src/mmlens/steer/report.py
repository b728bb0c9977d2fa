"""HTML report of a steering evaluation: the baselines table, alpha and layer sweeps as plots, before/after cards."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmlens.html import CardLine, HtmlReport, ImageCard
from mmlens.steer.evaluate import VQAExample

KIND_LABELS = {
    "steer": "steering",
    "random": "random direction (same norm)",
    "shuffled": "shuffled labels",
    "logit_bias": "logit bias (same vector)",
}


def _value(row: dict[str, Any], kind: str, key: str) -> float:
    effect = row.get(kind)
    return float(effect[key]) if effect is not None and effect.get(key) is not None else math.nan


def _sweep_figure(rows: Sequence[dict[str, Any]], key: str, ylabel: str, title: str):
    from matplotlib.figure import Figure  # no pyplot: no global figure registry

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    alphas = [r["alpha"] for r in rows]
    for kind, label in KIND_LABELS.items():
        if kind in rows[0]:
            ax.plot(alphas, [_value(r, kind, key) for r in rows], marker="o", label=label)
    ax.set_xlabel("alpha")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _layer_figure(results: Sequence[dict[str, Any]]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    layers = [r["vector"]["layer"] for r in results]
    for kind, label in KIND_LABELS.items():
        if kind in results[0]["at_best"]:
            ax.plot(layers, [_value(r["at_best"], kind, "flip_rate") for r in results], marker="o", label=label)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("flip rate at the chosen alpha")
    ax.set_title("Layer sweep", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_steering_report(
    result: dict[str, Any],
    out_dir: str | os.PathLike[str],
    examples: Sequence[VQAExample] = (),
    *,
    title: str = "Steering evaluation",
) -> Path:
    """Write ``index.html`` + ``data.json`` (``result``) into ``out_dir`` atomically; ``examples`` are the evaluated
    examples (for the images of the before/after cards). Returns the path of index.html."""
    flip = result["flip"]
    scope = flip.get("answer_type") or "all questions"
    report = HtmlReport(
        title,
        subtitle=f"{flip['source']} -> {flip['target']} on {scope} · {result['n_examples']} "
        f"questions · positions {result['positions']} · condition "
        f"{result.get('condition', 'always')}",
        data=result,
    )
    summary = report.section("Summary")
    summary.text(
        "Flip rate: of the in-scope questions answered the source at baseline, the share answered the "
        "target with steering. Other-type drop: accuracy on the other answer types, baseline minus steered "
        "(0.02 = 2 points). Every baseline runs at the same alpha in the same run. The alpha is chosen on "
        "these same examples (highest flip rate with a drop of at most "
        f"{result['max_drop']}): an in-sample choice; evaluate on held-out data for an unbiased number.",
        note=True,
    )
    rows = []
    for r in result["vectors"]:
        best = r["at_best"]
        row = {
            "vector": r["vector"]["name"],
            "norm": r["vector"]["norm"],
            "alpha": r["best_alpha"],
            "flip rate": _value(best, "steer", "flip_rate"),
            "n source": best["steer"].get("n_source", 0),
            "other-type drop": _value(best, "steer", "other_types_acc_drop"),
            "random flip": _value(best, "random", "flip_rate"),
        }
        if "shuffled" in best:
            row["shuffled flip"] = _value(best, "shuffled", "flip_rate")
        row["logit-bias flip"] = _value(best, "logit_bias", "flip_rate")
        row["logit-bias drop"] = _value(best, "logit_bias", "other_types_acc_drop")
        rows.append(row)
    summary.table(rows)
    base = result.get("baseline_accuracy", {})
    if base:
        summary.table([{"answer type": t, "baseline accuracy": a} for t, a in base.items()])

    if result["examples"]:
        cards = []
        for ex in result["examples"]:
            image = examples[ex["index"]].image if ex["index"] < len(examples) else None
            lines = (
                CardLine(f"truth: {ex['truth']}"),
                CardLine(f"before: {ex['before']}", ex["before"] == ex["truth"]),
                CardLine(f"after: {ex['after']}", ex["after"] == ex["truth"]),
            )
            if image is not None:
                cards.append(ImageCard(image, ex["question"], lines))
        sec = report.section("Before and after")
        sec.text(
            f"{result['example_vector']} at alpha {result['example_alpha']:g}; green = matches the ground "
            "truth, red = does not.",
            note=True,
        )
        if cards:
            sec.images(cards)
        else:
            sec.table([{k: ex[k] for k in ("question", "truth", "before", "after")} for ex in result["examples"]])

    sweeps = report.section("Alpha sweeps")
    for r in result["vectors"]:
        name = r["vector"]["name"]
        sweeps.figure(
            _sweep_figure(r["sweep"], "flip_rate", "flip rate", f"{name}: flip rate"),
            f"{name}: flip rate against alpha, with the baselines at the same alpha.",
        )
        sweeps.figure(
            _sweep_figure(
                r["sweep"], "other_types_acc_drop", "other-type accuracy drop", f"{name}: other answer types"
            ),
            f"{name}: accuracy lost on the other answer types against alpha.",
        )
    if len({r["vector"]["layer"] for r in result["vectors"]}) > 1:
        report.section("Layer sweep").figure(
            _layer_figure(result["vectors"]), "Flip rate per layer, each vector at its chosen alpha."
        )
    return report.write(out_dir)
