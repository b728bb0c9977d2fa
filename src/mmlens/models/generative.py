"""Adapters over generative models: LLaVA-style vision-language models and text-only causal LMs.

Every analysis talks to one interface: ``prepare`` (a batched, left-padded ``BatchFeature``; with answers, a
training batch whose ``labels`` cover only the answer tokens), ``forward``, ``generate`` (new text only), and
handles on the language model (``decoder_layers``, ``final_norm``, ``lm_head``, ``image_token_mask``).
Per-family differences (prompt format, how images are grouped, which config field holds the image token) live
in one :class:`FamilySpec` table, :data:`VLM_FAMILIES`.
"""

from __future__ import annotations

import contextlib
import enum
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
from PIL import Image
from torch import nn
from transformers import (
    BatchFeature,
    Idefics3ForConditionalGeneration,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    PaliGemmaForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from mmlens.errors import InputError, ModelLoadError
from mmlens.models.base import ModelAdapter, unwrap_peft
from mmlens.progress import progress_bar

IGNORE_INDEX = -100

ImageInput: TypeAlias = Image.Image | Sequence[Image.Image]


class PromptStyle(enum.Enum):
    """How a family turns (images, prompt) into text for its processor."""

    CHAT = "chat"  # the processor's chat template, images as {"type": "image"} content items
    PREFIX = "prefix"  # PaliGemma: "<image>" * k + prompt; the processor adds <bos> and "\n"; answers are `suffix`


@dataclass(frozen=True)
class FamilySpec:
    """What differs between vision-language families, in one place."""

    name: str
    model_class: type[PreTrainedModel]
    prompt_style: PromptStyle = PromptStyle.CHAT
    # Idefics3 / PaliGemma processors want images grouped per sample ([[img], [img]]); the others a flat list.
    nested_images: bool = False
    # PaliGemma calls it image_token_index; the rest image_token_id.
    image_token_config_key: str = "image_token_id"


VLM_FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("llava", LlavaForConditionalGeneration),
    FamilySpec("llava-next", LlavaNextForConditionalGeneration),
    FamilySpec("qwen2-vl", Qwen2VLForConditionalGeneration),
    FamilySpec("qwen2.5-vl", Qwen2_5_VLForConditionalGeneration),
    FamilySpec("idefics3", Idefics3ForConditionalGeneration, nested_images=True),
    FamilySpec(
        "paligemma",
        PaliGemmaForConditionalGeneration,
        prompt_style=PromptStyle.PREFIX,
        nested_images=True,
        image_token_config_key="image_token_index",
    ),
)


def family_for(model: nn.Module) -> FamilySpec:
    """The :class:`FamilySpec` of a vision-language model (subclasses match their parent family)."""
    for spec in VLM_FAMILIES:
        if isinstance(model, spec.model_class):
            return spec
    names = ", ".join(s.model_class.__name__ for s in VLM_FAMILIES)
    raise ModelLoadError(f"{type(model).__name__} is not a supported vision-language model: use one of {names}")


@contextlib.contextmanager
def _explain_image_token_errors() -> Iterator[None]:
    # transformers reports a placeholder/feature mismatch with an internal message; say what the user can do.
    try:
        yield
    except (ValueError, RuntimeError, IndexError) as err:
        text = str(err)
        if "image tokens do not match" in text.lower() or "image features and image tokens" in text.lower():
            raise InputError(
                "the processor's image-token count does not match what the model consumes "
                f"({text.strip().splitlines()[0]}): use the processor saved with this checkpoint"
            ) from err
        raise


