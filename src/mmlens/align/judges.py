"""Pairwise judges for online DPO: which of two answers to the same (image, prompt) is better.

``judge(examples, first, second) -> list[int]``: 0 when ``first`` wins, 1 when ``second`` wins, -1 for a tie (the pair
is not used). Three kinds: the world's ground truth (:class:`WorldOracleJudge`), a vision-language model
(:class:`VLMJudge`) and any function (:class:`CallablePairwiseJudge`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mmlens.align.data import SFTExample
from mmlens.answers import DEFAULT_EXTRACTOR, AnswerExtractor
from mmlens.errors import InputError


class PairwiseJudge(Protocol):
    def judge(self, examples: Sequence[SFTExample], first: Sequence[str], second: Sequence[str]) -> list[int]: ...


@dataclass(frozen=True)
class OracleJudge:
    """Ground truth: a short answer is right when it equals the SFT answer; a description is better with fewer
    hallucinated objects, then with more of the true objects named (``example.objects``; ``mentioned`` maps a text
    to the objects it names, e.g. ``World.mentioned_objects`` or :func:`mmlens.align.eval.vocabulary_parser`)."""

    mentioned: Callable[[str], set[str]]
    short_answer_words: int = 3
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR  # how a short answer is read (mmlens.answers)

    def _score(self, ex: SFTExample, text: str) -> tuple[float, float]:
        if len(ex.answer.split()) <= self.short_answer_words or ex.objects is None:
            return (float(self.extractor.matches(text, ex.answer)), 0.0)
        named = set(self.mentioned(text))
        return (-float(len(named - ex.objects)), float(len(named & ex.objects)))

    def judge(self, examples: Sequence[SFTExample], first: Sequence[str], second: Sequence[str]) -> list[int]:
        out = []
        for ex, a, b in zip(examples, first, second):
            sa, sb = self._score(ex, a), self._score(ex, b)
            out.append(-1 if sa == sb else 0 if sa > sb else 1)
        return out


def WorldOracleJudge(world, short_answer_words: int = 3) -> OracleJudge:  # noqa: N802 (reads as a class)
    """The oracle of the miniature world (its shape lexicon, synonyms and plurals included)."""
    return OracleJudge(world.mentioned_objects, short_answer_words)


class VLMJudgeMode(enum.Enum):
    """How a vision-language judge decides."""

    GROUNDING = "grounding"  # higher log p(answer | image) - log p(answer | image hidden): more image-grounded
    ASK = "ask"  # ask the judge which answer is better ("1" or "2"); for instruction-following judges


@dataclass(frozen=True)
class VLMJudge:
    """A vision-language model as the annotator (the paper used LLaVA-1.6-34B with ``ASK``)."""

    vlm: Any  # a VisionLanguageModel
    mode: VLMJudgeMode = VLMJudgeMode.GROUNDING
    margin: float = 0.0
    batch_size: int = 32
    question: str = (
        "Question: {prompt}\nAnswer 1: {a}\nAnswer 2: {b}\nWhich answer has less hallucination and "
        "more helpful content grounded in the image? Reply with 1 or 2."
    )

    def judge(self, examples: Sequence[SFTExample], first: Sequence[str], second: Sequence[str]) -> list[int]:
        from mmlens.align.eval import answer_logprobs

        images, prompts = [e.image for e in examples], [e.prompt for e in examples]
        if self.mode is VLMJudgeMode.ASK:
            asks = [self.question.format(prompt=p, a=a, b=b) for p, a, b in zip(prompts, first, second)]
            replies = self.vlm.generate(images, asks, max_new_tokens=4, batch_size=self.batch_size)
            return [0 if r.strip().startswith("1") else 1 if r.strip().startswith("2") else -1 for r in replies]
        scores = []
        for answers in (first, second):
            ok = [bool(a.strip()) for a in answers]
            safe = [a if a.strip() else "." for a in answers]
            gap = answer_logprobs(self.vlm, images, prompts, safe, batch_size=self.batch_size) - answer_logprobs(
                self.vlm, images, prompts, safe, hide_image=True, batch_size=self.batch_size
            )
            scores.append(np.where(ok, gap, -np.inf))
        diff = scores[0] - scores[1]
        return [-1 if np.isnan(d) or abs(d) <= self.margin else 0 if d > 0 else 1 for d in diff]


@dataclass(frozen=True)
class CallablePairwiseJudge:
    """Wrap ``fn(example, first, second) -> 0 | 1 | -1``."""

    fn: Callable[[SFTExample, str, str], int]

    def judge(self, examples: Sequence[SFTExample], first: Sequence[str], second: Sequence[str]) -> list[int]:
        out = [int(self.fn(e, a, b)) for e, a, b in zip(examples, first, second)]
        if any(v not in (-1, 0, 1) for v in out):
            raise InputError("a judge function must return 0 (first better), 1 (second better) or -1 (tie)")
        return out


__all__ = ["CallablePairwiseJudge", "OracleJudge", "PairwiseJudge", "VLMJudge", "VLMJudgeMode", "WorldOracleJudge"]
