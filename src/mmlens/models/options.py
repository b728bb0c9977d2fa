"""Light option enums of the model layer (no torch import), for configs and the CLI."""

from __future__ import annotations

import enum


class ImageFeatureMode(enum.StrEnum):
    """Image features: mean of the vision tower's patch tokens (the reference) or the projected embedding."""

    PATCH_MEAN = "patch_mean"
    PROJECTED = "projected"


class ParamGroup(enum.Enum):
    """Parameters of a contrastive model that influence analysis differentiates."""

    PROJECTION = "projection"
    LAST_K_LAYERS = "last_k_layers"
    LORA = "lora"
    ALL = "all"


__all__ = ["ImageFeatureMode", "ParamGroup"]