class _GenerativeBase(ModelAdapter):
    """Shared machinery of :class:`VisionLanguageModel` and :class:`CausalLanguageModel`."""

    model: PreTrainedModel

    def __init__(self, model: PreTrainedModel, processor: Any) -> None:
        self.model = model
        self.processor = processor
        tok = self.tokenizer
        # Left padding so that every row's last position is the next-token position during generation.
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

    # ----------------------------------------------------------------------------------------- basics
    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def save_pretrained(self, path: str | Path) -> None:
        """Save model and processor so that :func:`mmlens.models.load_model` (path) restores this adapter."""
        unwrap_peft(self.model).save_pretrained(path)
        self.processor.save_pretrained(path)

    def to_device(self, batch: BatchFeature) -> BatchFeature:
        """Move a batch to the model's device, and floating tensors (pixel values) to the model's dtype."""
        batch = batch.to(self.device)
        if self.dtype != torch.float32:
            batch = batch.to(self.dtype)  # BatchFeature.to(dtype) casts only floating-point tensors
        return batch

    def forward(self, batch: BatchFeature, **kwargs):
        """Run the model on a prepared batch (moved to the model's device)."""
        with _explain_image_token_errors():
            return self.model(**self.to_device(batch), **kwargs)

    __call__ = forward

    # ---------------------------------------------------------------------------------------- handles
    @property
    def language_model(self) -> nn.Module:
        """The decoder-only transformer body (embeddings, layers, final norm) of the language model."""
        base = unwrap_peft(self.model)
        inner = getattr(base, "model", base)
        for name in ("language_model", "text_model"):
            if isinstance(getattr(inner, name, None), nn.Module):
                return getattr(inner, name)
        if isinstance(getattr(inner, "layers", None), nn.ModuleList):
            return inner
        raise ModelLoadError(f"cannot find the language model inside {type(base).__name__}")

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def lm_head(self) -> nn.Module:
        return unwrap_peft(self.model).get_output_embeddings()

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    # --------------------------------------------------------------------------------------- batching
    def _add_special_tokens(self, texts: list[str]) -> bool:
        bos = self.tokenizer.bos_token
        # Chat templates that already start with <bos> must not get a second one (what transformers does too).
        return not (bos is not None and texts and all(t.startswith(bos) for t in texts))

    def _encode(self, texts: list[str], images: list | None, suffix: list[str] | None = None) -> BatchFeature:
        kwargs: dict[str, Any] = dict(text=texts, return_tensors="pt", padding=True)
        kwargs["add_special_tokens"] = self._add_special_tokens(texts)
        if images is not None:
            kwargs["images"] = images
        if suffix is not None:
            kwargs["suffix"] = suffix
        with _explain_image_token_errors():
            return self.processor(**kwargs)

    @staticmethod
    def _mask_labels(full: BatchFeature, prefix: BatchFeature) -> torch.Tensor:
        """Labels = input_ids on answer tokens, -100 elsewhere (left padding: the answer is each row's tail).

        The answer length is (tokens of prompt+answer) - (tokens of prompt with generation prompt).
        """
        ids, prefix_ids = full["input_ids"], prefix["input_ids"]
        lengths, prefix_lengths = full["attention_mask"].sum(1), prefix["attention_mask"].sum(1)
        answer_len = lengths - prefix_lengths
        if (answer_len <= 0).any():
            raise InputError("an answer tokenized to zero tokens: answers must be non-empty text")
        for row in range(len(ids)):
            start, n = ids.shape[1] - int(lengths[row]), int(prefix_lengths[row])
            if not torch.equal(ids[row, start : start + n], prefix_ids[row, prefix_ids.shape[1] - n :]):
                # A tokenizer merged text across the prompt/answer boundary: labels may be off by a token.
                warnings.warn(
                    "the prompt tokens of a training example are not a prefix of prompt+answer tokens; "
                    "labels at the answer boundary may be shifted",
                    stacklevel=3,
                )
                break
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        is_answer = positions >= (ids.shape[1] - answer_len).unsqueeze(1)
        return torch.where(is_answer, ids, torch.full_like(ids, IGNORE_INDEX))

    def _generate_batches(
        self, n: int, batch_size: int, make_batch, max_new_tokens: int, do_sample: bool, gen_kwargs: dict
    ) -> list[str]:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        tok = self.tokenizer
        out: list[str] = []
        starts = range(0, n, batch_size)
        for start in progress_bar(starts, desc="generate", enabled=math.ceil(n / batch_size) > 1):
            batch = self.to_device(make_batch(start, min(start + batch_size, n)))
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
            if not do_sample:
                # Silence "temperature/top_p set but do_sample=False" from checkpoints' generation configs.
                kwargs.update(temperature=None, top_p=None, top_k=None)
            kwargs.update(gen_kwargs)
            with torch.no_grad(), _explain_image_token_errors():
                generated = self.model.generate(**batch, **kwargs)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            out.extend(t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True))
        return out


