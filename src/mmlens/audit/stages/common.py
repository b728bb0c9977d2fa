"""What every audit stage shares: the context it reads, the outcome it returns, the statistics behind the
summary's words, and the rule that decides whether a stage applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmlens.audit.config import AuditConfig, ModelKind, Stage
from mmlens.audit.data import AuditData
from mmlens.errors import MMLensError

#: Level of the intervals behind the summary's words: a difference is called a difference only when its interval at
#: this level excludes 0.
INTERVAL_LEVEL = 0.95
#: Resamples of the paired bootstrap intervals.
N_BOOTSTRAP = 1000
#: Fewest images (one question each) the shift stage scores: below this the EMI estimates are meaningless.
MIN_SHIFT_IMAGES = 4


class NotApplicable(MMLensError):
    """Raised by a stage that finds, once running, that the model gives it nothing to work on: the stage is
    recorded as skipped with this reason."""


@dataclass(frozen=True)
class Finding:
    """One sentence of the summary page, linking to the page (relative to the stage folder) that shows it."""

    text: str
    page: str = "index.html"


@dataclass(frozen=True)
class StageOutcome:
    summary: dict[str, Any]  # the key numbers (audit.json)
    findings: tuple[Finding, ...]
    pages: tuple[str, ...] = ("index.html",)  # every page written, relative to the stage folder


@dataclass
class StageContext:
    """What every stage reads: the plan, the validated data, the loaded model(s)."""

    config: AuditConfig
    data: AuditData
    model: Any
    kind: ModelKind
    finetuned: Any = None
    _questions: list[dict[str, Any]] | None = field(default=None, repr=False)

    def questions(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` VQA items in a seeded order that mixes records (the same for every stage)."""
        if self._questions is None:
            items = self.data.questions()
            order = np.random.default_rng(self.config.seed).permutation(len(items))
            self._questions = [items[i] for i in order]
        return self._questions[:n]

    def image(self, record: int):
        return self.data.records[record]["image"]


def skip_reason(stage: Stage, ctx_kind: ModelKind, data: AuditData, config: AuditConfig) -> str | None:
    """Why ``stage`` does not apply to this model and data (None: it applies)."""
    vlm = ctx_kind is ModelKind.VISION_LANGUAGE
    if stage not in config.stages:
        return "not requested (--stages)"
    if stage is Stage.INFLUENCE:
        if vlm:
            return "not a contrastive model: ECIF scores the image-caption training pairs of CLIP-style models"
        if not data.has_captions:
            return "not every record has a caption: influence needs image-caption pairs"
        if len(data) < 8:
            return f"only {len(data)} records: influence needs at least 8 pairs (training and held-out)"
        return None
    if not vlm:
        what = {
            Stage.SHIFT: "shift analyses the answers a vision-language model generates",
            Stage.CONCEPTS: "concept dictionaries are learned over a generative model's hidden states",
            Stage.STEERING: "steering changes what a generative model answers",
            Stage.HALLUCINATION: "hallucination probes ask a vision-language model questions",
        }[stage]
        return f"not a vision-language model: {what}"
    if stage in (Stage.SHIFT, Stage.CONCEPTS) and not data.questions():
        return "the records have no VQA questions ('vqa' lists)"
    if stage is Stage.SHIFT and len({q["record"] for q in data.questions()}) < MIN_SHIFT_IMAGES:
        return f"shift needs VQA questions on at least {MIN_SHIFT_IMAGES} different images"
    if stage is Stage.STEERING and not data.has_yes_no:
        return "the records have no yes/no questions (answers 'yes' and 'no'): no yes->no vector to build"
    if stage is Stage.HALLUCINATION and not (data.has_pope or data.has_objects):
        return "the records have no object lists ('objects') and no POPE probes ('pope'): no POPE/CHAIR"
    return None


def finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def interval_words(lo: float, hi: float) -> str:
    """What an interval of a difference says, in words: only an interval that excludes 0 shows a difference."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    if lo > 0:
        return "above 0"
    if hi < 0:
        return "below 0"
    return "includes 0, not distinguishable from no change"


def paired_interval(diff: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (N_BOOTSTRAP, len(diff)))].mean(1)
    tail = (1 - INTERVAL_LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def format_interval(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def percent(value: float | None) -> str:
    return "n/a" if finite_or_none(value) is None else f"{value:.0%}"


__all__ = [
    "INTERVAL_LEVEL",
    "MIN_SHIFT_IMAGES",
    "N_BOOTSTRAP",
    "Finding",
    "NotApplicable",
    "StageContext",
    "StageOutcome",
    "skip_reason",
    "finite_or_none",
    "interval_words",
    "paired_interval",
    "format_interval",
    "percent",
]
