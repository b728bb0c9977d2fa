"""The HTML pages of the influence analysis: a ranking of training pairs (with thumbnails of the flagged ones) and
the trace-back of test pairs. Used by ``mmlens influence detect`` / ``trace`` and by the audit's influence stage."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.html import CardLine, HtmlReport, ImageCard
from mmlens.influence.analyzer import TraceResult
from mmlens.influence.data import PairData

#: The sign convention of every removal score, said once on every page that shows one.
REMOVAL_SCORE_NOTE = (
    "delta_val_loss_if_removed = predicted change of the validation loss if the pair were removed "
    "from training. Negative = harmful (removing the pair lowers the validation loss)."
)


def ranking_report(
    pairs: PairData,
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str,
    subtitle: str,
    explanation: str,
    card_scores: Sequence[str],
    cards: int,
    ranking_title: str,
    columns: Sequence[str] | None = None,
    summary: Mapping[str, Any] | None = None,
    cards_title: str | None = None,
    truth_key: str | None = None,
    figure: Any = None,
    figure_title: str = "Every training pair",
    figure_caption: str = "",
    data: Any = None,
    max_rows: int = 100,
) -> HtmlReport:
    """A page of ranked training pairs: the explanation, an optional summary table, image cards of the first
    ``cards`` rows (each card shows the ``card_scores`` of its row; ``truth_key`` marks known noisy pairs), an
    optional figure and the ranking table. ``rows`` are in rank order and carry ``rank``, ``index``, ``id`` and
    ``caption``."""
    report = HtmlReport(title, subtitle=subtitle)
    sec = report.section("What this shows")
    sec.text(explanation, note=True)
    if summary is not None:
        sec.table([dict(summary)])
    shown = []
    for row in rows[:cards]:
        lines = [CardLine(str(row["caption"]))]
        for key in card_scores:
            value = float(row[key])
            # removal scores are judged by sign; other scores (self-influence) carry no verdict
            ok = value >= 0 if key.startswith("delta_") else None
            lines.append(CardLine(f"{key} {value:.3g}", ok=ok))
        if truth_key is not None and truth_key in row:
            lines.append(CardLine("injected swap" if row[truth_key] else "clean pair", ok=not row[truth_key]))
        shown.append(ImageCard(pairs.images[int(row["index"])], f"#{row['rank']} pair {row['id']}", tuple(lines)))
    report.section(cards_title or f"The {len(shown)} top-ranked pairs").images(shown)
    if figure is not None:
        report.section(figure_title).figure(figure, figure_caption)
    report.section(ranking_title).table(
        [dict(r) for r in rows[:max_rows]], columns=list(columns) if columns is not None else None
    )
    report.data = data
    return report


def influence_scatter(self_influence: np.ndarray, value: np.ndarray, truth: np.ndarray | None) -> Any:
    """Self-influence against the held-out value of each pair (red: injected swaps, when known)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    colours = np.where(truth, "#c0392b", "#2e6f9e") if truth is not None else "#2e6f9e"
    ax.scatter(value, self_influence, c=colours, s=12, alpha=0.8)
    ax.set_xlabel("delta_val_loss_if_removed (< 0 harmful)")
    ax.set_ylabel("self-influence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def trace_rows(test_pairs: PairData, pairs: PairData, result: TraceResult, top: int) -> list[dict[str, Any]]:
    """Per test pair, its ``top`` training pairs by relative influence (the rows of ``trace.jsonl``)."""
    rows = []
    for t in range(len(test_pairs)):
        for rank, i in enumerate(result.top(t, top), 1):
            rows.append(
                {
                    "test": test_pairs.ids[t],
                    "test_index": t,
                    "rank": rank,
                    "index": int(i),
                    "id": pairs.ids[i],
                    "caption": pairs.captions[i],
                    "delta_test_loss_if_removed": float(result.delta_test_loss_if_removed[t, i]),
                    "relative_influence": float(result.relative_influence[t, i]),
                }
            )
    return rows


def write_trace_report(
    test_pairs: PairData,
    pairs: PairData,
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    model: str,
) -> Path:
    """One section per test pair: the test image, then its top training pairs (``rows`` of :func:`trace_rows`)."""
    report = HtmlReport("Trace-back of test pairs (ECIF)", f"{model}: training pairs that raised each test loss")
    for t in range(len(test_pairs)):
        sec = report.section(f"Test pair {test_pairs.ids[t]}: {test_pairs.captions[t]}")
        cards = [ImageCard(test_pairs.images[t], "test pair", (CardLine(test_pairs.captions[t]),))]
        for row in (r for r in rows if r["test_index"] == t):
            cards.append(
                ImageCard(
                    pairs.images[int(row["index"])],
                    f"#{row['rank']} pair {row['id']}",
                    (CardLine(str(row["caption"])), CardLine(f"relative {row['relative_influence']:.3g}", ok=False)),
                )
            )
        sec.images(cards)
    return report.write(out_dir)


__all__ = ["REMOVAL_SCORE_NOTE", "influence_scatter", "ranking_report", "trace_rows", "write_trace_report"]