class VisionLanguageModel(_GenerativeBase):
    """A LLaVA-style vision-language model with its processor.

    ``images`` arguments take one entry per prompt: a PIL image, a sequence of PIL images, or ``None`` for a
    text-only prompt (not for PaliGemma). ``images=None`` means all prompts are text-only.
    """

    def __init__(self, model: PreTrainedModel, processor: Any) -> None:
        self.family = family_for(unwrap_peft(model))
        super().__init__(model, processor)

    @property
    def image_token_id(self) -> int:
        return int(getattr(self.config, self.family.image_token_config_key))

    def _add_special_tokens(self, texts: list[str]) -> bool:
        # PaliGemma's processor inserts <bos> after the image tokens and <eos> after a suffix itself.
        return self.family.prompt_style is not PromptStyle.PREFIX and super()._add_special_tokens(texts)

    def image_token_mask(self, batch: BatchFeature) -> torch.Tensor:
        """BoolTensor[B, T]: positions of image placeholder tokens (the ones replaced by image features)."""
        return batch["input_ids"] == self.image_token_id

    # ------------------------------------------------------------------------------------- prompting
    def _per_sample_images(self, images: Sequence[ImageInput | None] | None, n: int) -> list[list[Image.Image]]:
        if images is None:
            return [[] for _ in range(n)]
        if isinstance(images, Image.Image):
            raise InputError("images must be a sequence with one entry per prompt, not a single image")
        if len(images) != n:
            raise InputError(f"got {len(images)} images for {n} prompts: pass one image (or list, or None) per prompt")
        per_sample = []
        for entry in images:
            group: list[Any] = [] if entry is None else [entry] if isinstance(entry, Image.Image) else list(entry)
            if not all(isinstance(im, Image.Image) for im in group):
                raise InputError("images must be PIL images (load files with PIL.Image.open(path).convert('RGB'))")
            per_sample.append(group)
        return per_sample

    def chat_text(self, n_images: int, prompt: str, answer: str | None) -> str:
        """One turn in the model's chat template: ``n_images`` image placeholders, the prompt, and the answer if
        given (training text) or the generation prompt if not."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        messages: list[dict] = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=answer is None, tokenize=False)

    def _texts(
        self, per_sample: list[list[Image.Image]], prompts: Sequence[str], answers: Sequence[str] | None
    ) -> list[str]:
        if self.family.prompt_style is PromptStyle.PREFIX:
            image_token = self.processor.image_token
            return [image_token * len(g) + p for g, p in zip(per_sample, prompts)]
        answers_or_none = answers if answers is not None else [None] * len(prompts)
        return [self.chat_text(len(g), p, a) for g, p, a in zip(per_sample, prompts, answers_or_none)]

    def _processor_images(self, per_sample: list[list[Image.Image]]) -> list | None:
        if self.family.prompt_style is PromptStyle.PREFIX and not all(per_sample):
            raise InputError(f"{self.family.name} needs an image for every prompt")
        if not any(per_sample):
            return None
        if self.family.nested_images:
            return per_sample
        return [im for group in per_sample for im in group]

    def prepare(
        self, images: Sequence[ImageInput | None] | None, prompts: Sequence[str], answers: Sequence[str] | None = None
    ) -> BatchFeature:
        """A left-padded batch for ``generate``/``forward``; with ``answers``, a training batch with ``labels``."""
        prompts = list(prompts)
        if not prompts:
            raise InputError("prepare needs at least one prompt")
        if answers is not None and len(answers) != len(prompts):
            raise InputError(f"got {len(answers)} answers for {len(prompts)} prompts")
        per_sample = self._per_sample_images(images, len(prompts))
        proc_images = self._processor_images(per_sample)
        if self.family.prompt_style is PromptStyle.PREFIX:
            texts = self._texts(per_sample, prompts, None)
            if answers is None:
                batch = self._encode(texts, proc_images)
                batch.pop("labels", None)  # the processor adds all-ignored labels whenever it returns token types
                return batch
            # PaliGemma's processor appends answer + <eos> as `suffix` and sets token_type_ids / labels itself;
            # we recompute labels the same way as for chat models so padding is always ignored.
            full = self._encode(texts, proc_images, suffix=list(answers))
            prefix = self._encode(texts, proc_images)
            full["labels"] = self._mask_labels(full, prefix)
            return full
        prefix = self._encode(self._texts(per_sample, prompts, None), proc_images)
        if answers is None:
            return prefix
        full = self._encode(self._texts(per_sample, prompts, answers), proc_images)
        full["labels"] = self._mask_labels(full, prefix)
        return full

    def generate(
        self,
        images: Sequence[ImageInput | None] | None,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        do_sample: bool = False,
        **gen_kwargs,
    ) -> list[str]:
        """Generate an answer per prompt; returns only the new text, special tokens stripped."""
        prompts = list(prompts)
        per_sample = self._per_sample_images(images, len(prompts))  # validate once, before any batch runs

        def make_batch(lo: int, hi: int) -> BatchFeature:
            return self.prepare(per_sample[lo:hi], prompts[lo:hi])

        return self._generate_batches(len(prompts), batch_size, make_batch, max_new_tokens, do_sample, gen_kwargs)


class CausalLanguageModel(_GenerativeBase):
    """A text-only causal LM (Llama, SmolLM2, Qwen2, ...) with the same interface minus images."""

    def image_token_mask(self, batch: BatchFeature) -> torch.Tensor:
        """All False: a text-only model has no image tokens."""
        return torch.zeros_like(batch["input_ids"], dtype=torch.bool)

    @property
    def image_token_id(self) -> None:
        return None

    def _texts(self, prompts: Sequence[str], answers: Sequence[str] | None) -> list[str]:
        tok = self.tokenizer
        answers_or_none = answers if answers is not None else [None] * len(prompts)
        if tok.chat_template is None:
            # No template: plain continuation, the answer closed by <eos>.
            return [p if a is None else f"{p} {a}{tok.eos_token}" for p, a in zip(prompts, answers_or_none)]
        texts = []
        for p, a in zip(prompts, answers_or_none):
            messages = [{"role": "user", "content": p}]
            if a is not None:
                messages.append({"role": "assistant", "content": a})
            texts.append(tok.apply_chat_template(messages, add_generation_prompt=a is None, tokenize=False))
        return texts

    def prepare(self, prompts: Sequence[str], answers: Sequence[str] | None = None) -> BatchFeature:
        """A left-padded batch for ``generate``/``forward``; with ``answers``, a training batch with ``labels``."""
        prompts = list(prompts)
        if not prompts:
            raise InputError("prepare needs at least one prompt")
        if answers is not None and len(answers) != len(prompts):
            raise InputError(f"got {len(answers)} answers for {len(prompts)} prompts")
        prefix = BatchFeature(dict(self._encode(self._texts(prompts, None), None)))
        if answers is None:
            return prefix
        full = BatchFeature(dict(self._encode(self._texts(prompts, answers), None)))
        full["labels"] = self._mask_labels(full, prefix)
        return full

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        do_sample: bool = False,
        **gen_kwargs,
    ) -> list[str]:
        """Generate a continuation per prompt; returns only the new text, special tokens stripped."""
        prompts = list(prompts)

        def make_batch(lo: int, hi: int) -> BatchFeature:
            return self.prepare(prompts[lo:hi])

        return self._generate_batches(len(prompts), batch_size, make_batch, max_new_tokens, do_sample, gen_kwargs)
