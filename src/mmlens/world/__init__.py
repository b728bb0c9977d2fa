"""A seeded, procedural miniature multimodal world with exact ground truth, plus a real-image digits source.

>>> from mmlens.world import WorldConfig, World
>>> world = World(WorldConfig(), seed=0)
>>> scene = world.sample_scenes(1, split="train")[0]
>>> world.render(scene).size
(32, 32)
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that the command line can
# name the world's config (mmlens.world.core, no numpy) without importing the renderer, corruptions and digits.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
