"""Inputs with exact ground truth from the miniature world: "what shape is the <colour> object ?" questions, whose
answer is a shape word (the token of interest), with the attributes of the referenced object for purity."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from mmlens.world import World

#: Ground-truth attributes recorded per item (keys of :attr:`ShapeItem.attributes`).
ATTRIBUTES: tuple[str, ...] = ("colour", "position", "size", "background", "n_objects")


@dataclass(frozen=True)
class ShapeItem:
    scene_index: int
    image: Image.Image
    prompt: str
    answer: str
    attributes: dict[str, str]


def shape_question_items(
    world: World, n_scenes: int, *, split: str = "test", shape: str | None = None, start: int = 0
) -> list[ShapeItem]:
    """One item per object whose colour is unique in its scene (so the question has one answer), over ``n_scenes``
    scenes of ``split``; with ``shape``, only the objects of that shape."""
    items = []
    for offset, scene in enumerate(world.sample_scenes(n_scenes, split, start=start)):
        image = None
        for obj in scene.objects:
            if scene.count_colour(obj.colour) != 1 or (shape is not None and obj.shape != shape):
                continue
            image = image or world.render(scene)
            attrs = {
                "colour": obj.colour,
                "position": obj.position(scene.grid_size),
                "size": obj.size,
                "background": scene.background,
                "n_objects": str(len(scene.objects)),
            }
            items.append(ShapeItem(start + offset, image, f"what shape is the {obj.colour} object ?", obj.shape, attrs))
    return items
