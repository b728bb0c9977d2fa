"""Configuration, closed vocabulary and the immutable scene records of the miniature world.

Everything here is plain data: a :class:`WorldConfig` says what the world may contain, a :class:`Scene` says what
one image does contain. Both are frozen so that a scene handed to a model, a probe generator and a metric cannot
drift apart; the ground truth is the scene itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from mmlens.errors import InputError

# --- closed vocabulary -------------------------------------------------------------------------------------------
# Shapes were chosen to stay distinguishable at ~8-14 px after anti-aliasing: filled round (circle) vs hollow round
# (ring), filled square vs square rotated 45 degrees (diamond), a plus (cross), a triangle and a five-point star.
ALL_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
SHAPE_PLURALS: Mapping[str, str] = MappingProxyType(
    {
        "circle": "circles",
        "square": "squares",
        "triangle": "triangles",
        "diamond": "diamonds",
        "cross": "crosses",
        "ring": "rings",
        "star": "stars",
    }
)
# Saturated, mutually distant RGB values, all far from both backgrounds, so colour is recoverable from a few pixels.
PALETTE: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 180, 60),
        "blue": (50, 90, 235),
        "yellow": (240, 220, 40),
        "purple": (160, 60, 210),
        "white": (245, 245, 245),
        "orange": (245, 140, 20),
        "cyan": (40, 210, 220),
        # backgrounds
        "black": (15, 15, 15),
        "gray": (105, 105, 105),
    }
)
ALL_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white", "orange", "cyan")
ALL_BACKGROUNDS: tuple[str, ...] = ("black", "gray")
SIZES: tuple[str, ...] = ("small", "large")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Synonyms a text may use for a shape (for parsing generated text, CHAIR, and synonym text shifts).
SHAPE_SYNONYMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "circle": ("disc", "disk", "dot", "ball"),
        "square": ("box", "block"),
        "triangle": ("pyramid", "wedge"),
        "diamond": ("rhombus", "lozenge"),
        "cross": ("plus",),
        "ring": ("donut", "hoop", "loop"),
        "star": ("pentagram", "asterisk"),
    }
)
# Irregular plurals of the synonyms (the rest take an "s").
_IRREGULAR_PLURALS: Mapping[str, str] = MappingProxyType(
    {"box": "boxes", "plus": "pluses", "cross": "crosses", "rhombus": "rhombuses"}
)


def plural(word: str) -> str:
    """English plural of a shape word or synonym."""
    if word in SHAPE_PLURALS:
        return SHAPE_PLURALS[word]
    return _IRREGULAR_PLURALS.get(word, word + "s")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def position_name(row: int, col: int, grid_size: int) -> str:
    """Human name of a grid cell: 'top left' in a 2x2 grid, 'center' / 'middle left' / 'top center' in 3x3."""
    if grid_size == 1:
        return "center"
    rows = ("top", "bottom") if grid_size == 2 else ("top", "middle", "bottom")
    cols = ("left", "right") if grid_size == 2 else ("left", "center", "right")
    name = f"{rows[row]} {cols[col]}"
    return "center" if name == "middle center" else name


@dataclass(frozen=True)
class WorldConfig:
    """What the world may contain and how it is drawn.

    Defaults suit a tiny ViT trained on 2 CPU cores in minutes: 32x32 RGB images (e.g. 64 patches of 4x4 or 16 of
    8x8) with a 2x2 grid, so each object gets a 16x16 cell (small ~8 px, large ~13 px wide) and objects never overlap.
    7 shapes x 6 colours x 2 sizes x 4 cells x 2 backgrounds, 1-4 objects per scene.

    ``bias_pairs`` are (anchor, partner) classes: whenever the anchor is in a scene, the partner is also there with
    probability ``bias_strength`` exactly (and absent otherwise), so a model can learn the prior "anchor implies
    partner" and hallucinate the partner. ``caption_leak`` is the probability that a caption mentions the partner of
    a present anchor although the partner is absent (noisy human captions).
    """

    image_size: int = 32
    grid_size: int = 2
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
    backgrounds: tuple[str, ...] = ("black", "gray")
    min_objects: int = 1
    max_objects: int = 4
    bias_pairs: tuple[tuple[str, str], ...] = (("triangle", "star"),)
    bias_strength: float = 0.75
    caption_leak: float = 0.0
    small_fraction: float = 0.5  # object width / cell width for "small"
    large_fraction: float = 0.82  # object width / cell width for "large"
    jitter: float = 0.8  # fraction of the free margin in a cell used for random placement (realism)
    supersample: int = 4  # draw at k x resolution then box-downscale: exact area anti-aliasing
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # share of scene content space per split
    # Weak visual evidence: a fixed share (`faint_fraction`, chosen by a hash of the object's content, so the same
    # scene always renders the same) of the objects of class `faint_shapes` is drawn at `faint_alpha` contrast
    # against the background; with `faint_beside_anchor`, only those in a scene that holds their bias anchor (a
    # partner half hidden beside its anchor). Real VLMs hallucinate where the eye is unsure; this decides where.
    faint_shapes: tuple[str, ...] = ()
    faint_fraction: float = 0.0
    faint_alpha: float = 0.3
    faint_beside_anchor: bool = False

    def __post_init__(self) -> None:
        def bad(msg: str) -> InputError:
            return InputError(f"invalid WorldConfig: {msg}")

        if not 8 <= self.image_size <= 1024:
            raise bad(f"image_size={self.image_size} must be in 8..1024")
        if self.grid_size not in (1, 2, 3):
            raise bad(f"grid_size={self.grid_size} must be 1, 2 or 3")
        for name, values, allowed in (
            ("shapes", self.shapes, ALL_SHAPES),
            ("colours", self.colours, ALL_COLOURS),
            ("backgrounds", self.backgrounds, ALL_BACKGROUNDS),
        ):
            if not values or len(set(values)) != len(values) or any(v not in allowed for v in values):
                raise bad(f"{name}={values!r} must be distinct, non-empty, from {allowed}")
        if len(self.shapes) < 2:
            raise bad("need at least 2 shapes")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid_size**2:
            raise bad(f"need 1 <= min_objects <= max_objects <= grid cells ({self.grid_size**2})")
        if self.max_objects >= len(NUMBER_WORDS):
            raise bad("max_objects must be < 10")
        seen: set[str] = set()
        for pair in self.bias_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(c not in self.shapes for c in pair):
                raise bad(f"bias pair {pair!r} must be two different classes from shapes")
            if seen & set(pair):
                raise bad("bias pairs must not share classes")
            seen |= set(pair)
        if self.bias_pairs and len(set(self.shapes) - seen) < 1:
            raise bad("at least one shape must be outside every bias pair")
        if self.bias_pairs and self.max_objects < 2:
            raise bad("bias pairs need max_objects >= 2")
        if any(c not in self.shapes for c in self.faint_shapes):
            raise bad(f"faint_shapes={self.faint_shapes!r} must be classes from shapes")
        for name in ("bias_strength", "caption_leak", "jitter", "faint_fraction", "faint_alpha"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(f"{name}={v} must be in [0, 1]")
        if not 0.1 <= self.small_fraction <= self.large_fraction <= 1.0:
            raise bad("need 0.1 <= small_fraction <= large_fraction <= 1")
        if self.supersample < 1:
            raise bad("supersample must be >= 1")
        if len(self.split_fractions) != 3 or any(f <= 0 for f in self.split_fractions):
            raise bad("split_fractions must be three positive numbers (train, val, test)")

    @property
    def partner_of(self) -> dict[str, str]:
        """anchor -> partner."""
        return {a: p for a, p in self.bias_pairs}

    @property
    def positions(self) -> tuple[str, ...]:
        g = self.grid_size
        return tuple(position_name(r, c, g) for r in range(g) for c in range(g))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorldConfig:
        kw = dict(d)
        for k in ("shapes", "colours", "backgrounds", "split_fractions", "faint_shapes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "bias_pairs" in kw:
            kw["bias_pairs"] = tuple(tuple(p) for p in kw["bias_pairs"])
        return cls(**kw)


@dataclass(frozen=True)
class WorldObject:
    """One object: its class is its shape. (dx, dy) in [-1, 1] place it inside the free margin of its cell."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def cls(self) -> str:
        return self.shape

    def position(self, grid_size: int) -> str:
        return position_name(self.row, self.col, grid_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "dx": self.dx,
            "dy": self.dy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorldObject:
        return cls(
            shape=d["shape"],
            colour=d["colour"],
            size=d["size"],
            row=int(d["row"]),
            col=int(d["col"]),
            dx=float(d.get("dx", 0.0)),
            dy=float(d.get("dy", 0.0)),
        )


@dataclass(frozen=True)
class Scene:
    """The exact ground truth of one image."""

    scene_id: str
    objects: tuple[WorldObject, ...]
    background: str
    grid_size: int = 2
    split: str = ""

    @property
    def object_classes(self) -> frozenset[str]:
        return frozenset(o.shape for o in self.objects)

    @property
    def colours(self) -> frozenset[str]:
        return frozenset(o.colour for o in self.objects)

    def count(self, cls: str) -> int:
        return sum(o.shape == cls for o in self.objects)

    def count_colour(self, colour: str) -> int:
        return sum(o.colour == colour for o in self.objects)

    def has(self, shape: str, colour: str | None = None) -> bool:
        return any(o.shape == shape and (colour is None or o.colour == colour) for o in self.objects)

    def object_at(self, row: int, col: int) -> WorldObject | None:
        for o in self.objects:
            if (o.row, o.col) == (row, col):
                return o
        return None

    def signature(self) -> str:
        """Discrete content (no jitter), used to keep train/val/test content-disjoint."""
        objs = sorted((o.row, o.col, o.shape, o.colour, o.size) for o in self.objects)
        return f"{self.background}|{self.grid_size}|" + ";".join(",".join(map(str, t)) for t in objs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene_id": self.scene_id,
            "background": self.background,
            "grid_size": self.grid_size,
            "split": self.split,
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls(
            scene_id=str(d["scene_id"]),
            objects=tuple(WorldObject.from_dict(o) for o in d["objects"]),
            background=d["background"],
            grid_size=int(d.get("grid_size", 2)),
            split=d.get("split", ""),
        )


@dataclass(frozen=True)
class VQAItem:
    question: str
    answer: str
    answer_type: str  # "yes/no" | "number" | "other"
    template: str = ""  # which template produced it, e.g. "presence_shape"

    def to_dict(self) -> dict[str, str]:
        return {
            "question": self.question,
            "answer": self.answer,
            "answer_type": self.answer_type,
            "template": self.template,
        }


@dataclass(frozen=True)
class PopeProbe:
    scene_id: str
    object_class: str
    question: str
    label: str  # "yes" | "no"
    kind: str = "random"

    def to_dict(self) -> dict[str, str]:
        return {
            "scene_id": self.scene_id,
            "object_class": self.object_class,
            "question": self.question,
            "label": self.label,
            "kind": self.kind,
        }


__all__ = [
    "ALL_SHAPES",
    "ALL_COLOURS",
    "ALL_BACKGROUNDS",
    "PALETTE",
    "SIZES",
    "NUMBER_WORDS",
    "SHAPE_PLURALS",
    "SHAPE_SYNONYMS",
    "SPLITS",
    "WorldConfig",
    "WorldObject",
    "Scene",
    "VQAItem",
    "PopeProbe",
    "plural",
    "number_word",
    "article",
    "position_name",
]
