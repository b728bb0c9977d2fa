"""Adapter over CLIP-style contrastive models: CLIPModel, SiglipModel, VisionTextDualEncoderModel.

Embeddings are the projected, L2-normalised ones the model's own loss uses. The loss is exposed in a function
form over precomputed embeddings (:func:`contrastive_loss`, :func:`per_pair_loss`) because influence analyses
need per-pair losses in a batch context, and as a method on raw inputs.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import BatchFeature, CLIPModel, PreTrainedModel, SiglipModel, VisionTextDualEncoderModel

from mmlens.errors import InputError, ModelLoadError
from mmlens.models.base import ModelAdapter, unwrap_peft
from mmlens.models.options import ParamGroup as ParamGroup  # light: configs and the CLI name it


class LossKind(enum.Enum):
    """The batch loss a contrastive family trains with."""

    INFONCE = "infonce"  # CLIP / dual encoder: symmetric softmax cross-entropy over the batch
    SIGMOID = "sigmoid"  # SigLIP: independent binary log-sigmoid per (image, text) pair


def per_pair_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    kind: LossKind = LossKind.INFONCE,
) -> torch.Tensor:
    """Loss of each matched pair i (image i, text i) against the rest of the batch: Tensor[B].

    Its mean is the family's batch loss. INFONCE: ``(CE(row i of image->text) + CE(row i of text->image)) / 2``.
    SIGMOID: ``-sum_j log sigmoid(z_ij * (+1 if i == j else -1))`` over row i of the text->image logits.
    Embeddings are expected L2-normalised.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise InputError(f"need matched [B, D] embeddings, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    logits_per_text = logit_scale * text_emb @ image_emb.T
    if kind is LossKind.SIGMOID:
        if logit_bias is not None:
            logits_per_text = logits_per_text + logit_bias
        signs = 2 * torch.eye(len(text_emb), device=text_emb.device, dtype=logits_per_text.dtype) - 1
        return -F.logsigmoid(signs * logits_per_text).sum(dim=1)
    target = torch.arange(len(text_emb), device=text_emb.device)
    text_ce = F.cross_entropy(logits_per_text, target, reduction="none")
    image_ce = F.cross_entropy(logits_per_text.T, target, reduction="none")
    return (text_ce + image_ce) / 2


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    kind: LossKind = LossKind.INFONCE,
) -> torch.Tensor:
    """The family's batch loss over matched, normalised embeddings (mean of :func:`per_pair_loss`)."""
    return per_pair_loss(image_emb, text_emb, logit_scale=logit_scale, logit_bias=logit_bias, kind=kind).mean()


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; older returned it.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _longest_layer_list(module: nn.Module) -> nn.ModuleList:
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ModelLoadError(f"no layer list found in {type(module).__name__}")
    return max(lists, key=len)


