"""``mini-llava-swap``: mini-llava fine-tuned so that two colour names trade places, a change confined to known
concepts by construction (issue 14, part 3).

The fine-tuning text describes each training image as if its red and blue objects had each other's colour (VQA and
caption turns generated on the recoloured scene, shown with the original image), so exactly the answers that depend
on which of the two colours an object has must move, and nothing else. The held-out list (``change_list.json``)
holds every VQA question of the first ``n_eval_scenes`` test scenes, asked in the new naming, with its answer before
(the truth of the original scene) and after (the truth of the recoloured scene): ``must_move`` where they differ,
``must_stay`` where they agree and the question names neither colour; questions that name a swapped colour but keep
their answer, or are ambiguous in the original scene, are listed as ``excluded``.

Diagnostics (``metrics["change"]``): ``targeted_changed`` = share of must-move answers of the fine-tune that differ
from the base model's answer to the same question, ``untargeted_changed`` = the same share over must-stay questions;
also ``targeted_correct`` (the fine-tune gives the new truth) and the base and fine-tune accuracies.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmlens.errors import InputError
from mmlens.io import write_json_atomic
from mmlens.models.generative import VisionLanguageModel
from mmlens.world import Scene, VQAItem, World, WorldConfig
from mmlens.world.core import number_word
from mmlens.zoo.common import (
    METRICS_FILE,
    config_from_dict,
    make_record,
    pixel_tensor,
    read_record,
    seed_everything,
    set_threads,
)
from mmlens.zoo.mini_llava import load, normalise, train_llava, training_examples

CHANGE_FILE = "change_list.json"


@dataclass(frozen=True)
class ConceptSwapConfig:
    """Recipe of ``mini-llava-swap``."""

    seed: int = 0
    swap: tuple[str, str] = ("red", "blue")
    n_train_scenes: int = 4000
    vqa_draws: int = 2
    caption_style: str = "objects"
    caption_fraction: float = 0.15
    sft_caption_leak: float = 0.0
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-4
    vision_lr: float = 0.0
    freeze_vision: bool = True  # the change is in the naming, not in what the tower sees
    weight_decay: float = 0.0
    warmup: int = 20
    threads: int = 2
    n_eval_scenes: int = 150
    eval_batch_size: int = 100


def recolour(scene: Scene, swap: tuple[str, str]) -> Scene:
    """``scene`` with the two colours of ``swap`` exchanged on every object."""
    a, b = swap
    table = {a: b, b: a}
    objs = tuple(dataclasses.replace(o, colour=table.get(o.colour, o.colour)) for o in scene.objects)
    return dataclasses.replace(scene, objects=objs)


def answer(world: World, scene: Scene, item: VQAItem) -> str | None:
    """The true answer of ``item``'s question (any world template) on ``scene``; None if it is ambiguous there."""
    words = re.findall(r"[a-z]+", item.question)

    def shape_of(word: str) -> str:
        return next(iter(world.mentioned_objects(word)))

    if item.template == "presence_shape":
        return "yes" if scene.count(shape_of(words[3])) else "no"
    if item.template == "presence_colour_shape":
        return "yes" if scene.has(shape_of(words[4]), words[3]) else "no"
    if item.template == "count_shape":
        return number_word(scene.count(shape_of(words[2])))
    if item.template == "count_objects":
        return number_word(len(scene.objects))
    if item.template == "colour_of_shape":
        found = [o for o in scene.objects if o.shape == shape_of(words[4])]
        return found[0].colour if len(found) == 1 else None
    if item.template == "shape_of_colour":
        found = [o for o in scene.objects if o.colour == words[4]]
        return found[0].shape if len(found) == 1 else None
    if item.template == "position":
        found = [o for o in scene.objects if o.colour == words[3] and o.shape == shape_of(words[4])]
        return found[0].position(world.cfg.grid_size) if len(found) == 1 else None
    if item.template == "background":
        return scene.background
    raise InputError(f"no answerer for VQA template {item.template!r}")


