"""Distribution shifts at severity 1-5: visual corruptions and textual perturbations.

Visual shifts re-implement the published corruption formulas of ImageNet-C / CIFAR-10-C (Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019) with their severity
constants, in numpy/scipy/PIL only. The reference package ``imagecorruptions`` 1.1.2 was tried: it installs (it
pulls opencv-python) but its fog, glass blur and gaussian blur crash under numpy 2 / scikit-image 0.26, so it is not
used. Images of side <= 64 px (the world's default is 32) use the CIFAR-10-C constants, which the authors tuned for
32x32 images ("adapted for small images"); larger images use the ImageNet-C constants. Frost needs the authors'
bundled frost photographs, so fog is offered instead.

Text shifts: keyboard typos (a QWERTY neighbour key replaces a letter, rate by severity), synonym replacement from a
built-in table, and paraphrase templates (more rewrite rules at higher severity). A shifted item always differs from
the clean one (at least one edit is forced), so a split named ``keyboard_1`` never silently equals the clean split.
"""

from __future__ import annotations

import enum
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image

from mmlens.errors import InputError
from mmlens.world.core import SHAPE_SYNONYMS, plural


class VisualCorruption(str, enum.Enum):
    DEFOCUS_BLUR = "defocus_blur"
    FOG = "fog"
    GAUSSIAN_NOISE = "gaussian_noise"
    CONTRAST = "contrast"
    JPEG = "jpeg"
    PIXELATE = "pixelate"


class TextCorruption(str, enum.Enum):
    KEYBOARD = "keyboard"
    SYNONYM = "synonym"
    PARAPHRASE = "paraphrase"


SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Severity constants, index = severity - 1. "cifar" = CIFAR-10-C (32x32), "imagenet" = ImageNet-C (224x224).
_CONSTANTS: Mapping[str, Mapping[str, tuple]] = MappingProxyType(
    {
        "cifar": MappingProxyType(
            {
                "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # (disk radius, alias blur)
                "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (fog amount, wibble decay)
                "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std in [0, 1] units
                "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor around the channel mean
                "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
                "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
            }
        ),
        "imagenet": MappingProxyType(
            {
                "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
                "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
                "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
                "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
                "jpeg": (25, 18, 15, 10, 7),
                "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
            }
        ),
    }
)


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise InputError(f"severity={severity!r} is invalid; use an integer 1..5 (the clean data is severity-free)")
    return int(severity)


def _visual(shift: VisualCorruption | str) -> VisualCorruption:
    try:
        return VisualCorruption(shift)
    except ValueError:
        raise InputError(f"unknown visual shift {shift!r}; use one of {[s.value for s in VisualCorruption]}") from None


def _text(shift: TextCorruption | str) -> TextCorruption:
    try:
        return TextCorruption(shift)
    except ValueError:
        raise InputError(f"unknown text shift {shift!r}; use one of {[s.value for s in TextCorruption]}") from None


