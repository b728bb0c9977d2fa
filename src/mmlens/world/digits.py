"""A second, real-image source: scikit-learn's bundled handwritten digits (offline, 1797 images of 8x8).

Images are upscaled (bicubic, so strokes look smooth rather than blocky) to ``image_size`` and returned as RGB with
dark ink on light paper; captions come from fixed templates ("a handwritten seven", "a photo of the digit 7", ...).
The train/test split is a stratified split fixed by ``split_seed`` (independent of the caption ``seed``), so the
same image never changes side when only the caption randomness changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from mmlens.errors import InputError

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w} = digit word, {d} = numeral
DIGIT_TEMPLATES: tuple[str, ...] = (
    "a handwritten {w}",
    "a photo of the digit {d}",
    "a photo of the number {w}",
    "the digit {w} written by hand",
    "a scan of a handwritten {d}",
    "the number {d}",
)
# Prompts for zero-shot classification, one per class (CLIP-style "a photo of ...").
DIGIT_CLASS_TEMPLATE = "a photo of the digit {d}"


@dataclass(frozen=True)
class DigitPair:
    image: Image.Image
    caption: str
    label: int
    index: int  # row in sklearn's load_digits()

    def __iter__(self) -> Iterator:
        """Unpack as ``image, caption, label``."""
        return iter((self.image, self.caption, self.label))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    # Cached read-only arrays: loading parses a bundled CSV; the cache holds immutable data only.
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float64)
    images.setflags(write=False)
    target = d.target.astype(int)
    target.setflags(write=False)
    return images, target


def digit_split_indices(split: str, split_seed: int = 0, test_fraction: float = 0.25) -> np.ndarray:
    """Row indices of ``split`` ("train" or "test") in a stratified split fixed by ``split_seed``."""
    if split not in ("train", "test"):
        raise InputError(f"unknown digits split {split!r}; use 'train' or 'test'")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction={test_fraction} must be in (0, 1)")
    _, y = _digits()
    rng = np.random.default_rng([int(split_seed), 8])
    test: list[int] = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.asarray(test, dtype=np.int64)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def digit_image(index: int, image_size: int = 32) -> Image.Image:
    images, _ = _digits()
    x = images[index] / 16.0  # sklearn digits are 0 (paper) .. 16 (ink)
    gray = np.uint8(np.round((1.0 - x) * 255))  # dark ink on light paper, like a scan
    img = Image.fromarray(gray).resize((image_size, image_size), Image.Resampling.BICUBIC)
    return img.convert("RGB")


def digit_caption(label: int, rng: np.random.Generator) -> str:
    t = DIGIT_TEMPLATES[int(rng.integers(len(DIGIT_TEMPLATES)))]
    return t.format(w=DIGIT_WORDS[label], d=label)


def digit_class_prompts(template: str = DIGIT_CLASS_TEMPLATE) -> list[str]:
    """One prompt per class 0..9, for zero-shot classification."""
    return [template.format(w=DIGIT_WORDS[c], d=c) for c in range(10)]


def digits_pairs(
    split: str = "train",
    seed: int = 0,
    image_size: int = 32,
    n: int | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.25,
) -> list[DigitPair]:
    """(image, caption, label) pairs of ``split``; captions drawn with ``seed``; the first ``n`` if given."""
    if image_size < 8:
        raise InputError(f"image_size={image_size} must be >= 8")
    idx = digit_split_indices(split, split_seed, test_fraction)
    if n is not None:
        idx = idx[: max(0, int(n))]
    _, y = _digits()
    rng = np.random.default_rng([int(seed), 9])
    return [DigitPair(digit_image(int(i), image_size), digit_caption(int(y[i]), rng), int(y[i]), int(i)) for i in idx]


def digits_vocabulary() -> list[str]:
    words = set(DIGIT_WORDS) | {str(d) for d in range(10)}
    for t in (*DIGIT_TEMPLATES, DIGIT_CLASS_TEMPLATE):
        words |= {w for w in t.split() if not w.startswith("{")}
    return sorted(words)


__all__ = [
    "DigitPair",
    "DIGIT_WORDS",
    "DIGIT_TEMPLATES",
    "digits_pairs",
    "digit_image",
    "digit_caption",
    "digit_class_prompts",
    "digit_split_indices",
    "digits_vocabulary",
]
