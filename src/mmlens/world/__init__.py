"""A seeded, procedural miniature multimodal world with exact ground truth, plus a real-image digits source.

>>> from mmlens.world import WorldConfig, World
>>> world = World(WorldConfig(), seed=0)
>>> scene = world.sample_scenes(1, split="train")[0]
>>> world.render(scene).size
(32, 32)
"""

from mmlens.world.core import (
    ALL_BACKGROUNDS,
    ALL_COLOURS,
    ALL_SHAPES,
    NUMBER_WORDS,
    PALETTE,
    SHAPE_SYNONYMS,
    SIZES,
    SPLITS,
    PopeProbe,
    Scene,
    VQAItem,
    WorldConfig,
    WorldObject,
)
from mmlens.world.corruptions import (
    SEVERITIES,
    CorruptedSplit,
    TextCorruption,
    VisualCorruption,
    corrupt_image,
    corrupt_text,
    corruption_grid,
)
from mmlens.world.digits import DigitPair, digit_class_prompts, digits_pairs
from mmlens.world.export import export_world, load_pairs_jsonl, to_hf_dataset
from mmlens.world.render import render_scene
from mmlens.world.world import CAPTION_STYLES, POPE_KINDS, World, pope_question

__all__ = [
    "ALL_BACKGROUNDS",
    "ALL_COLOURS",
    "ALL_SHAPES",
    "CAPTION_STYLES",
    "NUMBER_WORDS",
    "PALETTE",
    "POPE_KINDS",
    "SHAPE_SYNONYMS",
    "SIZES",
    "SPLITS",
    "PopeProbe",
    "Scene",
    "VQAItem",
    "World",
    "WorldConfig",
    "WorldObject",
    "pope_question",
    "render_scene",
    "SEVERITIES",
    "CorruptedSplit",
    "TextCorruption",
    "VisualCorruption",
    "corrupt_text",
    "corrupt_image",
    "corruption_grid",
    "export_world",
    "load_pairs_jsonl",
    "to_hf_dataset",
    "DigitPair",
    "digit_class_prompts",
    "digits_pairs",
]
