"""Shared plumbing of the zoo: paths, atomic model directories, seeding, metrics records, CLIP training."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlens.errors import ModelLoadError

METRICS_FILE = "metrics.json"


def mmlens_home() -> Path:
    """``$MMLENS_HOME`` if set, else ``~/.cache/mmlens``."""
    env = os.environ.get("MMLENS_HOME")
    return Path(env).expanduser() if env else Path("~/.cache/mmlens").expanduser()


def zoo_dir() -> Path:
    """Where built zoo models live: ``mmlens_home() / "zoo"``."""
    return mmlens_home() / "zoo"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
    torch.set_flush_denormal(True)  # tiny models on CPU: denormals can slow steps down by orders of magnitude


def load_pretrained(path: Path, model_class: Any, processor_class: Any) -> tuple[Any, Any]:
    """A built zoo model and its processor from their ``save_pretrained`` folder, in eval mode."""
    model = model_class.from_pretrained(path)
    model.eval()
    return model, processor_class.from_pretrained(path)


def read_record(model_dir: Path) -> dict:
    path = Path(model_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"zoo model at {model_dir} is not built (no {METRICS_FILE}); run `mmlens zoo build`"
        ) from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is corrupt ({e}); rebuild it with `mmlens zoo build --force`") from None


def _as_dict(value: Any) -> Any:
    """A dataclass instance as its ``asdict`` form; anything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def make_record(name: str, metrics: dict, config: Any, seconds: float, world_config: Any = None, **extra: Any) -> dict:
    import transformers

    rec = {
        "model": name,
        "metrics": metrics,
        "seconds": round(float(seconds), 2),
        "config": _as_dict(config),
        "world_config": _as_dict(world_config),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    rec.update(extra)
    return rec


def config_from_dict(cls: type, d: dict) -> Any:
    """Rebuild a (possibly frozen) dataclass from its ``asdict`` form, turning lists back into tuples."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in fields:
            continue
        kwargs[k] = _tuplify(v)
    return cls(**kwargs)


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def cosine_lr(step: int, total: int, warmup: int, base: float, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    p = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(1.0, p))))


def train_clip(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    sample_texts: Callable[[np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    sample_batch: Callable[[np.random.Generator], np.ndarray] | None = None,
) -> list[float]:
    """Contrastive training of a ``CLIPModel``.

    ``sample_texts(indices, rng)`` returns ``(input_ids, attention_mask, groups)`` for the images at ``indices``:
    one caption per image, and a group id per image. Images of the same group count as positives of each other's
    captions (soft targets spread over the group), so duplicated captions in a batch are not punished as negatives.
    """
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = pixel_values.shape[0]
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, warmup, lr)
        if sample_batch is not None:
            idx = sample_batch(rng)
        else:
            idx = rng.choice(n, size=min(batch_size, n), replace=False)
        ids, mask, groups = sample_texts(idx, rng)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values[idx])
        logits = out.logits_per_image
        same = torch.as_tensor(groups[:, None] == groups[None, :], dtype=logits.dtype)
        tgt = same / same.sum(1, keepdim=True)
        loss = -(tgt * logits.log_softmax(1)).sum(1).mean() - (tgt * logits.t().log_softmax(1)).sum(1).mean()
        loss = loss / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, float(loss))
    model.eval()
    return losses


@torch.no_grad()
def clip_embed_images(model: torch.nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    outs = []
    for i in range(0, pixel_values.shape[0], batch_size):
        o = model.get_image_features(pixel_values=pixel_values[i : i + batch_size])
        o = getattr(o, "pooler_output", o)
        outs.append(torch.nn.functional.normalize(o, dim=-1))
    return torch.cat(outs)


@torch.no_grad()
def clip_embed_texts(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    outs = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), padding=True, return_tensors="pt")
        o = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        o = getattr(o, "pooler_output", o)
        outs.append(torch.nn.functional.normalize(o, dim=-1))
    return torch.cat(outs)


def pixel_tensor(image_processor: Any, images: Sequence[Any], batch_size: int = 512) -> torch.Tensor:
    """Run the (PIL) image processor once over ``images`` and stack the pixel values."""
    chunks = []
    for i in range(0, len(images), batch_size):
        chunks.append(image_processor(images=list(images[i : i + batch_size]), return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)
