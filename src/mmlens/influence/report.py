"""The HTML pages of the influence analysis: a ranking of training pairs (with thumbnails of the flagged ones) and
the trace-back of test pairs. Used by ``mmlens influence detect`` / ``trace`` and by the audit's influence stage."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.html import CardLine, HtmlReport, ImageCard
from mmlens.html.report import format_number
from mmlens.influence.analyzer import TraceResult
from mmlens.influence.data import PairData

#: The sign convention of every removal score, said once on every page that shows one.
REMOVAL_SCORE_NOTE = (
    "delta_val_loss_if_removed = predicted change of the validation loss if the pair were removed "
    "from training. Negative = harmful (removing the pair lowers the validation loss)."
)


#: Robust z-score beyond which a score stands out (Iglewicz and Hoaglin's cut-off for the modified z-score).
STAND_OUT_Z = 3.5


@dataclass(frozen=True)
class StandOut:
    """The scale of a set of scores: median, robust standard deviation (1.4826 MAD) and the robust z-score beyond
    which a score stands out. An addition of ours (a scale for the ranking and the colours of the cards), not part
    of ECIF."""

    median: float
    robust_sd: float
    threshold_z: float
    n_outliers: int  # scores below the low cut (harmful beyond the threshold, for removal scores)
    lowest_z: float
    note: str

    @property
    def low(self) -> float:
        """Scores below this stand out low (``median - threshold_z * robust_sd``)."""
        return self.median - self.threshold_z * self.robust_sd

    @property
    def high(self) -> float:
        """Scores above this stand out high."""
        return self.median + self.threshold_z * self.robust_sd

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_outliers": self.n_outliers,
            "median": self.median,
            "robust_sd": self.robust_sd,
            "lowest_z": self.lowest_z,
            "threshold_z": self.threshold_z,
            "low_cut": self.low,
            "note": self.note,
        }


def stand_out(scores: Sequence[float] | np.ndarray, threshold_z: float = STAND_OUT_Z) -> StandOut:
    """Which harmful (low) scores stand out from the rest: modified z-score (score - median) / (1.4826 MAD) below
    ``-threshold_z``. On clean data every score is within the spread, and the note says so instead of heading the
    lowest scores "most harmful"."""
    values = np.asarray(scores, dtype=float)
    median = float(np.median(values)) if len(values) else 0.0
    mad = float(np.median(np.abs(values - median))) * 1.4826 if len(values) else 0.0
    z = (values - median) / mad if mad > 0 else np.zeros_like(values)
    n = int((z < -threshold_z).sum())
    lowest = float(z.min()) if len(z) else 0.0
    if n:
        note = (
            f"{n} pair(s) stand out as harmful: their score is more than {threshold_z} robust standard "
            f"deviations below the median (median {median:.3g}, robust sd {mad:.3g})."
        )
    else:
        note = (
            f"No pair stands out: the lowest score is {abs(lowest):.2f} robust standard deviations below the "
            f"median (median {median:.3g}, robust sd {mad:.3g}; a pair stands out beyond {threshold_z}), so "
            "the ranking below is not evidence of misaligned pairs."
        )
    return StandOut(median, mad, threshold_z, n, lowest, note)


def _verdict(value: float, scale: StandOut | None, high_is_bad: bool) -> bool | None:
    """The colour of a score on a card: red (False) beyond the scale's threshold on the bad side, green (True) beyond
    it on the good side, plain (None) within the spread, or without a scale."""
    if scale is None or scale.robust_sd <= 0:
        return None
    bad, good = (value > scale.high, value < scale.low) if high_is_bad else (value < scale.low, value > scale.high)
    return False if bad else True if good else None


def _legend(scales: Mapping[str, StandOut]) -> str:
    parts = []
    for key, scale in scales.items():
        if scale.robust_sd <= 0:
            parts.append(f"{key}: all scores equal, no colour.")
            continue
        bad, good = ("above", "below") if key == "self_influence" else ("below", "above")
        cut_bad, cut_good = (scale.high, scale.low) if key == "self_influence" else (scale.low, scale.high)
        meaning = "suspicious" if key == "self_influence" else "harmful"
        parts.append(
            f"{key}: red = {meaning} beyond the threshold ({bad} {cut_bad:.3g}, {scale.threshold_z} robust sd from "
            f"the median {scale.median:.3g}); green = {good} {cut_good:.3g}; plain = within the spread of the scores."
        )
    return "Colours of the card scores. " + " ".join(parts)


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
    scales: Mapping[str, StandOut] | None = None,
) -> HtmlReport:
    """A page of ranked training pairs: the explanation, an optional summary table, image cards of the first
    ``cards`` rows (each card shows the ``card_scores`` of its row; ``truth_key`` marks known noisy pairs), an
    optional figure and the ranking table. ``rows`` are in rank order and carry ``rank``, ``index``, ``id`` and
    ``caption``. A score with a scale in ``scales`` (score name -> :func:`stand_out` of all its values; by default
    computed here for every card score from ``rows``) is coloured on the cards only beyond the scale's threshold,
    with a legend above the cards."""
    report = HtmlReport(title, subtitle=subtitle)
    scales = dict(scales or {})
    for key in card_scores:
        if key not in scales and rows:
            scales[key] = stand_out([float(r[key]) for r in rows])
    sec = report.section("What this shows")
    sec.text(explanation, note=True)
    if summary is not None:
        sec.table([dict(summary)])
    shown = []
    for row in rows[:cards]:
        lines = [CardLine(str(row["caption"]))]
        for key in card_scores:
            value = float(row[key])
            # coloured by what the score means at the scale of all scores, not by its sign (on clean data about
            # half the scores are negative and none is harmful beyond the spread)
            ok = _verdict(value, scales.get(key), high_is_bad=key == "self_influence")
            lines.append(CardLine(f"{key} {format_number(value)}", ok=ok))
        if truth_key is not None and truth_key in row:
            lines.append(CardLine("injected swap" if row[truth_key] else "clean pair", ok=not row[truth_key]))
        shown.append(ImageCard(pairs.images[int(row["index"])], f"#{row['rank']} pair {row['id']}", tuple(lines)))
    cards_section = report.section(cards_title or f"The {len(shown)} top-ranked pairs")
    if shown and scales:
        cards_section.text(_legend({k: scales[k] for k in card_scores if k in scales}), note=True)
    cards_section.images(shown)
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
    scales: Sequence[StandOut] | None = None,
) -> Path:
    """One section per test pair: the test image, then its top training pairs (``rows`` of :func:`trace_rows`).
    ``scales[t]`` is the :func:`stand_out` of test pair t's scores over every training pair (the CLI passes it);
    without it the scale of the listed rows is used."""
    report = HtmlReport("Trace-back of test pairs (ECIF)", f"{model}: training pairs that raised each test loss")
    report.section("What this shows").text(
        "For each test pair, the training pairs with the most negative relative influence (RelatIF): removing them "
        "would lower the test pair's loss the most. A score is red only when it stands out from the scores of all "
        f"training pairs for that test pair (more than {STAND_OUT_Z} robust standard deviations below their median, "
        "the cut given under each test pair); plain = within their spread, so not evidence of a culprit.",
        note=True,
    )
    for t in range(len(test_pairs)):
        sec = report.section(f"Test pair {test_pairs.ids[t]}: {test_pairs.captions[t]}")
        own = [r for r in rows if r["test_index"] == t]
        scale = scales[t] if scales is not None else stand_out([float(r["relative_influence"]) for r in own])
        if scale.robust_sd > 0:
            sec.text(
                f"Red below {format_number(scale.low)} (median {format_number(scale.median)}, robust sd "
                f"{format_number(scale.robust_sd)}); {scale.n_outliers} training pair(s) stand out.",
                note=True,
            )
        cards = [ImageCard(test_pairs.images[t], "test pair", (CardLine(test_pairs.captions[t]),))]
        for row in own:
            value = float(row["relative_influence"])
            cards.append(
                ImageCard(
                    pairs.images[int(row["index"])],
                    f"#{row['rank']} pair {row['id']}",
                    (
                        CardLine(str(row["caption"])),
                        CardLine(f"relative {format_number(value)}", ok=False if value < scale.low else None),
                    ),
                )
            )
        sec.images(cards)
    return report.write(out_dir)


__all__ = [
    "REMOVAL_SCORE_NOTE",
    "STAND_OUT_Z",
    "StandOut",
    "influence_scatter",
    "ranking_report",
    "stand_out",
    "trace_rows",
    "write_trace_report",
]
