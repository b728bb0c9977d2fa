"""Light option enums of the model layer (no torch import), for configs and the CLI."""

from __future__ import annotations

import enum


class ImageFeatureMode(enum.StrEnum):
    """Image features: mean of the vision tower's patch tokens (the reference) or the projected embedding."""

    PATCH_MEAN = "patch_mean"
    PROJECTED = "projected"


__all__ = ["ImageFeatureMode"]
