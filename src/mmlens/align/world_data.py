"""SFT data from the miniature world, for the benchmark and the CLI's default: the training mix of ``mini-llava``
(VQA turns and descriptions) on scenes the zoo model did not train on."""

from __future__ import annotations

import numpy as np

from mmlens.align.data import SFTExample
from mmlens.align.eval import DESCRIBE_PROMPT
from mmlens.errors import InputError

#: VQA templates kept as SFT turns: the yes/no presence questions (where object hallucination shows).
YES_NO_TEMPLATES: tuple[str, ...] = ("presence_shape", "presence_colour_shape")


def world_sft_examples(
    world,
    n_scenes: int,
    *,
    split: str = "train",
    start: int = 20000,
    seed: int = 0,
    templates: tuple[str, ...] = YES_NO_TEMPLATES,
) -> list[SFTExample]:
    """Per scene: its description (``describe the image .`` -> the objects caption) and its VQA turns of
    ``templates``. ``start`` skips the scenes the zoo trained on (indices below 20000 of the train split)."""
    if n_scenes < 1:
        raise InputError(f"n_scenes={n_scenes} must be >= 1")
    rng = np.random.default_rng(seed)
    out = []
    for scene in world.sample_scenes(n_scenes, split, start=start):
        image = world.render(scene)
        out.append(
            SFTExample(
                image, DESCRIBE_PROMPT, world.caption(scene, rng), scene.object_classes, f"{scene.scene_id}/describe"
            )
        )
        for item in world.vqa(scene, rng):
            if item.template in templates:
                out.append(
                    SFTExample(
                        image, item.question, item.answer, scene.object_classes, f"{scene.scene_id}/{item.template}"
                    )
                )
    return out


__all__ = ["YES_NO_TEMPLATES", "world_sft_examples"]
