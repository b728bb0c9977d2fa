"""SFT examples in, preference pairs out: TRL's conversational preference format as JSONL + images, or a dataset.

An SFT example is (image, prompt, answer); a preference pair adds a rejected answer. On disk a pair set is a folder
with ``pairs.jsonl`` (one ``{"images": [path], "prompt": [...], "chosen": [...], "rejected": [...], "meta": {...}}``
per line, paths relative to the folder) and ``images/``; :func:`pairs_to_dataset` gives the same records as a
``datasets.Dataset`` with decoded images, which ``trl.DPOTrainer`` takes as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmlens.errors import InputError
from mmlens.io import atomic_folder, open_image, write_json_atomic, write_jsonl_atomic

PAIRS_FILE = "pairs.jsonl"
DATASET_DIR = "dataset"


@dataclass(frozen=True)
class SFTExample:
    """One supervised example. ``objects``: the object classes truly in the image, when known (oracle judge,
    CHAIR); ``reference``: the gold short answer when it differs from ``answer`` (else ``answer`` is the gold)."""

    image: Image.Image
    prompt: str
    answer: str
    objects: frozenset[str] | None = None
    example_id: str = ""


@dataclass(frozen=True)
class PreferencePair:
    """(image, prompt, chosen, rejected); ``rejected_2``, when set, is a second rejected answer to the same prompt:
    DPO then optimises the paper's Eq. 5, gamma L(chosen, rejected) + (1 - gamma) L(chosen, rejected_2), gamma 0.5."""

    image: Image.Image
    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    rejected_2: str | None = None


def with_second_rejected(pairs: Sequence[PreferencePair], others: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Pairs with two rejected answers (Eq. 5): each pair of ``pairs`` takes as ``rejected_2`` the rejected answer of
    the pair of ``others`` with the same ``meta["id"]`` and the same chosen answer (e.g. BDHS and random
    substitution of one SFT example); pairs without such a partner are left out."""
    second: dict[str, PreferencePair] = {}
    for o in others:
        if o.meta.get("id"):
            second.setdefault(str(o.meta["id"]), o)
    out = []
    for p in pairs:
        match = second.get(str(p.meta.get("id", "")))
        if match is None or match.chosen != p.chosen or match.rejected == p.rejected:
            continue
        meta = dict(p.meta) | {"source_2": match.meta.get("source", "")}
        out.append(PreferencePair(p.image, p.prompt, p.chosen, p.rejected, meta, match.rejected))
    if not out:
        raise InputError("no pair found a second rejected answer (match them by meta['id'] and chosen answer)")
    return out


def check_examples(examples: Sequence[SFTExample]) -> list[SFTExample]:
    examples = list(examples)
    if not examples:
        raise InputError("no SFT examples: give at least one (image, prompt, answer)")
    for i, ex in enumerate(examples):
        if not isinstance(ex.image, Image.Image):
            raise InputError(f"example {i}: image must be a PIL image")
        if not ex.prompt.strip() or not ex.answer.strip():
            raise InputError(f"example {i}: prompt and answer must be non-empty text")
    return examples


def _open_image(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise InputError(f"{where}: image {path} not found (paths are relative to the JSONL's folder)")
    return open_image(path, where)


def _world_record_turns(path: Path, where: str, rec: dict[str, Any]) -> list[SFTExample]:
    """The SFT turns of one ``mmlens world export`` record, as :func:`world_sft_examples` makes them from a world:
    the description (``describe the image .`` -> the record's caption) and the yes/no presence questions."""
    from mmlens.align.eval import DESCRIBE_PROMPT
    from mmlens.align.world_data import YES_NO_TEMPLATES

    caption, objects, vqa = rec.get("caption"), rec.get("objects"), rec["vqa"]
    if not isinstance(rec.get("image"), str) or not isinstance(caption, str) or not caption.strip():
        raise InputError(f"{where}: a world export record needs an 'image' and a 'caption'")
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise InputError(f"{where}: 'objects' must be a list of object names, got {objects!r}")
    if not all(isinstance(q, dict) and isinstance(q.get("question"), str) and "answer" in q for q in vqa):
        raise InputError(f"{where}: each 'vqa' entry needs a 'question' and an 'answer'")
    image, present = _open_image(path.parent / rec["image"], where), frozenset(objects)
    scene = str(rec.get("scene_id", where))
    turns = [SFTExample(image, DESCRIBE_PROMPT, caption, present, f"{scene}/describe")]
    for k, q in enumerate(vqa):
        if q.get("template") in YES_NO_TEMPLATES:
            turns.append(SFTExample(image, q["question"], str(q["answer"]), present, f"{scene}/{q['template']}/{k}"))
    return turns


def load_sft_jsonl(path: str | os.PathLike) -> list[SFTExample]:
    """SFT examples from a JSONL of ``{"image": <relative path>, "prompt": ..., "answer": ...}`` (optional
    ``objects``: list of classes in the image, ``id``), or from the ``data.jsonl`` of ``mmlens world export``
    (per record its description and its yes/no presence questions, the turns the world's SFT data has)."""
    from mmlens.world.export import read_jsonl

    path = Path(path)
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f'{path} is empty; it needs one {{"image", "prompt", "answer"}} object per line')
    out = []
    for lineno, rec in rows:
        where = f"{path}:{lineno}"
        if "prompt" not in rec and isinstance(rec.get("vqa"), list):
            out.extend(_world_record_turns(path, where, rec))
            continue
        for key in ("image", "prompt", "answer"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise InputError(f"{where}: missing or empty {key!r}; each line needs image, prompt and answer")
        objects = rec.get("objects")
        if objects is not None and (not isinstance(objects, list) or not all(isinstance(o, str) for o in objects)):
            raise InputError(f"{where}: 'objects' must be a list of object names, got {objects!r}")
        out.append(
            SFTExample(
                _open_image(path.parent / rec["image"], where),
                rec["prompt"],
                rec["answer"],
                frozenset(objects) if objects is not None else None,
                str(rec.get("id", lineno)),
            )
        )
    return out


def _conversation(pair: PreferencePair, rejected: str | None = None) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": pair.prompt}],
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected if rejected is None else rejected}],
    }


