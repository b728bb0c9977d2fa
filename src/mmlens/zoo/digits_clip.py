"""``digits-clip``: a CLIP trained from scratch on sklearn's handwritten digits with caption templates.

Zero-shot evaluation: classify each held-out digit (the stratified 25 % test split of
:func:`mmlens.world.digits.digits_pairs`) by the nearest of the ten class prompts ``"a photo of the digit {d}"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from mmlens.io import write_json_atomic
from mmlens.models.tokenizers import make_image_processor, train_word_tokenizer
from mmlens.world.digits import digit_class_prompts, digits_pairs, digits_vocabulary
from mmlens.zoo.common import (
    METRICS_FILE,
    clip_embed_images,
    clip_embed_texts,
    config_from_dict,
    load_pretrained,
    make_record,
    pixel_tensor,
    read_record,
    seed_everything,
    set_threads,
    train_clip,
)


@dataclass(frozen=True)
class DigitsClipConfig:
    """Recipe of ``digits-clip`` (defaults = the zoo's measured recipe)."""

    seed: int = 0
    split_seed: int = 0
    image_size: int = 16
    patch_size: int = 4
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    max_text_len: int = 16
    caption_draws: int = 8  # captions per training image (different templates)
    n_train: int | None = None  # None: the whole train split (1347 images)
    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 40
    threads: int = 2


def make_model(cfg: DigitsClipConfig, tok) -> CLIPModel:
    common = dict(
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
    )
    text = dict(
        vocab_size=len(tok),
        max_position_embeddings=cfg.max_text_len,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **common,
    )
    vision = dict(image_size=cfg.image_size, patch_size=cfg.patch_size, **common)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))


def evaluate_model(model: CLIPModel, processor, cfg: DigitsClipConfig) -> dict:
    test = digits_pairs("test", seed=0, image_size=cfg.image_size, split_seed=cfg.split_seed)
    pv = pixel_tensor(processor.image_processor, [p.image for p in test])
    labels = np.array([p.label for p in test])
    model.eval()
    img = clip_embed_images(model, pv)
    txt = clip_embed_texts(model, processor.tokenizer, digit_class_prompts())
    pred = (img @ txt.T).argmax(1).numpy()
    return {
        "zero_shot_acc": round(float((pred == labels).mean()), 4),
        "n_test": int(len(labels)),
        "class_prompt": "a photo of the digit {d}",
    }


def build(out_dir: Path, cfg: DigitsClipConfig, progress=None, on_trained=None) -> dict:
    t0 = time.time()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    tok = train_word_tokenizer(
        [" ".join(digits_vocabulary())], extra_special_tokens=(), chat_template=None, add_bos_eos=True
    )
    tok.padding_side = "right"  # CLIP's text tower uses absolute positions from 0 and pools at </s>
    processor = CLIPProcessor(image_processor=make_image_processor(cfg.image_size), tokenizer=tok)
    draws = [
        digits_pairs(
            "train", seed=cfg.seed * 1000 + k, image_size=cfg.image_size, n=cfg.n_train, split_seed=cfg.split_seed
        )
        for k in range(cfg.caption_draws)
    ]
    base = draws[0]
    pv = pixel_tensor(processor.image_processor, [p.image for p in base])
    labels = np.array([p.label for p in base])
    caps = [[d[i].caption for d in draws] for i in range(len(base))]
    enc = tok(
        [c for cs in caps for c in cs],
        padding="max_length",
        max_length=cfg.max_text_len,
        truncation=True,
        return_tensors="pt",
    )
    ids_all = enc["input_ids"].view(len(base), cfg.caption_draws, -1)
    mask_all = enc["attention_mask"].view(len(base), cfg.caption_draws, -1)

    def sample_texts(idx, r):
        j = r.integers(cfg.caption_draws, size=len(idx))
        ids, mask = ids_all[idx, j], mask_all[idx, j]
        L = int(mask.sum(1).max())
        return ids[:, :L], mask[:, :L], labels[idx]  # group = digit class: same class = positive

    model = make_model(cfg, tok)
    losses = train_clip(
        model,
        pv,
        sample_texts,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        seed=cfg.seed,
        progress=progress,
    )
    train_seconds = time.time() - t0
    metrics = evaluate_model(model, processor, cfg)
    metrics["final_train_loss"] = round(float(np.mean(losses[-20:])), 4) if losses else None
    if on_trained is not None:
        on_trained(model, processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    rec = make_record(
        "digits-clip",
        metrics,
        cfg,
        time.time() - t0,
        world_config=None,
        train_seconds=round(train_seconds, 2),
        n_train=len(base),
        n_parameters=sum(p.numel() for p in model.parameters()),
    )
    write_json_atomic(Path(out_dir) / METRICS_FILE, rec)
    return rec


def load(path: Path):
    return load_pretrained(path, CLIPModel, CLIPProcessor)


def evaluate_dir(path: Path) -> dict:
    rec = read_record(path)
    cfg = config_from_dict(DigitsClipConfig, rec["config"])
    model, processor = load(path)
    with torch.no_grad():
        return evaluate_model(model, processor, cfg)
