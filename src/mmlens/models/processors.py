"""Processor variants needed without torchvision.

Qwen2-VL / Qwen2.5-VL processors require a video processor, and transformers' video processors need torchvision.
mmlens only feeds images, so these subclasses drop the video attribute; everything else is the real processor.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )
