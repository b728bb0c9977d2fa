"""mmlens: where a multimodal model's alignment breaks, why, and how to repair it."""

__version__ = "0.1.0"
