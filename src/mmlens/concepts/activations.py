"""The first step of a concept analysis, activation capture, re-exported from the shared plumbing
(:mod:`mmlens.models.capture`, which steering uses too) so that a concept workflow imports from one place."""

from mmlens.models.capture import (
    CaptureConfig,
    CaptureResult,
    PositionKind,
    PositionRule,
    capture_activations,
    common_samples,
    layer_key,
    load_capture,
    record_emitters,
)

__all__ = [
    "CaptureConfig",
    "CaptureResult",
    "PositionKind",
    "PositionRule",
    "capture_activations",
    "common_samples",
    "layer_key",
    "load_capture",
    "record_emitters",
]
