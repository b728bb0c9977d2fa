"""Visual and textual shifts: every shift changes its input, severity is monotone, bad severities raise."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.errors import InputError
from mmlens.world import World, WorldConfig
from mmlens.world.corruptions import (
    KEYBOARD_NEIGHBOURS,
    TextCorruption,
    VisualCorruption,
    corrupt_image,
    corrupt_text,
    corruption_grid,
)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(), seed=0)


@pytest.fixture(scope="module")
def images(world: World) -> list:
    return [world.render(s) for s in world.sample_scenes(16, "test")]


@pytest.fixture(scope="module")
def texts(world: World) -> list[str]:
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(30, "test")
    return [world.caption(s, rng, style="detailed") for s in scenes] + [q.question for q in world.vqa(scenes[0], rng)]


def _mad(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


@pytest.mark.parametrize("shift", list(VisualCorruption))
def test_visual_shift_changes_and_is_monotone(shift: VisualCorruption, images: list) -> None:
    diffs = np.array(
        [[_mad(corrupt_image(im, shift, k, seed=i), im) for k in range(1, 6)] for i, im in enumerate(images)]
    )
    for im in images[:4]:
        out = corrupt_image(im, shift, 1, seed=0)
        assert out.size == im.size and out.mode == "RGB"
        assert out.tobytes() != im.tobytes(), "every shift must change the image"
    mean = diffs.mean(axis=0)
    assert np.all(np.diff(mean) > 0), f"{shift.value}: mean abs difference not increasing: {mean}"
    assert mean[0] < 0.06 * 255, f"{shift.value}: severity 1 should be mild, got {mean[0]:.1f}"


def test_visual_shift_deterministic_and_validated(images: list) -> None:
    im = images[0]
    a = corrupt_image(im, "gaussian_noise", 3, seed=5)
    assert a.tobytes() == corrupt_image(im, VisualCorruption.GAUSSIAN_NOISE, 3, seed=5).tobytes()
    assert a.tobytes() != corrupt_image(im, "gaussian_noise", 3, seed=6).tobytes()
    for bad in (0, 6, -1, 2.5, True):
        with pytest.raises(InputError):
            corrupt_image(im, "fog", bad)
    with pytest.raises(InputError):
        corrupt_image(im, "frost", 1)
    # larger images use the ImageNet-C constants and still work
    big = im.resize((96, 96))
    assert corrupt_image(big, "defocus_blur", 2).size == (96, 96)
    assert corrupt_image(im, "contrast", 2, scale="imagenet").size == im.size


@pytest.mark.parametrize("shift", list(TextCorruption))
def test_text_shift_changes_and_grows(shift: TextCorruption, texts: list[str]) -> None:
    def word_changes(a: str, b: str) -> int:
        wa, wb = a.split(), b.split()
        return sum(x != y for x, y in zip(wa, wb)) + abs(len(wa) - len(wb))

    changes = np.zeros(5)
    for i, t in enumerate(texts):
        for k in range(1, 6):
            out = corrupt_text(t, shift, k, seed=i)
            assert out != t, f"{shift.value}_{k} left {t!r} unchanged"
            assert out == corrupt_text(t, shift, k, seed=i)
            changes[k - 1] += word_changes(t, out)
    assert np.all(np.diff(changes) >= 0) and changes[-1] > changes[0], changes
    for bad in (0, 6):
        with pytest.raises(InputError):
            corrupt_text(texts[0], shift, bad)


def test_keyboard_uses_neighbour_keys() -> None:
    text = "a red circle and a blue square"
    out = corrupt_text(text, "keyboard", 5, seed=1)
    assert len(out) == len(text)
    for a, b in zip(text, out):
        if a != b:
            assert b in KEYBOARD_NEIGHBOURS[a]


def test_synonym_keeps_objects_parsable(world: World, texts: list[str]) -> None:
    for i, t in enumerate(texts[:20]):
        out = corrupt_text(t, "synonym", 5, seed=i)
        assert world.mentioned_objects(out) == world.mentioned_objects(t)
        assert " a e" not in out and " a i" not in out  # articles fixed after replacement


def test_shift_grid(images: list, texts: list[str]) -> None:
    grid = corruption_grid(
        images[:3], texts[:3], visual_shifts=["defocus_blur", "fog"], text_shifts=["keyboard"], severities=(1, 3)
    )
    assert set(grid) == {"clean", "defocus_blur_1", "defocus_blur_3", "fog_1", "fog_3", "keyboard_1", "keyboard_3"}
    s = grid["defocus_blur_3"]
    assert s.kind == "visual" and s.severity == 3 and s.texts == tuple(texts[:3]) and len(s.images) == 3
    k = grid["keyboard_1"]
    assert k.images == tuple(images[:3]) and all(a != b for a, b in zip(k.texts, texts[:3]))
    full = corruption_grid(images[:1], texts[:1])
    assert len(full) == 1 + 5 * len(VisualCorruption) + 5 * len(TextCorruption)
    with pytest.raises(InputError):
        corruption_grid(images[:2], texts[:3])
    with pytest.raises(InputError):
        corruption_grid(images[:1], severities=(0,))
