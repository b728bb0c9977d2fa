"""Evaluation sets from the miniature world for models the zoo trained on it (shared by the benchmarks, the audit
and the CLI's world defaults): the world comes from :func:`mmlens.zoo.world_of`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.models.distributed import DistributedWork
from mmlens.shift.generate import GenerateConfig, generate_responses
from mmlens.world import World
from mmlens.zoo import world_of


def world_eval_set(world: World, n: int = 200, seed: int = 0) -> dict[str, list[Any]]:
    """Held-out (test split) world VQA items: one question per scene, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = world.sample_scenes(n, "test")
    items = [world.vqa(s, rng) for s in scenes]
    picks = [it[int(rng.integers(len(it)))] for it in items]
    return {
        "images": [world.render(s) for s in scenes],
        "prompts": [q.question for q in picks],
        "references": [q.answer for q in picks],
        "item_ids": [s.scene_id for s in scenes],
        "answer_types": [q.answer_type for q in picks],
    }


def generate_world_splits(
    model: str = "zoo:mini-llava",
    out_dir: str | os.PathLike[str] = "shift-splits",
    n: int = 200,
    config: GenerateConfig = GenerateConfig(),
    *,
    overwrite: bool = False,
    progress: bool = True,
    work: DistributedWork | None = None,
) -> list[Path]:
    """Responses of a world-trained zoo VLM on held-out world VQA under the shift grid; accuracy = exact match of
    the normalised answer (``mmlens.zoo.mini_llava.normalise``), the judge's stand-in."""
    from mmlens.models import VisionLanguageModel, load_model
    from mmlens.zoo.mini_llava import normalise

    vlm = load_model(model, expect=VisionLanguageModel)
    data = world_eval_set(world_of(model), n=n, seed=config.seed)
    return generate_responses(
        vlm,
        data["images"],
        data["prompts"],
        data["references"],
        out_dir,
        config,
        model_id=model,
        item_ids=data["item_ids"],
        score=lambda a, r: normalise(a) == normalise(r),
        overwrite=overwrite,
        progress=progress,
        work=work,
    )


__all__ = ["generate_world_splits", "world_eval_set"]