# ------------------------------------------------------------------------------------------- visual corruptions
def _gaussian_kernel_1d(ksize: int, sigma: float) -> np.ndarray:
    x = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's anti-aliased disk kernel (a normalised disk smoothed by a small gaussian)."""
    if radius <= 8:
        L = np.arange(-8, 8 + 1, dtype=np.float64)
        ksize = 3
    else:
        L = np.arange(-radius, radius + 1)
        ksize = 5
    from scipy import ndimage  # imported here: scipy is slow to import and only blur needs it

    X, Y = np.meshgrid(L, L)
    disk = ((X**2 + Y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_kernel_1d(ksize, alias_blur)
    # cv2.GaussianBlur's default border is reflect-101, which is scipy's "mirror"
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def _plasma_fractal(rng: np.random.Generator, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square fractal in [0, 1] as in ImageNet-C's fog (including its ``wibble * U(-wibble, wibble)``)."""
    maparray = np.zeros((mapsize, mapsize), dtype=np.float64)
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        corner = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corner + np.roll(corner, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(square)
        dr = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _scale_for(size: tuple[int, int], scale: str) -> str:
    if scale == "auto":
        return "cifar" if max(size) <= 64 else "imagenet"
    if scale not in _CONSTANTS:
        raise InputError(f"unknown corruption scale {scale!r}; use 'auto', 'cifar' or 'imagenet'")
    return scale


def corrupt_image(
    image: Image.Image, shift: VisualCorruption | str, severity: int, seed: int = 0, scale: str = "auto"
) -> Image.Image:
    """Corrupt ``image`` (any PIL mode; returned as RGB of the same size). Deterministic given ``seed``."""
    shift = _visual(shift)
    severity = _check_severity(severity)
    img = image.convert("RGB")
    const = _CONSTANTS[_scale_for(img.size, scale)][shift.value][severity - 1]
    # Same random numbers at every severity (common random numbers): severity k+1 is the same noise, stronger.
    rng = np.random.default_rng([int(seed), list(VisualCorruption).index(shift)])
    x = np.asarray(img, dtype=np.float64) / 255.0
    h, w = x.shape[:2]

    if shift is VisualCorruption.DEFOCUS_BLUR:
        from scipy import ndimage

        kernel = _disk(const[0], const[1])
        x = np.stack([ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)], axis=-1)
    elif shift is VisualCorruption.FOG:
        amount, decay = const
        mapsize = 1 << max(5, int(np.ceil(np.log2(max(h, w)))))  # power of two >= image side
        max_val = x.max()
        x = x + amount * _plasma_fractal(rng, mapsize, decay)[:h, :w][..., None]
        x = x * max_val / (max_val + amount)
    elif shift is VisualCorruption.GAUSSIAN_NOISE:
        x = x + rng.normal(size=x.shape, scale=const)
    elif shift is VisualCorruption.CONTRAST:
        means = x.mean(axis=(0, 1), keepdims=True)
        x = (x - means) * const + means
    elif shift is VisualCorruption.JPEG:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(const))
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    elif shift is VisualCorruption.PIXELATE:
        small = img.resize((max(1, int(w * const)), max(1, int(h * const))), Image.Resampling.BOX)
        return small.resize((w, h), Image.Resampling.BOX)
    return Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255 + 0.5))  # round: tiny changes survive quantisation


# ------------------------------------------------------------------------------------------- text perturbations
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    pos = {ch: (r, c) for r, row in enumerate(_KEYBOARD_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in pos.items():
        out[ch] = "".join(o for o, (r2, c2) in pos.items() if o != ch and abs(r2 - r) <= 1 and abs(c2 - c) <= 1)
    return out


KEYBOARD_NEIGHBOURS: Mapping[str, str] = MappingProxyType(_keyboard_neighbours())
KEYBOARD_RATES: tuple[float, ...] = (0.02, 0.05, 0.08, 0.12, 0.18)  # fraction of letters hit, per severity
SYNONYM_RATES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)  # fraction of replaceable words replaced

# Word -> synonyms. Shapes come from the world's shape synonyms so parsing (mentioned_objects) still recognises them.
SYNONYMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        **{k: v for k, v in SHAPE_SYNONYMS.items()},
        **{plural(k): tuple(plural(s) for s in v) for k, v in SHAPE_SYNONYMS.items()},
        "red": ("crimson", "scarlet"),
        "green": ("emerald", "lime"),
        "blue": ("azure", "navy"),
        "yellow": ("golden", "lemon"),
        "purple": ("violet", "magenta"),
        "white": ("ivory", "snowy"),
        "orange": ("amber", "tangerine"),
        "cyan": ("turquoise", "teal"),
        "black": ("dark", "ebony"),
        "gray": ("grey", "silver"),
        "large": ("big", "huge"),
        "small": ("little", "tiny"),
        "image": ("picture", "photo"),
        "object": ("item", "thing"),
        "objects": ("items", "things"),
        "background": ("backdrop",),
        "colour": ("color", "hue"),
        "shape": ("form",),
        "top": ("upper",),
        "bottom": ("lower",),
    }
)