def pairs_to_dataset(pairs: Sequence[PreferencePair]):
    """A ``datasets.Dataset`` in TRL's conversational vision preference format (images, prompt, chosen,
    rejected)."""
    from datasets import Dataset

    if not pairs:
        raise InputError("no preference pairs")
    if any(p.rejected_2 is not None for p in pairs):
        raise InputError("pairs with two rejected answers need two_rejected_dataset (one row per rejected answer)")
    return Dataset.from_list([{"images": [p.image], **_conversation(p)} for p in pairs])


def two_rejected_rows(pairs: Sequence[PreferencePair], n_rows: int, seed: int = 0) -> list[tuple[int, str]]:
    """The row order that makes a sequentially sampled batch compute Eq. 5 exactly (gamma 0.5): ``n_rows`` rows
    (pair index, rejected answer), each pair's two rows adjacent, pairs shuffled anew every pass over them."""
    if not pairs or any(p.rejected_2 is None for p in pairs):
        raise InputError("every pair needs a second rejected answer (rejected_2)")
    if n_rows % 2:
        raise InputError(f"n_rows={n_rows} must be even (two rows per pair)")
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, str]] = []
    while len(rows) < n_rows:
        for i in rng.permutation(len(pairs)):
            p = pairs[int(i)]
            rows += [(int(i), p.rejected), (int(i), str(p.rejected_2))]
            if len(rows) >= n_rows:
                break
    return rows


def two_rejected_dataset(pairs: Sequence[PreferencePair], n_rows: int, seed: int = 0):
    """The rows of :func:`two_rejected_rows` as a TRL dataset (train it with a sequential sampler and an even batch
    size, as :func:`mmlens.align.train.train_dpo` does)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"images": [pairs[i].image], **_conversation(pairs[i], rej)}
            for i, rej in two_rejected_rows(pairs, n_rows, seed)
        ]
    )


def write_pairs(
    pairs: Sequence[PreferencePair],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    with_dataset: bool = True,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write ``pairs.jsonl`` and ``images/`` (and ``dataset/``, the ``datasets`` copy for
    ``datasets.load_from_disk``; and ``extra_files`` as JSON) into ``out_dir`` atomically; returns the JSONL path."""
    out = Path(out_dir)
    if not pairs:
        raise InputError("no preference pairs to write")
    with atomic_folder(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i, p in enumerate(pairs):
            name = f"images/{i:06d}.png"
            p.image.save(tmp / name)
            rows.append(
                {"images": [name], **_conversation(p), "meta": p.meta}
                | ({"rejected_2": [{"role": "assistant", "content": p.rejected_2}]} if p.rejected_2 is not None else {})
            )
        write_jsonl_atomic(tmp / PAIRS_FILE, rows)
        if with_dataset and all(p.rejected_2 is None for p in pairs):
            pairs_to_dataset(pairs).save_to_disk(str(tmp / DATASET_DIR))
        for name, data in (extra_files or {}).items():
            write_json_atomic(tmp / name, data)
    return out / PAIRS_FILE


def _text(messages: Any, where: str, key: str) -> str:
    if isinstance(messages, str):
        return messages
    try:
        content = messages[0]["content"]
    except (TypeError, IndexError, KeyError):
        raise InputError(f"{where}: {key!r} must be text or a list of chat messages") from None
    if isinstance(content, list):  # multimodal content items
        content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


def load_preference_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Pairs written by :func:`write_pairs` (a folder or its ``pairs.jsonl``); plain-string prompt/chosen/rejected
    and an ``image`` key are accepted too."""
    from mmlens.world.export import read_jsonl

    path = Path(path)
    if path.is_dir():
        path = path / PAIRS_FILE
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path} has no pairs")
    out = []
    for lineno, rec in rows:
        where = f"{path}:{lineno}"
        images = rec.get("images", [rec["image"]] if "image" in rec else None)
        if not images or len(images) != 1:
            raise InputError(f"{where}: each pair needs exactly one image ('images': [path])")
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise InputError(f"{where}: missing {key!r}")
        out.append(
            PreferencePair(
                _open_image(path.parent / images[0], where),
                _text(rec["prompt"], where, "prompt"),
                _text(rec["chosen"], where, "chosen"),
                _text(rec["rejected"], where, "rejected"),
                dict(rec.get("meta") or {}),
                _text(rec["rejected_2"], where, "rejected_2") if rec.get("rejected_2") is not None else None,
            )
        )
    return out


__all__ = [
    "DATASET_DIR",
    "PAIRS_FILE",
    "PreferencePair",
    "SFTExample",
    "check_examples",
    "load_preference_pairs",
    "load_sft_jsonl",
    "pairs_to_dataset",
    "two_rejected_dataset",
    "two_rejected_rows",
    "with_second_rejected",
    "write_pairs",
]
