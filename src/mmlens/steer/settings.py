"""Settings of steering as frozen dataclasses, light to import (no torch): what a steering application, a vector
build and an evaluation take. The command line makes its options from these fields (``mmlens.cli.options``), so
the CLI and the Python API refuse the same values."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mmlens.errors import InputError, check_finite


class SteerPositions(enum.Enum):
    """Where in the sequence a vector is added.

    - ``ALL``: every position, image tokens included, in the prompt and at every generated token (the reference).
    - ``PROMPT_ONLY``: prompt positions only; generation sees the steering only through the cached keys/values.
    - ``GENERATED_ONLY``: generated tokens only. The first answer token is predicted from the LAST PROMPT position,
      which this rule does not steer: a one-word answer is only changed from its second token on (usually not at
      all). Use ``FROM_LAST_PROMPT`` to steer the first answer token.
    - ``FROM_LAST_PROMPT``: the last prompt token (which predicts the first answer token) and every generated token.
    - ``TEXT_ONLY``: every position except image tokens (``image_token_mask``): prompt text and generated tokens.
    """

    ALL = "all"
    PROMPT_ONLY = "prompt_only"
    GENERATED_ONLY = "generated_only"
    FROM_LAST_PROMPT = "from_last_prompt"
    TEXT_ONLY = "text_only"


class SteerCondition(enum.Enum):
    """Which samples a vector acts on.

    - ``ALWAYS``: every sample (the reference code).
    - ``SOURCE_CONCEPT``: only samples that activate the vector's source concept: at the vector's layer, the
      activation at the last prompt position is nearer the vector's ``reference`` than any of its ``contrasts``
      (decided once per sample at the prompt, kept for its generated tokens). The v2 description of fine-grained
      steering; it needs vectors built with contrasts (``vector_from_labels``, ``concept_vectors``).
    """

    ALWAYS = "always"
    SOURCE_CONCEPT = "source_concept"


@dataclass(frozen=True)
class SteerConfig:
    """Strength, positions and condition of an application (``alpha = 0`` reproduces the plain model exactly)."""

    alpha: float = 1.0
    positions: SteerPositions = SteerPositions.ALL
    condition: SteerCondition = SteerCondition.ALWAYS

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", float(self.alpha))
        if not isinstance(self.condition, SteerCondition):
            try:
                object.__setattr__(self, "condition", SteerCondition(self.condition))
            except ValueError:
                choices = ", ".join(c.value for c in SteerCondition)
                raise InputError(f"unknown condition {self.condition!r}: use one of {choices}") from None
        if not isinstance(self.positions, SteerPositions):
            try:
                object.__setattr__(self, "positions", SteerPositions(self.positions))
            except ValueError:
                choices = ", ".join(p.value for p in SteerPositions)
                raise InputError(f"unknown position rule {self.positions!r}: use one of {choices}") from None
        check_finite(self)


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated while vectors are built, applied or evaluated."""

    max_new_tokens: int = 16  # tokens generated per answer
    batch_size: int = 32  # questions per generate call

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and {self.batch_size}"
            )


@dataclass(frozen=True)
class EvalSettings:
    """The alpha sweep of an evaluation and how its alpha is chosen."""

    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # strengths to sweep
    max_drop: float = 0.02  # largest other-type accuracy drop allowed when choosing alpha
    random_seed: int = 0  # seed of the random-direction baseline

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        check_finite(self)
        if not self.alphas:
            raise InputError("alphas is empty: give at least one strength")
        if not 0.0 <= self.max_drop <= 1.0:
            raise InputError(f"max_drop must be in [0, 1] (an accuracy drop), got {self.max_drop}")


__all__ = ["EvalSettings", "GenerationSettings", "SteerCondition", "SteerConfig", "SteerPositions"]
