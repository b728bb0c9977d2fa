"""Steering vectors from a model's own activations, collected with :mod:`mmlens.concepts`' capture.

For one-word answers the activation that matters is the one at the last prompt position: it emits the first
answer token (``PositionKind.LAST_PROMPT``). Samples are labelled with the model's own answer, kept only where
it matches the ground truth when one is given (the reference's "ground truth and prediction contain the token").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmlens.answers import DEFAULT_EXTRACTOR, AnswerExtractor
from mmlens.errors import InputError
from mmlens.models.generative import CausalLanguageModel
from mmlens.steer.evaluate import VQAExample, normalise_answer
from mmlens.steer.vectors import SteeringVector, vector_from_labels

WRONG = ""  # label of a sample whose answer does not match its ground truth


def capture_examples(
    model: Any,
    examples: Sequence[VQAExample],
    layers: Sequence[int],
    *,
    position: Any = None,
    max_new_tokens: int = 4,
    batch_size: int = 64,
    progress: bool = True,
):
    """Activations of ``layers`` (and the generated answers) on ``examples``: a ``CaptureResult`` whose row i is
    example i (LAST_PROMPT keeps every sample)."""
    from mmlens.models.capture import (
        CaptureConfig,
        PositionKind,
        PositionRule,
        capture_activations,
    )

    items = list(examples)
    if not items:
        raise InputError("no examples to capture activations from")
    rule = position if position is not None else PositionRule(PositionKind.LAST_PROMPT)
    config = CaptureConfig(layers=tuple(layers), position=rule, max_new_tokens=max_new_tokens, batch_size=batch_size)
    images = None if isinstance(model, CausalLanguageModel) else [e.image for e in items]
    return capture_activations(model, images, [e.question for e in items], config, progress=progress)


def answer_labels(
    generated: Sequence[str],
    examples: Sequence[VQAExample],
    *,
    require_correct: bool = True,
    extractor: AnswerExtractor = DEFAULT_EXTRACTOR,
) -> list[str]:
    """The extracted answers as labels (``extractor.extract``); with ``require_correct``, ``WRONG`` ("") where an
    example has a ground truth the text does not match (``extractor.matches``)."""
    labels = []
    for text, ex in zip(generated, examples):
        answer = extractor.extract(text)
        wrong = require_correct and bool(ex.answer.strip()) and not extractor.matches(text, ex.answer)
        labels.append(WRONG if wrong else answer)
    return labels


def vectors_from_capture(
    capture: Any,
    labels: Sequence[str],
    source: str,
    target: str,
    *,
    layers: Sequence[int] | None = None,
    model: str = "",
) -> dict[int, SteeringVector]:
    """One coarse source -> target vector per captured layer (rows of ``capture`` labelled by ``labels``)."""
    n_layers = int(capture.metadata.get("num_layers", 0))
    chosen = (
        list(layers) if layers is not None else [int(k.split(".")[1]) for k in capture.keys if k.startswith("layer.")]
    )
    position = capture.metadata.get("config", {}).get("position", {}).get("kind", "")
    rows = capture.sample_index.tolist()
    row_labels = [labels[i] for i in rows]
    out = {}
    for layer in chosen:
        index = layer % n_layers if n_layers else layer
        out[index] = vector_from_labels(
            capture.layer(index),
            row_labels,
            normalise_answer(source),
            normalise_answer(target),
            layer=index,
            model=model,
            position=position,
        )
    return out
