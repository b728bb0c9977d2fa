"""Type stub of the lazy front door of ``mmlens.world``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .core import ALL_BACKGROUNDS as ALL_BACKGROUNDS
from .core import ALL_COLOURS as ALL_COLOURS
from .core import ALL_SHAPES as ALL_SHAPES
from .core import NUMBER_WORDS as NUMBER_WORDS
from .core import PALETTE as PALETTE
from .core import SHAPE_SYNONYMS as SHAPE_SYNONYMS
from .core import SIZES as SIZES
from .core import SPLITS as SPLITS
from .core import PopeProbe as PopeProbe
from .core import Scene as Scene
from .core import VQAItem as VQAItem
from .core import WorldConfig as WorldConfig
from .core import WorldObject as WorldObject
from .corruptions import SEVERITIES as SEVERITIES
from .corruptions import CorruptedSplit as CorruptedSplit
from .corruptions import TextCorruption as TextCorruption
from .corruptions import VisualCorruption as VisualCorruption
from .corruptions import corrupt_image as corrupt_image
from .corruptions import corrupt_text as corrupt_text
from .corruptions import corruption_grid as corruption_grid
from .digits import DigitPair as DigitPair
from .digits import digit_class_prompts as digit_class_prompts
from .digits import digits_pairs as digits_pairs
from .export import export_world as export_world
from .export import load_pairs_jsonl as load_pairs_jsonl
from .export import to_hf_dataset as to_hf_dataset
from .render import render_scene as render_scene
from .world import CAPTION_STYLES as CAPTION_STYLES
from .world import POPE_KINDS as POPE_KINDS
from .world import World as World
from .world import pope_question as pope_question
