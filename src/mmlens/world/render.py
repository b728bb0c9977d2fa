"""Deterministic rendering of a :class:`Scene` with PIL.

Shapes are drawn at ``supersample`` times the target resolution and box-downscaled, which is exact area
anti-aliasing: edges get blended pixels like a real (tiny) photo instead of jagged aliasing, and the result depends
only on the scene (no randomness at render time), so the same scene always yields the same pixels.
"""

from __future__ import annotations

import hashlib
import math

from PIL import Image, ImageDraw

from mmlens.world.core import PALETTE, Scene, WorldConfig, WorldObject


def object_box(obj: WorldObject, cfg: WorldConfig, scale: float = 1.0) -> tuple[float, float, float]:
    """(cx, cy, half_width) of an object in pixels of an image of side ``cfg.image_size * scale``."""
    cell = cfg.image_size * scale / cfg.grid_size
    frac = cfg.small_fraction if obj.size == "small" else cfg.large_fraction
    half = cell * frac / 2.0
    margin = cell / 2.0 - half  # free room between the object and the cell border
    cx = (obj.col + 0.5) * cell + obj.dx * margin * cfg.jitter
    cy = (obj.row + 0.5) * cell + obj.dy * margin * cfg.jitter
    return cx, cy, half


def is_faint(obj: WorldObject, scene: Scene, cfg: WorldConfig) -> bool:
    """Whether ``obj`` of ``scene`` is drawn faint (``WorldConfig.faint_*``): a fixed share of its class's objects
    (with ``faint_beside_anchor``, of those whose bias anchor is in the scene), picked by a hash of the object's
    content so rendering stays a function of the scene."""
    if obj.shape not in cfg.faint_shapes or cfg.faint_fraction <= 0.0:
        return False
    if cfg.faint_beside_anchor:
        anchors = {a for a, p in cfg.bias_pairs if p == obj.shape}
        if not anchors & scene.object_classes:
            return False
    key = f"{obj.shape}|{obj.colour}|{obj.size}|{obj.row}|{obj.col}|{obj.dx}|{obj.dy}".encode()
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
    return u < cfg.faint_fraction


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
    bg: tuple[int, int, int],
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        ri = r * 0.5  # hole of half the radius: still visible at 8 px
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=bg)
    elif shape == "square":
        s = r * 0.88  # a bit smaller than the box so squares and circles have similar area
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.48  # fat inner radius so the star stays solid when tiny
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    else:  # pragma: no cover - config validation prevents this
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """RGB image of side ``cfg.image_size``."""
    k = cfg.supersample
    big = cfg.image_size * k
    bg = PALETTE[scene.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        cx, cy, r = object_box(obj, cfg, scale=k)
        fill = PALETTE[obj.colour]
        if is_faint(obj, scene, cfg):
            a = cfg.faint_alpha
            fill = tuple(round(a * f + (1 - a) * b) for f, b in zip(fill, bg))  # type: ignore[assignment]
        _draw_shape(draw, obj.shape, cx, cy, r, fill, bg)
    if k == 1:
        return img
    return img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)
