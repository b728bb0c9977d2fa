"""The choices of the shift analysis as enums (string-valued, so configs and JSON stay readable).

Each option accepts the enum member or its string value; :func:`mmlens.enums.as_enum` turns a user value into the
member and raises a clear :class:`~mmlens.errors.InputError` listing the allowed values otherwise.
"""

from __future__ import annotations

import enum

from mmlens.models.options import ImageFeatureMode as ImageFeatureMode  # an option of the shift analysis too


class EstimatorKind(enum.StrEnum):
    """Mutual-information estimator: CLUB (upper bound, the reference), InfoNCE or NWJ (lower bounds)."""

    CLUB = "club"
    INFONCE = "infonce"
    NWJ = "nwj"


class LogvarActivation(enum.StrEnum):
    """CLUB's log-variance head: ``tanh`` bounds log sigma^2 to (-1, 1) as the reference does; ``none`` is free."""

    TANH = "tanh"
    NONE = "none"


class EstimatorData(enum.StrEnum):
    """Pairs the estimator is trained on: all splits pooled (transductive, the reference) or a held-out half."""

    POOLED = "pooled"
    HELD_OUT = "held_out"


class Fusion(enum.StrEnum):
    """Query embedding from image and text: their average (the reference, equal dims) or their concatenation."""

    AVERAGE = "average"
    CONCAT = "concat"


class BoundKind(enum.StrEnum):
    """Form of the EMID bound (see docs/shift.md)."""

    SCALE_ADJUSTED = "scale_adjusted"
    THEOREM = "theorem"
    COMPACT = "compact"


class LogBase(enum.StrEnum):
    """Unit of information: nats (``e``) or bits (``2``, where JSD <= 1)."""

    E = "e"
    TWO = "2"


class Mixture(enum.StrEnum):
    """Mixture of the representation JSD: weighted by sample size (the reference) or equal weights."""

    SAMPLE_SIZE = "sample_size"
    EQUAL = "equal"


class TermValues(enum.StrEnum):
    """Bound terms as measured (``raw``) or minus their permutation-null mean (``excess``)."""

    RAW = "raw"
    EXCESS = "excess"


class EarlyStoppingSplit(enum.StrEnum):
    """Held-out part of the estimator's training pairs: whole query groups (item ids) or single pairs."""

    GROUP = "group"
    PAIR = "pair"


class Preset(enum.StrEnum):
    """Named pipelines: ``reference`` = the EMI authors' embedders, fusion, estimator and controls."""

    REFERENCE = "reference"
