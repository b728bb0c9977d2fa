"""Export the world to disk (PNG + JSONL) or to a ``datasets.Dataset``, and read image-caption JSONL files.

Layout written by :func:`export_world`::

    DIR/world.json        config, seed, split, n (enough to regenerate everything)
    DIR/data.jsonl        one record per image (see :func:`scene_record`)
    DIR/images/<scene_id>.png

Writes are atomic: everything goes to a hidden temporary folder next to ``DIR`` which is renamed into place at the
end, so a crash never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmlens.errors import InputError
from mmlens.io import atomic_folder

if TYPE_CHECKING:
    import datasets
from mmlens.world.core import Scene, WorldConfig
from mmlens.world.world import CAPTION_STYLES, POPE_KINDS, World


def scene_record(
    world: World,
    scene: Scene,
    index: int,
    caption_seed: int = 0,
    styles: Sequence[str] = CAPTION_STYLES,
    image_path: str | None = None,
) -> dict[str, Any]:
    """JSON-able record of a scene: ``image`` (relative path), ``caption`` (the "objects" caption, or the first
    style), ``captions`` {style: text}, ``vqa`` [{question, answer, answer_type, template}], ``objects`` (sorted
    classes present), ``scene`` (:meth:`Scene.to_dict`). Text is drawn from a generator seeded by
    ``(world.seed, caption_seed, index)`` so records are reproducible one by one."""
    rng = np.random.default_rng([world.seed, int(caption_seed), int(index)])
    captions = {s: world.caption(scene, rng, style=s) for s in styles}
    main = captions.get("objects", next(iter(captions.values()), ""))
    return {
        "image": image_path if image_path is not None else f"images/{scene.scene_id}.png",
        "scene_id": scene.scene_id,
        "caption": main,
        "captions": captions,
        "vqa": [q.to_dict() for q in world.vqa(scene, rng)],
        "objects": sorted(scene.object_classes),
        "scene": scene.to_dict(),
    }


def iter_world(
    world: World,
    n: int,
    split: str = "train",
    caption_seed: int = 0,
    styles: Sequence[str] = CAPTION_STYLES,
    pope_per_image: int = 3,
) -> Iterator[tuple[Image.Image, dict[str, Any]]]:
    """(image, record) for ``n`` scenes of ``split``. Records also carry ``pope``: the POPE probes of every kind
    for that image (popular/adversarial negatives are computed over the ``n`` exported scenes)."""
    scenes = world.sample_scenes(n, split)
    pope: dict[str, list[dict[str, str]]] = {sc.scene_id: [] for sc in scenes}
    for k, kind in enumerate(POPE_KINDS):
        rng = np.random.default_rng([world.seed, int(caption_seed), 1_000_003, k])
        for p in world.pope_probes(scenes, kind=kind, per_image=pope_per_image, rng=rng):
            d = p.to_dict()
            del d["scene_id"]
            pope[p.scene_id].append(d)
    for i, scene in enumerate(scenes):
        rec = scene_record(world, scene, i, caption_seed, styles)
        rec["pope"] = pope[scene.scene_id]
        yield world.render(scene), rec


def export_world(
    directory: str | os.PathLike,
    world: World,
    n: int,
    split: str = "train",
    caption_seed: int = 0,
    styles: Sequence[str] = CAPTION_STYLES,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` scenes of ``split`` as PNGs + ``data.jsonl`` + ``world.json``; returns the folder."""
    if n < 1:
        raise InputError(f"n={n}: export at least one image")
    target = Path(directory)
    with atomic_folder(target, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for image, rec in iter_world(world, n, split, caption_seed, styles):
                image.save(tmp / rec["image"], format="PNG")
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        meta = {
            "config": world.cfg.to_dict(),
            "seed": world.seed,
            "split": split,
            "n": n,
            "caption_seed": caption_seed,
            "styles": list(styles),
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return target


def load_world_meta(directory: str | os.PathLike) -> tuple[World, dict[str, Any]]:
    """The :class:`World` an export was made from, and its ``world.json``."""
    path = Path(directory) / "world.json"
    if not path.is_file():
        raise InputError(f"{path} not found; is {directory} a folder written by export_world?")
    meta = json.loads(path.read_text(encoding="utf-8"))
    return World(WorldConfig.from_dict(meta["config"]), seed=meta["seed"]), meta


def _features() -> Any:
    from datasets import Features, List, Value
    from datasets import Image as HFImage

    return Features(
        {
            "image": HFImage(),
            "scene_id": Value("string"),
            "caption": Value("string"),
            **{f"caption_{s}": Value("string") for s in CAPTION_STYLES},
            "vqa": List(
                {
                    "question": Value("string"),
                    "answer": Value("string"),
                    "answer_type": Value("string"),
                    "template": Value("string"),
                }
            ),
            "objects": List(Value("string")),
            "pope": List(
                {
                    "object_class": Value("string"),
                    "question": Value("string"),
                    "label": Value("string"),
                    "kind": Value("string"),
                }
            ),
            "scene": Value("string"),  # JSON of Scene.to_dict(); Scene.from_dict(json.loads(...)) restores it
        }
    )


def to_hf_dataset(
    source: World | str | os.PathLike, n: int | None = None, split: str = "train", caption_seed: int = 0
) -> datasets.Dataset:
    """A ``datasets.Dataset`` with an ``Image`` feature, from a :class:`World` (``n`` scenes of ``split``) or from
    a folder written by :func:`export_world`. Columns: image, scene_id, caption, caption_<style> for every style,
    vqa, objects, scene (JSON)."""
    from datasets import Dataset

    rows: list[tuple[Any, dict[str, Any]]] = []
    if isinstance(source, World):
        if n is None or n < 1:
            raise InputError("to_hf_dataset(world, n=...) needs n >= 1")
        rows = list(iter_world(source, n, split, caption_seed))
    else:
        folder = Path(source)
        for _, rec in read_jsonl(folder / "data.jsonl"):
            rows.append((str(folder / rec["image"]), rec))
        if not rows:
            raise InputError(f"{folder / 'data.jsonl'} has no records; export some scenes first")
    cols: dict[str, list[Any]] = {k: [] for k in _features()}
    for image, rec in rows:
        cols["image"].append(image)
        cols["scene_id"].append(rec["scene_id"])
        cols["caption"].append(rec["caption"])
        for s in CAPTION_STYLES:
            cols[f"caption_{s}"].append(rec["captions"].get(s, ""))
        cols["vqa"].append(rec["vqa"])
        cols["objects"].append(rec["objects"])
        cols["pope"].append(rec.get("pope", []))
        cols["scene"].append(json.dumps(rec["scene"], sort_keys=True))
    return Dataset.from_dict(cols, features=_features())


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file; InputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found; give the path of an existing JSONL file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object")
            out.append((lineno, rec))
    return out


def load_pairs_jsonl(
    path: str | os.PathLike, load_images: bool = True, require_caption: bool = True
) -> list[dict[str, Any]]:
    """Read a JSONL of ``{"image": <path relative to the JSONL's folder>, "caption": <text>, ...}``.

    Returns one dict per line with ``image`` (an RGB PIL image, fully decoded, or the path when
    ``load_images=False``), ``image_path`` (absolute), ``caption`` and every other key of the record. Raises
    :class:`InputError` naming the file and line for a missing file, bad JSON, a missing key, a missing or corrupt
    image, and for a file with no records. With ``require_caption=False`` lines may omit ``caption`` (e.g. a
    file of images and prompts for generation); it is then ``None``.
    """
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise InputError(f'{path} is empty; it needs one {{"image": ..., "caption": ...}} object per line')
    base = path.parent
    out = []
    for lineno, rec in records:
        for key in ("image", "caption") if require_caption else ("image",):
            if key not in rec:
                need = "'image' and 'caption'" if require_caption else "'image'"
                raise InputError(f"{path}:{lineno}: missing key {key!r}; each line needs {need}")
        rec.setdefault("caption", None)
        if require_caption and not (isinstance(rec["caption"], str) and rec["caption"].strip()):
            raise InputError(f"{path}:{lineno}: 'caption' must be a non-empty string")
        img_path = (base / str(rec["image"])).resolve()
        if not img_path.is_file():
            raise InputError(f"{path}:{lineno}: image {img_path} not found (paths are relative to {base})")
        item = dict(rec)
        item["image_path"] = str(img_path)
        if load_images:
            try:
                with Image.open(img_path) as im:
                    item["image"] = im.convert("RGB")  # convert() forces a full decode: truncation shows up here
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise InputError(
                    f"{path}:{lineno}: cannot read image {img_path} ({type(e).__name__}); re-export or remove that line"
                ) from None
        else:
            item["image"] = str(img_path)
        out.append(item)
    return out


__all__ = [
    "export_world",
    "to_hf_dataset",
    "load_pairs_jsonl",
    "read_jsonl",
    "scene_record",
    "iter_world",
    "load_world_meta",
]
