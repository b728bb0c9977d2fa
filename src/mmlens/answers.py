"""One answer extractor for every evaluation (steer, concepts, align): from generated text to the answer it gives.

Real models answer in sentences ("No, Moscow is not the capital of France.", "The sentiment of this review is
positive."), so exact match of the whole text undercounts them. The rules, in order:

1. normalise: lower case, single spaces, trailing punctuation removed, a word repeated right after itself collapsed
   ("no no no" -> "no": a model pushed at every position may loop on its answer);
2. yes/no (as POPE reads answers): the leading word, when it is "yes" or "no", is the answer;
3. a closed label set (``labels``, e.g. ``("positive", "negative")``): the first label the text names;
4. otherwise the normalised text itself.

A text *matches* a ground truth when its extracted answer equals the truth, or (``contains``, for short truths of at
most ``short_words`` words) when the truth occurs in the text as whole words ("The capital of France is Paris."
matches "paris"). Yes/no truths are never matched by containment: "no, it is not yes" must read as "no".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mmlens.errors import InputError

YES_NO = ("yes", "no")


def normalise_text(text: str) -> str:
    """Lower case, single spaces, trailing punctuation removed, immediate word repeats collapsed."""
    text = re.sub(r"\s+", " ", text.lower().strip())
    text = re.sub(r"[\s.?!,;:]+$", "", text)
    return re.sub(r"\b(\w+)(?: \1\b)+", r"\1", text)


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text)


def _find_phrase(words: Sequence[str], phrase: Sequence[str]) -> int:
    """Index of the first whole-word occurrence of ``phrase`` in ``words`` (-1 if absent)."""
    n = len(phrase)
    if n == 0:
        return -1
    for i in range(len(words) - n + 1):
        if list(words[i : i + n]) == list(phrase):
            return i
    return -1


@dataclass(frozen=True)
class AnswerExtractor:
    """The rules of the module docstring; every switch is an option so an evaluation can state what it used.

    ``exact=True`` turns rules 2, 3 and containment off (the miniature world's original exact-match rule)."""

    yes_no_leading_word: bool = True
    labels: tuple[str, ...] = ()
    contains: bool = True
    short_words: int = 3
    exact: bool = False

    def __post_init__(self) -> None:
        if self.short_words < 1:
            raise InputError(f"short_words must be at least 1, got {self.short_words}")
        object.__setattr__(self, "labels", tuple(normalise_text(lab) for lab in self.labels))
        if any(not lab for lab in self.labels):
            raise InputError("answer labels must be non-empty words")

    def extract(self, text: str) -> str:
        """The answer ``text`` gives (normalised)."""
        norm = normalise_text(text)
        if self.exact:
            return norm
        words = _words(norm)
        if self.yes_no_leading_word and words and words[0] in YES_NO:
            return words[0]
        if self.labels:
            found = [(i, lab) for lab in self.labels if (i := _find_phrase(words, _words(lab))) >= 0]
            if found:
                return min(found)[1]
        return norm

    def matches(self, text: str, truth: str) -> bool:
        """Whether ``text`` gives the answer ``truth``."""
        answer, want = self.extract(text), normalise_text(truth)
        if answer == want:
            return True
        if self.exact or not self.contains or want in YES_NO or answer in YES_NO:
            return False
        phrase = _words(want)
        return 0 < len(phrase) <= self.short_words and _find_phrase(_words(answer), phrase) >= 0

    def describe(self) -> dict[str, object]:
        return {
            "yes_no_leading_word": self.yes_no_leading_word,
            "labels": list(self.labels),
            "contains": self.contains,
            "short_words": self.short_words,
            "exact": self.exact,
        }


DEFAULT_EXTRACTOR = AnswerExtractor()
