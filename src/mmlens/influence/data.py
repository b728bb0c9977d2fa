"""Training pairs, their recorded batch partition, and misalignment injection with ground truth."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.influence.config import NoiseKind


@dataclass(frozen=True)
class PairData:
    """Image-caption pairs. Optional: ``labels`` = the content class of each pair (two pairs with equal labels have
    interchangeable captions; used as noise ground truth), ``groups`` = a confusable category per pair (digits:
    {3, 5, 8}, {1, 7}, ...; world scenes: the set of shapes), ``ids`` = names of the pairs in outputs."""

    images: tuple[Image.Image, ...]
    captions: tuple[str, ...]
    groups: tuple[int, ...] | None = None
    ids: tuple[str, ...] = ()  # empty: "0", "1", ... (filled in on construction)
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise InputError("the dataset is empty: need at least one image-caption pair")
        if len(self.images) != len(self.captions):
            raise InputError(f"got {len(self.images)} images for {len(self.captions)} captions: pairs must match")
        if not all(isinstance(c, str) and c.strip() for c in self.captions):
            raise InputError("every caption must be a non-empty string")
        if not all(isinstance(im, Image.Image) for im in self.images):
            raise InputError("every image must be a PIL image")
        for name in ("groups", "labels"):
            if getattr(self, name) is not None and len(getattr(self, name)) != len(self.images):
                raise InputError(f"{name} must have one entry per pair")
        if not self.ids:  # None (older callers) or empty: positional names
            object.__setattr__(self, "ids", tuple(str(i) for i in range(len(self.images))))
        elif len(self.ids) != len(self.images):
            raise InputError("ids must have one entry per pair")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> PairData:
        idx = [int(i) for i in indices]
        return PairData(
            tuple(self.images[i] for i in idx),
            tuple(self.captions[i] for i in idx),
            None if self.groups is None else tuple(self.groups[i] for i in idx),
            tuple(self.ids[i] for i in idx),
            None if self.labels is None else tuple(self.labels[i] for i in idx),
        )

    def with_captions(self, captions: Sequence[str]) -> PairData:
        return PairData(self.images, tuple(captions), self.groups, self.ids, self.labels)


def load_pair_data(path: str | os.PathLike) -> PairData:
    """Pairs from a JSONL of ``{"image": path relative to the file, "caption": text}`` or a ``datasets`` folder
    (``save_to_disk``) with ``image`` and ``caption`` columns. An optional integer ``group`` field/column marks
    confusable categories."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} not found: give a JSONL of {{image, caption}} pairs or a datasets folder")
    if path.is_dir():
        return _load_dataset_folder(path)
    from mmlens.world import load_pairs_jsonl

    records = load_pairs_jsonl(path)
    groups = [r.get("group") for r in records]
    return PairData(
        tuple(r["image"] for r in records),
        tuple(r["caption"] for r in records),
        tuple(int(g) for g in groups if isinstance(g, int)) if all(isinstance(g, int) for g in groups) else None,
        tuple(str(r.get("id", i)) for i, r in enumerate(records)),
    )


def _load_dataset_folder(path: Path) -> PairData:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(f"{path} is not a datasets folder saved with save_to_disk ({err})") from None
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict: take its first split
        ds = ds[next(iter(ds.keys()))]
    missing = {"image", "caption"} - set(ds.column_names)
    if missing:
        raise InputError(f"{path}: the dataset lacks column(s) {sorted(missing)}; need 'image' and 'caption'")
    if len(ds) == 0:
        raise InputError(f"{path}: the dataset is empty")
    images = []
    for i, im in enumerate(ds["image"]):
        if not isinstance(im, Image.Image):
            raise InputError(f"{path}: row {i} has no decodable image")
        images.append(im.convert("RGB"))
    groups = ds["group"] if "group" in ds.column_names else None
    return PairData(tuple(images), tuple(ds["caption"]), tuple(int(g) for g in groups) if groups else None)