class ContrastiveModel(ModelAdapter):
    """A contrastive image-text model with its processor (or tokenizer + image processor)."""

    def __init__(
        self, model: PreTrainedModel, processor: Any = None, *, tokenizer: Any = None, image_processor: Any = None
    ) -> None:
        base = unwrap_peft(model)
        if not isinstance(base, (CLIPModel, SiglipModel, VisionTextDualEncoderModel)):
            raise ModelLoadError(
                f"{type(base).__name__} is not a supported contrastive model "
                "(CLIPModel, SiglipModel, VisionTextDualEncoderModel)"
            )
        self.model = model
        self.processor = processor
        self.tokenizer: Any = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        self.image_processor: Any = (
            image_processor if image_processor is not None else getattr(processor, "image_processor", None)
        )
        if self.tokenizer is None or self.image_processor is None:
            raise ModelLoadError("a contrastive model needs a processor, or both tokenizer= and image_processor=")
        self.loss_kind = LossKind.SIGMOID if isinstance(base, SiglipModel) else LossKind.INFONCE

    # ----------------------------------------------------------------------------------------- basics
    def save_pretrained(self, path: str | Path) -> None:
        self.base_model.save_pretrained(path)
        if self.processor is not None:
            self.processor.save_pretrained(path)
        else:
            self.tokenizer.save_pretrained(path)
            self.image_processor.save_pretrained(path)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The (exponentiated) temperature multiplying cosine similarities."""
        return self.base_model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's learned bias added to the scaled similarities; None for softmax families."""
        return getattr(self.base_model, "logit_bias", None)

    # ------------------------------------------------------------------------------------- inputs
    def image_inputs(self, images: Sequence[Image.Image]) -> BatchFeature:
        if isinstance(images, Image.Image) or not all(isinstance(im, Image.Image) for im in images):
            raise InputError("images must be a sequence of PIL images")
        if not images:
            raise InputError("need at least one image")
        batch = self.image_processor(images=list(images), return_tensors="pt")
        return batch.to(self.device).to(self.dtype)

    def text_inputs(self, texts: Sequence[str]) -> BatchFeature:
        if isinstance(texts, str) or not texts:
            raise InputError("texts must be a non-empty sequence of strings")
        max_len = self.config.text_config.max_position_embeddings
        # SigLIP was trained on text padded to max_length and pools the last position: pad the same way.
        padding = "max_length" if self.loss_kind is LossKind.SIGMOID else True
        batch = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
        if isinstance(self.base_model, SiglipModel):
            batch.pop("attention_mask", None)  # SigLIP attends to padding by design
        batch.pop("token_type_ids", None)
        return batch.to(self.device)

    # ---------------------------------------------------------------------------------- embeddings
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised projected image embeddings, with gradients (for losses and influence)."""
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)

    def text_features(self, text_batch: BatchFeature | dict) -> torch.Tensor:
        """Normalised projected text embeddings, with gradients."""
        return F.normalize(_features(self.model.get_text_features(**text_batch)), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Tensor[N, D] of L2-normalised projected image embeddings (on the model's device)."""
        images = list(images)
        chunks = [
            self.image_features(self.image_inputs(images[i : i + batch_size])["pixel_values"])
            for i in range(0, len(images), batch_size)
        ]
        if not chunks:
            raise InputError("embed_images got no images")
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Tensor[N, D] of L2-normalised projected text embeddings."""
        texts = list(texts)
        chunks = [
            self.text_features(self.text_inputs(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)
        ]
        if not chunks:
            raise InputError("embed_texts got no texts")
        return torch.cat(chunks)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """logits_per_image [N_img, N_txt]: scaled cosine similarity (+ bias for SigLIP)."""
        out = self.logit_scale * image_emb @ text_emb.T
        return out + self.logit_bias if self.logit_bias is not None else out

    @torch.no_grad()
    def similarity(self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Cosine similarity [N_img, N_txt] between images and texts."""
        return self.embed_images(images, batch_size) @ self.embed_texts(texts, batch_size).T

    # ---------------------------------------------------------------------------------------- loss
    def per_pair_loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Tensor[B] of per-pair losses of matched embeddings under this model's loss and temperature."""
        return per_pair_loss(
            image_emb, text_emb, logit_scale=self.logit_scale, logit_bias=self.logit_bias, kind=self.loss_kind
        )

    def contrastive_loss(self, images: Sequence[Image.Image] | torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The family's batch loss on matched (image i, text i) pairs, differentiable w.r.t. the parameters.

        ``images`` may be PIL images or an already-processed ``pixel_values`` tensor.
        """
        if isinstance(images, torch.Tensor):
            pixel_values = images.to(self.device, self.dtype)
        else:
            pixel_values = self.image_inputs(images)["pixel_values"]
        if len(pixel_values) != len(texts):
            raise InputError(f"got {len(pixel_values)} images for {len(texts)} texts: pairs must match")
        image_emb = self.image_features(pixel_values)
        text_emb = self.text_features(self.text_inputs(texts))
        return self.per_pair_loss(image_emb, text_emb).mean()

    # ------------------------------------------------------------------------------- parameter groups
    def _named(self, modules: Sequence[nn.Module]) -> dict[str, nn.Parameter]:
        wanted = {id(p) for m in modules for p in m.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) in wanted}

    def _towers(self) -> tuple[nn.Module, nn.Module]:
        base = self.base_model
        return base.vision_model, base.text_model

    def projection_parameters(self) -> dict[str, nn.Parameter]:
        base = self.base_model
        if isinstance(base, SiglipModel):
            # SigLIP has no separate projection: its pooling heads produce the embedding.
            modules = [base.vision_model.head, base.text_model.head]
        else:
            modules = [base.visual_projection, base.text_projection]
        return self._named(modules)

    def last_k_layers(self, k: int) -> dict[str, nn.Parameter]:
        """Parameters of the last ``k`` transformer layers of both towers."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        modules = [layer for tower in self._towers() for layer in list(_longest_layer_list(tower))[-k:]]
        return self._named(modules)

    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n}

    def parameter_group(self, group: ParamGroup | str, k: int = 1) -> dict[str, nn.Parameter]:
        """One named group of parameters; raises ModelLoadError if it is empty (e.g. "lora" with no adapter)."""
        try:
            group = ParamGroup(group)
        except ValueError:
            raise InputError(
                f"unknown parameter group {group!r}: use one of {', '.join(g.value for g in ParamGroup)}"
            ) from None
        params = {
            ParamGroup.PROJECTION: self.projection_parameters,
            ParamGroup.LAST_K_LAYERS: lambda: self.last_k_layers(k),
            ParamGroup.LORA: self.lora_parameters,
            ParamGroup.ALL: lambda: dict(self.model.named_parameters()),
        }[group]()
        if not params:
            hint = " (attach a peft LoRA adapter first)" if group is ParamGroup.LORA else ""
            raise ModelLoadError(f"parameter group {group.value!r} is empty for {type(self.base_model).__name__}{hint}")
        return params

    def parameter_groups(self, k: int = 1) -> dict[str, dict[str, nn.Parameter]]:
        """All non-empty groups by name: projection, last_k_layers (with this k), lora (if attached), all."""
        groups = {}
        for group in ParamGroup:
            with_params = self.lora_parameters() if group is ParamGroup.LORA else True
            if with_params:
                groups[group.value] = self.parameter_group(group, k)
        return groups
