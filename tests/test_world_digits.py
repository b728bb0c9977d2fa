"""The scikit-learn digits source: offline, deterministic, disjoint splits, captions name the label."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.errors import InputError
from mmlens.world.digits import DIGIT_WORDS, digit_class_prompts, digit_split_indices, digits_pairs


def test_digits_pairs() -> None:
    train = digits_pairs("train", seed=0, n=40)
    again = digits_pairs("train", seed=0, n=40)
    assert [p.caption for p in train] == [p.caption for p in again]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(train, again))
    image, caption, label = train[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    for p in train:
        assert DIGIT_WORDS[p.label] in p.caption or str(p.label) in p.caption
    # paper is light, ink dark
    arr = np.asarray(train[0].image).astype(float)
    assert arr[0, 0].mean() > 200 and arr.min() < 80
    assert digits_pairs("test", n=2, image_size=48)[0].image.size == (48, 48)


def test_digits_split() -> None:
    tr, te = digit_split_indices("train"), digit_split_indices("test")
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797
    assert abs(len(te) / 1797 - 0.25) < 0.01
    assert np.array_equal(te, digit_split_indices("test"))
    assert not np.array_equal(te, digit_split_indices("test", split_seed=1))
    labels = {p.label for p in digits_pairs("test")}
    assert labels == set(range(10))
    with pytest.raises(InputError):
        digits_pairs("val")
    assert digit_class_prompts()[7] == "a photo of the digit 7"