_STATEMENT_PREFIXES: tuple[str, ...] = (
    "a picture of",
    "an image showing",
    "this image shows",
    "i can see",
    "here we have",
    "a photo with",
)
_QUESTION_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^is there (an?|one) (.+?) in the image \?$", r"does the image contain \1 \2 ?"),
    (r"^is there (an?|one) (.+?) \?$", r"can you see \1 \2 ?"),
    (r"^how many (.+?) are there \?$", r"what is the number of \1 ?"),
    (r"^what colour is the (.+?) \?$", r"which colour does the \1 have ?"),
    (r"^what shape is the (.+?) \?$", r"which shape does the \1 have ?"),
    (r"^where is the (.+?) \?$", r"in which part of the image is the \1 ?"),
)


def text_corruption_vocabulary() -> set[str]:
    """Extra words text shifts can introduce (keyboard typos aside)."""
    words: set[str] = set()
    for syns in SYNONYMS.values():
        words |= set(syns)
    for p in _STATEMENT_PREFIXES:
        words |= set(p.split())
    for _, rep in _QUESTION_REWRITES:
        words |= {w for w in rep.split() if w.isalpha()}
    words |= {"as", "well", "together", "with", "one", "tell", "me", "please", "answer", "this", "picture"}
    return words


def _keyboard(text: str, rate: float, rng: np.random.Generator) -> str:
    chars = list(text)
    letters = [i for i, ch in enumerate(chars) if ch.lower() in KEYBOARD_NEIGHBOURS]
    if not letters:
        return text
    u = rng.random(len(letters))  # letter j is hit when u[j] < rate: nested across severities
    pick = rng.random(len(letters))  # which neighbour key, fixed per letter
    hits = [j for j in range(len(letters)) if u[j] < rate] or [int(np.argmin(u))]
    for j in hits:
        i = letters[j]
        nb = KEYBOARD_NEIGHBOURS[chars[i].lower()]
        new = nb[int(pick[j] * len(nb))]
        chars[i] = new.upper() if chars[i].isupper() else new
    return "".join(chars)


def _synonym(text: str, rate: float, rng: np.random.Generator) -> str:
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    if not idx:
        return text
    u = rng.random(len(idx))
    pick = rng.random(len(idx))
    hits = [j for j in range(len(idx)) if u[j] < rate] or [int(np.argmin(u))]
    for j in hits:
        syns = SYNONYMS[words[idx[j]].lower()]
        words[idx[j]] = syns[int(pick[j] * len(syns))]
    return " ".join(words)


