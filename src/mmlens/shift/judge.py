"""The judge path: relative preference and win rate from judge score pairs, with a pluggable judge.

The LLaVA protocol: the judge sees the context (e.g. a caption), the question, the reference answer (assistant 1)
and the model's answer (assistant 2), and replies with two scores on 1-10 on its first line. From the score pairs
(s_ref, s_model): relative preference RP = 100 mean(s_model) / mean(s_ref), win rate = P(s_model > s_ref) (ties
count half by default).

A judge is anything with ``__call__(prompt: str) -> str``: :class:`CallableChatJudge` (any function),
:class:`OpenAICompatibleJudge` (a chat-completions endpoint, e.g. a local vLLM/llama.cpp server), or
:class:`LocalModelJudge` (an ``mmlens.models`` causal LM). Recorded judge outputs can be replayed with
``CallableChatJudge(dict.__getitem__)``-style functions (the tests do this).
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mmlens.errors import InputError, MMLensError
from mmlens.progress import progress_bar
from mmlens.shift.data import ShiftSplit

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_INSTRUCTION = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image.\nPlease rate the helpfulness, "
    "relevance, accuracy, level of details of their responses. Each assistant receives an overall score on a scale "
    "of 1 to 10, where a higher score indicates better overall performance.\nPlease first output a single line "
    "containing only two values indicating the scores for Assistant 1 and 2, respectively. The two scores are "
    "separated by a space.\nIn the subsequent line, please provide a comprehensive explanation of your evaluation, "
    "avoiding any potential bias and ensuring that the order in which the responses were presented does not affect "
    "your judgment."
)


class Judge(Protocol):
    def __call__(self, prompt: str) -> str: ...


def judge_prompt(question: str, reference: str, response: str, context: str = "") -> str:
    """The LLaVA review prompt: context, question, assistant 1 = reference, assistant 2 = model."""
    return (
        f"[Context]\n{context}\n\n[Question]\n{question}\n\n[Assistant 1]\n{reference}\n\n[End of Assistant 1]"
        f"\n\n[Assistant 2]\n{response}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_INSTRUCTION}\n\n"
    )


_PAIR = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[, ]\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_score_pair(text: str) -> tuple[float, float]:
    """The two scores on the judge output's first line (as LLaVA parses them); (nan, nan) if unparseable."""
    first = text.strip().split("\n", 1)[0] if text else ""
    m = _PAIR.match(first.replace(",", " ").replace("  ", " "))
    if not m:
        return (math.nan, math.nan)
    return (float(m.group(1)), float(m.group(2)))


def _scores(scores: Sequence[tuple[float, float]]) -> np.ndarray:
    s = np.asarray(list(scores), dtype=float)
    if s.ndim != 2 or s.shape[1] != 2 or len(s) == 0:
        raise InputError("judge scores must be a non-empty list of (reference, model) pairs")
    s = s[np.isfinite(s).all(1)]
    if len(s) == 0:
        raise InputError("no parseable judge scores")
    if s[:, 0].mean() == 0:
        raise InputError("mean reference score is 0; relative preference is undefined")
    return s


def relative_preference(scores: Sequence[tuple[float, float]]) -> float:
    """RP = 100 * mean(model score) / mean(reference score) over (reference, model) pairs (unparsed pairs dropped)."""
    s = _scores(scores)
    return float(100.0 * s[:, 1].mean() / s[:, 0].mean())


def win_rate(scores: Sequence[tuple[float, float]], ties: str = "half") -> float:
    """P(model score > reference score); ties count ``half`` (0.5) or ``loss`` (0)."""
    if ties not in ("half", "loss"):
        raise InputError("ties must be 'half' or 'loss'")
    s = _scores(scores)
    wins = (s[:, 1] > s[:, 0]).astype(float)
    if ties == "half":
        wins += 0.5 * (s[:, 1] == s[:, 0])
    return float(wins.mean())


@dataclass
class CallableChatJudge:
    fn: Callable[[str], str]

    def __call__(self, prompt: str) -> str:
        return self.fn(prompt)


@dataclass
class OpenAICompatibleJudge:
    """A chat-completions endpoint (``{base_url}/chat/completions``); the key is read from ``api_key_env``."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.2
    max_tokens: int = 512
    timeout: float = 120.0

    def __call__(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}],
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["choices"][0]["message"]["content"]
        except (urllib.error.URLError, KeyError, IndexError, TypeError, json.JSONDecodeError, TimeoutError) as err:
            raise MMLensError(f"judge endpoint {self.base_url} failed: {err}") from None


@dataclass
class LocalModelJudge:
    """A local causal LM (``mmlens.models`` adapter or spec) used as the judge, greedy."""

    model: Any
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            from mmlens.models import load_model

            self.model = load_model(self.model)

    def __call__(self, prompt: str) -> str:
        return self.model.generate([prompt], max_new_tokens=self.max_new_tokens)[0]


def judge_split(
    judge: Judge, split: ShiftSplit, contexts: Sequence[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Judge every item of a split; returns the raw outputs, score pairs, RP and win rate."""
    if contexts is not None and len(contexts) != len(split):
        raise InputError(f"{len(contexts)} contexts for {len(split)} items")
    items = range(len(split))
    items = progress_bar(items, desc=f"judge {split.name}", enabled=progress)
    outputs = [
        judge(judge_prompt(split.queries[i], split.references[i], split.responses[i], contexts[i] if contexts else ""))
        for i in items
    ]
    pairs = [parse_score_pair(o) for o in outputs]
    n_bad = sum(1 for p in pairs if math.isnan(p[0]))
    if n_bad == len(pairs):  # nothing parseable: report it instead of failing the whole run
        return {
            "outputs": outputs,
            "scores": pairs,
            "unparsed": n_bad,
            "relative_preference": math.nan,
            "win_rate": math.nan,
        }
    return {
        "outputs": outputs,
        "scores": pairs,
        "unparsed": n_bad,
        "relative_preference": relative_preference(pairs),
        "win_rate": win_rate(pairs),
    }
