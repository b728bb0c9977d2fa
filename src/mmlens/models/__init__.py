"""The model layer: one interface over contrastive models, vision-language models and causal LMs.

Public API (imported lazily so that ``mmlens.models.tokenizers`` stays cheap to import)::

    load_model(spec, *, device="cpu", torch_dtype=None, expect=None)  # "zoo:NAME", a local dir, or a HF id
    ContrastiveModel, VisionLanguageModel, CausalLanguageModel
    contrastive_loss, per_pair_loss, LossKind, ParamGroup
    capture_outputs, add_to_output                          # forward hooks as context managers
    tiny_model(arch, *, seed=0), TINY_ARCHITECTURES
    train_word_tokenizer, make_llava_processor
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_model": "loading",
    "resolve_spec": "loading",
    "ContrastiveModel": "contrastive",
    "contrastive_loss": "contrastive",
    "per_pair_loss": "contrastive",
    "LossKind": "contrastive",
    "ParamGroup": "contrastive",
    "VisionLanguageModel": "generative",
    "CausalLanguageModel": "generative",
    "FamilySpec": "generative",
    "PromptStyle": "generative",
    "VLM_FAMILIES": "generative",
    "IGNORE_INDEX": "generative",
    "capture_outputs": "hooks",
    "add_to_output": "hooks",
    "tiny_model": "tiny",
    "TINY_ARCHITECTURES": "tiny",
    "train_word_tokenizer": "tokenizers",
    "make_llava_processor": "tokenizers",
    "make_chat_template": "tokenizers",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from mmlens.models.contrastive import ContrastiveModel, LossKind, ParamGroup, contrastive_loss, per_pair_loss
    from mmlens.models.generative import (
        IGNORE_INDEX,
        VLM_FAMILIES,
        CausalLanguageModel,
        FamilySpec,
        PromptStyle,
        VisionLanguageModel,
    )
    from mmlens.models.hooks import add_to_output, capture_outputs
    from mmlens.models.loading import load_model, resolve_spec
    from mmlens.models.tiny import TINY_ARCHITECTURES, tiny_model
    from mmlens.models.tokenizers import make_chat_template, make_llava_processor, train_word_tokenizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmlens.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mmlens.models.{module}"), name)