def _fix_articles(text: str) -> str:
    """'a ebony' -> 'an ebony', 'an big' -> 'a big' after a word was replaced."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "an") and words[i + 1][:1].isalpha():
            words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
    return " ".join(words)


def _paraphrase(text: str, severity: int, rng: np.random.Generator) -> str:
    """Rules applied cumulatively: 1 wrap in a template (questions: an equivalent question template), 2 reorder
    the listed phrases, 3 'and' -> 'as well as' / 'together with', 4 article 'a' -> 'one' for listed objects,
    5 a second wrapper ('i can see a picture of ...', 'please answer : ...')."""
    prefix = _STATEMENT_PREFIXES[int(rng.integers(len(_STATEMENT_PREFIXES)))]  # drawn first: same at every severity
    joiner = " as well as " if rng.random() < 0.5 else " together with "
    t = text.strip()
    if t.endswith("?"):
        if severity >= 4:
            t = re.sub(r"^is there a ", "is there one ", t)
        for pat, rep in _QUESTION_REWRITES:
            new = re.sub(pat, rep, t)
            if new != t:
                t = new
                break
        else:
            t = "tell me , " + t
        if severity >= 3:
            t = t.replace(" the image ", " this picture ")
        if severity >= 5:
            t = "please answer : " + t
        return t
    head, sep, tail = t.partition(" on ")  # keep "... on a black background" at the end, untouched
    if severity >= 2:  # reorder the coordinated phrases
        parts = re.split(r" , | and ", head)
        perm = rng.permutation(len(parts))
        if len(parts) > 1:
            if (perm == np.arange(len(parts))).all():
                perm = np.roll(perm, 1)
            parts = [parts[i] for i in perm]
            head = " , ".join(parts[:-1]) + " and " + parts[-1]
    if severity >= 3:
        head = head.replace(" and ", joiner)
    if severity >= 4:
        head = re.sub(r"(^| )an? (?=\w)", r"\1one ", head)
    t = head + sep + tail
    t = f"{prefix} {t}"
    if severity >= 5:
        t = ("here we have " if t.startswith("i can see") else "i can see ") + t
    return t


def corrupt_text(text: str, shift: TextCorruption | str, severity: int, seed: int = 0) -> str:
    """Perturb ``text``; deterministic given ``seed``; the result differs from ``text`` whenever possible."""
    shift = _text(shift)
    severity = _check_severity(severity)
    # Same random numbers at every severity, so edits are nested: what severity k changes, k+1 changes too.
    rng = np.random.default_rng([int(seed), 100 + list(TextCorruption).index(shift)])
    if shift is TextCorruption.KEYBOARD:
        return _keyboard(text, KEYBOARD_RATES[severity - 1], rng)
    if shift is TextCorruption.SYNONYM:
        return _fix_articles(_synonym(text, SYNONYM_RATES[severity - 1], rng))
    return _paraphrase(text, severity, rng)


# ------------------------------------------------------------------------------------------- grids of splits
@dataclass(frozen=True)
class CorruptedSplit:
    """One named split of a shift grid: images and texts aligned with the clean inputs (one side is shifted)."""

    name: str  # e.g. "clean", "defocus_blur_3", "keyboard_2"
    kind: str  # "clean" | "visual" | "text"
    shift: str | None
    severity: int
    images: tuple = field(repr=False, default=())
    texts: tuple[str, ...] = field(repr=False, default=())


def corruption_name(shift: VisualCorruption | TextCorruption | str, severity: int) -> str:
    value = shift.value if isinstance(shift, enum.Enum) else str(shift)
    return f"{value}_{int(severity)}"


def corruption_grid(
    images: Sequence[Image.Image] = (),
    texts: Sequence[str] = (),
    visual_shifts: Sequence[VisualCorruption | str] | None = None,
    text_shifts: Sequence[TextCorruption | str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    include_clean: bool = True,
) -> dict[str, CorruptedSplit]:
    """Named splits ``clean``, ``<visual>_<s>`` (images corrupted, texts clean) and ``<text>_<s>`` (texts
    perturbed, images clean). Item ``i`` of every split is seeded by ``seed + i`` so splits stay paired."""
    vs = [_visual(s) for s in (list(VisualCorruption) if visual_shifts is None else visual_shifts)]
    ts = [_text(s) for s in (list(TextCorruption) if text_shifts is None else text_shifts)]
    sev = [_check_severity(s) for s in severities]
    images, texts = tuple(images), tuple(texts)
    if images and texts and len(images) != len(texts):
        raise InputError(f"corruption_grid needs as many images ({len(images)}) as texts ({len(texts)})")
    out: dict[str, CorruptedSplit] = {}
    if include_clean:
        out["clean"] = CorruptedSplit("clean", "clean", None, 0, images, texts)
    if images:
        for s in vs:
            for k in sev:
                name = corruption_name(s, k)
                shifted = tuple(corrupt_image(im, s, k, seed=seed + i) for i, im in enumerate(images))
                out[name] = CorruptedSplit(name, "visual", s.value, k, shifted, texts)
    if texts:
        for ts_kind in ts:
            for k in sev:
                name = corruption_name(ts_kind, k)
                shifted_t = tuple(corrupt_text(t, ts_kind, k, seed=seed + i) for i, t in enumerate(texts))
                out[name] = CorruptedSplit(name, "text", ts_kind.value, k, images, shifted_t)
    return out


__all__ = [
    "VisualCorruption",
    "TextCorruption",
    "SEVERITIES",
    "corrupt_image",
    "corrupt_text",
    "corruption_grid",
    "CorruptedSplit",
    "corruption_name",
    "SYNONYMS",
    "KEYBOARD_NEIGHBOURS",
    "text_corruption_vocabulary",
]