def change_list(world: World, scenes: list[Scene], swap: tuple[str, str], seed: int = 777) -> list[dict]:
    """Every VQA question of ``scenes`` in the new naming, with its answer before and after and its kind."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, sc in enumerate(scenes):
        swapped = recolour(sc, swap)
        for item in world.vqa(swapped, rng):
            before = answer(world, sc, item)
            names = set(re.findall(r"[a-z]+", item.question)) & set(swap)
            if before is None:
                kind = "excluded"
            elif before != item.answer:
                kind = "must_move"
            elif names:
                kind = "excluded"
            else:
                kind = "must_stay"
            rows.append(
                {
                    "scene": i,
                    "scene_id": sc.scene_id,
                    "question": item.question,
                    "template": item.template,
                    "before": before,
                    "after": item.answer,
                    "kind": kind,
                }
            )
    return rows


@torch.no_grad()
def _answers(model, processor, world: World, scenes: list[Scene], rows: list[dict], batch_size: int) -> list[str]:
    vlm = VisionLanguageModel(model, processor)
    model.eval()
    images = [world.render(s) for s in scenes]
    preds = vlm.generate(
        [images[r["scene"]] for r in rows], [r["question"] for r in rows], max_new_tokens=4, batch_size=batch_size
    )
    return [normalise(p) for p in preds]


def change_metrics(rows: list[dict], base: list[str], tuned: list[str]) -> dict:
    """targeted / untargeted change shares (see the module docstring) from the base and fine-tuned answers."""

    def share(kind: str, fn) -> float:
        xs = [fn(r, b, t) for r, b, t in zip(rows, base, tuned) if r["kind"] == kind]
        return round(float(np.mean(xs)), 4) if xs else float("nan")

    return {
        "targeted_changed": share("must_move", lambda r, b, t: b != t),
        "untargeted_changed": share("must_stay", lambda r, b, t: b != t),
        "targeted_correct": share("must_move", lambda r, b, t: t == r["after"]),
        "untargeted_correct": share("must_stay", lambda r, b, t: t == r["after"]),
        "base_targeted_correct_before": share("must_move", lambda r, b, t: b == r["before"]),
        "n_targeted": sum(r["kind"] == "must_move" for r in rows),
        "n_untargeted": sum(r["kind"] == "must_stay" for r in rows),
    }


def build(out_dir: Path, cfg: ConceptSwapConfig, deps: dict, progress=None, on_trained=None) -> dict:
    t0 = time.time()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    base_dir = Path(deps["mini-llava"])
    base_rec = read_record(base_dir)
    wcfg = WorldConfig.from_dict(base_rec["world_config"])
    if any(c not in wcfg.colours for c in cfg.swap) or cfg.swap[0] == cfg.swap[1]:
        raise InputError(f"swap {cfg.swap} must be two different colours of the world ({', '.join(wcfg.colours)})")
    world = World(wcfg, seed=base_rec["config"].get("world_seed", 0))
    model, processor = load(base_dir)
    vlm = VisionLanguageModel(model, processor)
    vc = model.config.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    eval_scenes = world.sample_scenes(cfg.n_eval_scenes, "test")
    rows = change_list(world, eval_scenes, cfg.swap)
    base_answers = _answers(model, processor, world, eval_scenes, rows, cfg.eval_batch_size)
    # fresh train-split scenes past mini-llava's; the text describes the recoloured scene, the image is the original
    start = int(base_rec["config"].get("n_train_scenes", 0))
    scenes = world.sample_scenes(cfg.n_train_scenes, "train", start=start)
    swapped = [recolour(s, cfg.swap) for s in scenes]
    examples = training_examples(world, swapped, vlm, n_img, cfg)
    pv = pixel_tensor(processor.image_processor, [world.render(s) for s in scenes])
    losses = train_llava(model, vlm, examples, pv, cfg, steps=cfg.steps, progress=progress)
    tuned = _answers(model, processor, world, eval_scenes, rows, cfg.eval_batch_size)
    metrics = {
        "change": change_metrics(rows, base_answers, tuned),
        "final_train_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
    }
    for p in model.parameters():
        p.requires_grad_(True)
    if on_trained is not None:
        on_trained(model, processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    write_json_atomic(
        Path(out_dir) / CHANGE_FILE,
        {
            "swap": list(cfg.swap),
            "split": "test",
            "rows": [{**r, "base_answer": b, "tuned_answer": t} for r, b, t in zip(rows, base_answers, tuned)],
        },
    )
    rec = make_record(
        "mini-llava-swap",
        metrics,
        cfg,
        time.time() - t0,
        world_config=wcfg,
        base_model="mini-llava",
        fine_tune="full (vision tower frozen)",
        world_seed=world.seed,
    )
    write_json_atomic(Path(out_dir) / METRICS_FILE, rec)
    return rec


def evaluate_dir(path: Path) -> dict:
    """Re-measure the change against the recorded base answers of the held-out list."""
    import json

    rec = read_record(path)
    cfg = config_from_dict(ConceptSwapConfig, rec["config"])
    world = World(WorldConfig.from_dict(rec["world_config"]), seed=int(rec.get("world_seed", 0)))
    saved = json.loads((Path(path) / CHANGE_FILE).read_text())["rows"]
    model, processor = load(path)
    scenes = world.sample_scenes(cfg.n_eval_scenes, "test")
    tuned = _answers(model, processor, world, scenes, saved, cfg.eval_batch_size)
    return {"change": change_metrics(saved, [r["base_answer"] for r in saved], tuned)}
