"""Comparison arms for BDHS: rejected answers by random object substitution (POVID-like) and by noisy-image
teacher forcing (POVID's distortion: the chosen answer teacher-forced on a diffused image, per-position argmax)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mmlens.align.bdhs import flip_yes_no, same_tokens
from mmlens.align.data import PreferencePair, SFTExample, check_examples
from mmlens.errors import InputError
from mmlens.models.generative import IGNORE_INDEX, VisionLanguageModel


@dataclass(frozen=True)
class Substitutions:
    """word -> words it may be replaced with: ``objects`` first (POVID's object substitution); ``attributes``
    (colours, numbers, ...) only for answers that name no object and do not start with yes/no."""

    objects: Mapping[str, Sequence[str]]
    attributes: Mapping[str, Sequence[str]] = field(default_factory=dict)


def world_substitutions(world) -> Substitutions:
    """Shapes (singular and plural) among themselves; colours and number words among themselves."""
    from mmlens.world.core import NUMBER_WORDS, plural

    shapes = list(world.cfg.shapes)
    objects: dict[str, list[str]] = {}
    for s in shapes:
        objects[s] = [o for o in shapes if o != s]
        objects[plural(s)] = [plural(o) for o in shapes if o != s]
    attributes: dict[str, list[str]] = {}
    for group in (list(world.cfg.colours), list(NUMBER_WORDS[:6])):
        for w in group:
            attributes[w] = [o for o in group if o != w]
    return Substitutions(objects, attributes)


def substitution_pairs(
    examples: Sequence[SFTExample], substitutions: Substitutions, *, seed: int = 0
) -> list[PreferencePair]:
    """Rejected = the chosen answer with each object word replaced by a random other object (POVID's random
    substitution); answers without objects get a leading yes/no flipped, else one attribute word replaced; answers
    with none of these are skipped."""
    examples = check_examples(examples)
    rng = np.random.default_rng(seed)
    pairs = []
    for ex in examples:
        words = re.findall(r"\S+", ex.answer)
        hits = [i for i, w in enumerate(words) if w.lower() in substitutions.objects]
        if hits:
            for i in hits:
                options = substitutions.objects[words[i].lower()]
                words[i] = str(options[int(rng.integers(len(options)))])
            rejected = " ".join(words)
        elif (flipped := flip_yes_no(ex.answer)) is not None:
            rejected = flipped
        else:
            spots = [i for i, w in enumerate(words) if w.lower() in substitutions.attributes]
            if not spots:
                continue
            i = spots[int(rng.integers(len(spots)))]
            options = substitutions.attributes[words[i].lower()]
            words[i] = str(options[int(rng.integers(len(options)))])
            rejected = " ".join(words)
        pairs.append(
            PreferencePair(ex.image, ex.prompt, ex.answer, rejected, {"source": "substitution", "id": ex.example_id})
        )
    return pairs


def povid_noise_schedule(steps: int = 1000) -> torch.Tensor:
    """POVID's beta_k = sigmoid(-6 + 12 k / steps) * (5e-3 - 1e-5) + 1e-5; returns alpha-bar per step."""
    k = torch.arange(steps, dtype=torch.float64)
    betas = torch.sigmoid(-6 + 12 * k / steps) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, 0)


def noisy_image_pairs(
    vlm: VisionLanguageModel,
    examples: Sequence[SFTExample],
    *,
    noise_step: int = 500,
    seed: int = 0,
    batch_size: int = 32,
) -> list[PreferencePair]:
    """Rejected = argmax tokens of the model teacher-forced on the chosen answer with the image diffused to step
    ``noise_step`` (x~ = sqrt(a) x + sqrt(1 - a) eps on the processed pixels); pairs whose argmax is the chosen
    answer's token sequence are dropped."""
    examples = check_examples(examples)
    alpha_bar = float(povid_noise_schedule()[min(max(noise_step, 0), 999)])
    gen = torch.Generator().manual_seed(seed)
    tok = vlm.tokenizer
    pairs = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo : lo + batch_size]
        batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], answers=[e.answer for e in chunk])
        if "pixel_values" not in batch:
            raise InputError("noisy-image pairs need a model whose processor returns pixel_values")
        pv = batch["pixel_values"]
        noise = torch.randn(pv.shape, generator=gen, dtype=torch.float32).to(pv.dtype)
        batch["pixel_values"] = math.sqrt(alpha_bar) * pv + math.sqrt(1 - alpha_bar) * noise
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = vlm.forward(batch).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        target = labels[:, 1:]
        for row, ex in enumerate(chunk):
            keep = target[row] != IGNORE_INDEX
            ids = pred[row][keep].tolist()
            text = tok.decode(ids, skip_special_tokens=True).strip()
            if text and not same_tokens(tok, text, ex.answer):
                pairs.append(
                    PreferencePair(ex.image, ex.prompt, ex.answer, text, {"source": "noisy_image", "id": ex.example_id})
                )
    return pairs


__all__ = ["Substitutions", "noisy_image_pairs", "povid_noise_schedule", "substitution_pairs", "world_substitutions"]