@dataclass(frozen=True)
class BatchPartition:
    """The recorded batch context (``Seg``): ``batches[m]`` = the pair indices of batch m, in order.

    ECIF conditions on it (negatives only exist within a batch) and retraining reuses it; removing pairs deletes
    them from their batches and keeps every other pair where it was.
    """

    batches: tuple[tuple[int, ...], ...]
    seed: int | None = None

    def __post_init__(self) -> None:
        flat = [i for b in self.batches for i in b]
        if not flat:
            raise InputError("the batch partition is empty")
        if len(set(flat)) != len(flat):
            raise InputError("the batch partition lists a pair twice")

    @classmethod
    def random(cls, n: int, batch_size: int, seed: int = 0) -> BatchPartition:
        """A seeded random partition into batches of ``batch_size`` (the last one may be smaller but >= 2)."""
        if n < 2:
            raise InputError(f"need at least 2 pairs for contrastive batches, got {n}")
        order = np.random.default_rng(seed).permutation(n)
        batches = [tuple(int(i) for i in order[s : s + batch_size]) for s in range(0, n, batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # a batch of one has no negatives: merge it
            batches[-2] = batches[-2] + batches[-1]
            batches.pop()
        return cls(tuple(batches), seed)

    @property
    def n_pairs(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def max_batch(self) -> int:
        return max(len(b) for b in self.batches)

    def index_matrix(self) -> np.ndarray:
        """int array [M, B_max]: pair index per slot, -1 for padding."""
        out = np.full((len(self.batches), self.max_batch), -1, dtype=np.int64)
        for m, b in enumerate(self.batches):
            out[m, : len(b)] = b
        return out

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "batches": [list(b) for b in self.batches]})

    @classmethod
    def from_json(cls, text: str) -> BatchPartition:
        try:
            d = json.loads(text)
            return cls(tuple(tuple(int(i) for i in b) for b in d["batches"]), d.get("seed"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a batch partition JSON ({err})") from None


@dataclass(frozen=True)
class NoisyPairs:
    """Pairs after injection: ``is_noisy[i]`` is the ground truth for detection."""

    data: PairData
    is_noisy: np.ndarray = field(repr=False)
    rate: float = 0.0
    kind: NoiseKind = NoiseKind.RANDOM_SWAP


def inject_noise(data: PairData, rate: float, kind: NoiseKind | str, seed: int = 0) -> NoisyPairs:
    """Misalign a fraction ``rate`` of the pairs by permuting captions among the chosen pairs.

    RANDOM_SWAP: the chosen pairs' captions are deranged among themselves (any category). CONFUSABLE_SWAP: within
    each group of ``data.groups`` the chosen pairs' captions are deranged (a 3 gets a 5's or 8's caption when the
    groups are {3,5,8}). A pair counts as noisy only if its caption text actually changed (with ``data.labels``: only
    if its new caption comes from a pair of another label).
    """
    kind = as_enum(NoiseKind, kind, "noise kind")
    if not 0.0 <= rate < 1.0:
        raise InputError(f"noise rate must be in [0, 1), got {rate}")
    n = len(data)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=round(rate * n), replace=False)
    if kind is NoiseKind.RANDOM_SWAP:
        pools = [chosen]
    else:
        if data.groups is None:
            raise InputError("confusable swap needs data.groups (the confusable category of each pair)")
        groups = np.asarray(data.groups)
        pools = [chosen[groups[chosen] == g] for g in np.unique(groups[chosen])]
    source = np.arange(n)
    for pool in pools:
        if len(pool) < 2:
            continue
        # a cyclic shift of a random order is a derangement: no chosen pair keeps its own caption
        order = rng.permutation(pool)
        source[order] = np.roll(order, 1)
    captions = [data.captions[s] for s in source]
    if data.labels is not None:
        labels = np.asarray(data.labels)
        is_noisy = labels[source] != labels
    else:
        is_noisy = np.array([a != b for a, b in zip(captions, data.captions)])
    return NoisyPairs(data.with_captions(captions), is_noisy, rate, kind)


__all__ = ["BatchPartition", "NoisyPairs", "PairData", "inject_noise", "load_pair_data"]
