"""``mini-llava-colour``: mini-llava fully fine-tuned on colour-focused captions, with intermediate checkpoints.

The fine-tuning turns are ``describe the image .`` -> a ``colour``-style caption ("two red objects and a white
object on a black background"), i.e. the same prompt mini-llava answers with an object list. Over the fine-tune the
descriptions drift from shapes to colours; ``checkpoints/step-N/`` (each a complete ``save_pretrained`` directory,
``step-0`` = mini-llava) let a concept-drift analysis follow that, and ``metrics.json`` records per checkpoint the
shape- and colour-mention rates of descriptions and the VQA accuracy retained.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmlens.io import write_json_atomic
from mmlens.models.generative import VisionLanguageModel
from mmlens.world import World, WorldConfig
from mmlens.zoo.common import (
    METRICS_FILE,
    config_from_dict,
    make_record,
    pixel_tensor,
    read_record,
    seed_everything,
    set_threads,
)
from mmlens.zoo.mini_llava import (
    CAPTION_PROMPT,
    _Examples,
    load,
    normalise,
    train_llava,
)

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class ColourFinetuneConfig:
    """Recipe of ``mini-llava-colour`` (defaults = the zoo's measured recipe)."""

    seed: int = 0
    n_train_scenes: int = 3000
    steps: int = 120
    checkpoint_every: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    vision_lr: float = 0.0  # vision tower frozen: the drift is in the language side
    freeze_vision: bool = True
    weight_decay: float = 0.0
    warmup: int = 10
    threads: int = 2
    n_eval_scenes: int = 60


def _rates(world: World, scenes, texts) -> dict:
    colours = set(world.cfg.colours)
    col = [bool(colours & set(re.findall(r"[a-z]+", t.lower()))) for t in texts]
    shp = [bool(world.mentioned_objects(t)) for t in texts]
    style = [" object" in f" {t.lower()}" and not world.mentioned_objects(t) for t in texts]
    return {
        "colour_mention_rate": round(float(np.mean(col)), 4),
        "shape_mention_rate": round(float(np.mean(shp)), 4),
        "colour_style_rate": round(float(np.mean(style)), 4),
    }


@torch.no_grad()
def evaluate_model(model, processor, cfg: ColourFinetuneConfig, world: World) -> dict:
    vlm = VisionLanguageModel(model, processor)
    model.eval()
    scenes = world.sample_scenes(cfg.n_eval_scenes, "test")
    images = [world.render(s) for s in scenes]
    caps = vlm.generate(images, [CAPTION_PROMPT] * len(scenes), max_new_tokens=24, batch_size=100)
    out = _rates(world, scenes, caps)
    rng = np.random.default_rng(777)
    items = [(i, q) for i, s in enumerate(scenes) for q in world.vqa(s, rng)]
    preds = vlm.generate(
        [images[i] for i, _ in items], [q.question for _, q in items], max_new_tokens=4, batch_size=100
    )
    by_type: dict[str, list[bool]] = {}
    for (_, q), p in zip(items, preds):
        by_type.setdefault(q.answer_type, []).append(normalise(p) == normalise(q.answer))
    key = {"yes/no": "yes_no", "number": "number", "other": "other"}
    out["vqa_acc"] = {key[t]: round(float(np.mean(v)), 4) for t, v in sorted(by_type.items())}
    out["example_description"] = caps[0]
    return out


def build(out_dir: Path, cfg: ColourFinetuneConfig, deps: dict, progress=None, on_trained=None) -> dict:
    t0 = time.time()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    base = Path(deps["mini-llava"])
    base_rec = read_record(base)
    wcfg = WorldConfig.from_dict(base_rec["world_config"])
    world = World(wcfg, seed=base_rec["config"].get("world_seed", 0))
    model, processor = load(base)
    vlm = VisionLanguageModel(model, processor)
    vc = model.config.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    # fresh training scenes (train split, past mini-llava's), colour captions
    start = int(base_rec["config"].get("n_train_scenes", 0))
    scenes = world.sample_scenes(cfg.n_train_scenes, "train", start=start)
    rng = np.random.default_rng(cfg.seed + 7)
    ex = _Examples(vlm, n_img)
    ex.add_many(
        range(len(scenes)), [CAPTION_PROMPT] * len(scenes), [world.caption(s, rng, style="colour") for s in scenes]
    )
    pv = pixel_tensor(processor.image_processor, [world.render(s) for s in scenes])
    ckpt_root = Path(out_dir) / CHECKPOINTS
    trajectory: dict[str, dict] = {}

    def checkpoint(step: int) -> None:
        d = ckpt_root / f"step-{step}"
        model.save_pretrained(d)
        processor.save_pretrained(d)
        trajectory[str(step)] = evaluate_model(model, processor, cfg, world)

    checkpoint(0)

    def on_step(step: int) -> None:
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(step)

    train_llava(model, vlm, ex, pv, cfg, steps=cfg.steps, on_step=on_step, progress=progress)
    if on_trained is not None:
        on_trained(model, processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    final = trajectory[str(cfg.steps)]
    metrics = {k: v for k, v in final.items() if k != "example_description"}
    metrics["base_colour_mention_rate"] = trajectory["0"]["colour_mention_rate"]
    metrics["base_shape_mention_rate"] = trajectory["0"]["shape_mention_rate"]
    metrics["checkpoint_steps"] = sorted(int(s) for s in trajectory)
    metrics["trajectory"] = trajectory
    rec = make_record(
        "mini-llava-colour",
        metrics,
        cfg,
        time.time() - t0,
        world_config=wcfg,
        base_model="mini-llava",
        fine_tune="full (vision tower frozen)",
    )
    write_json_atomic(Path(out_dir) / METRICS_FILE, rec)
    return rec


def checkpoint_dirs(path: Path) -> list[Path]:
    """``checkpoints/step-N`` directories of a built mini-llava-colour, by step."""
    root = Path(path) / CHECKPOINTS
    dirs = [d for d in root.glob("step-*") if d.is_dir()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


def evaluate_dir(path: Path) -> dict:
    rec = read_record(path)
    cfg = config_from_dict(ColourFinetuneConfig, rec["config"])
    world = World(WorldConfig.from_dict(rec["world_config"]), seed=0)
    model, processor = load(path)
    out = evaluate_model(model, processor, cfg, world)
    out.pop("example_description", None)
    return out
