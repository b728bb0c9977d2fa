"""What every adapter shares: the wrapped model (possibly under peft), its config, device and dtype."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class ModelAdapter:
    """Base of the adapters: ``self.model`` is the user's model (a peft wrapper is allowed)."""

    model: nn.Module

    @property
    def base_model(self) -> PreTrainedModel:
        return unwrap_peft(self.model)

    @property
    def config(self):
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device):
        self.model.to(device)
        return self
