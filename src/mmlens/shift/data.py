"""Evaluation splits for the shift analysis and their JSONL format.

One split = one JSONL file, one record per query, in the schema of the released LLaVA-Bench shift responses:
``question_id``, ``prompt`` (the query actually fed to the model, after any text shift), ``text`` (the model's
response), optionally ``image`` (a path relative to the file), ``reference`` (the reference answer; otherwise it is
joined by ``question_id`` from a references JSONL with ``question_id`` and ``text``), ``model_id``, ``metadata``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlens.errors import InputError
from mmlens.io import open_image


@dataclass
class ShiftSplit:
    """One evaluation split: queries, the model's responses, reference answers, optional images and metadata.

    ``meta`` may hold per-split numbers to correlate with (``accuracy``, ``relative_preference``) and the shift
    family (``family`` in {"id", "visual", "text", "joint", "natural"}).
    """

    name: str
    queries: list[str]
    responses: list[str]
    references: list[str]
    images: list[Any] | None = None
    item_ids: list[Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.queries)
        if n == 0:
            raise InputError(f"split {self.name!r} is empty")
        for what, seq in (
            ("responses", self.responses),
            ("references", self.references),
            ("images", self.images),
            ("item_ids", self.item_ids),
        ):
            if seq is not None and len(seq) != n:
                raise InputError(f"split {self.name!r}: {len(seq)} {what} for {n} queries")
        for what, seq in (("queries", self.queries), ("responses", self.responses), ("references", self.references)):
            bad = [i for i, t in enumerate(seq) if not isinstance(t, str)]
            if bad:
                raise InputError(f"split {self.name!r}: {what}[{bad[0]}] is not a string")
        if self.item_ids is None:
            self.item_ids = list(range(n))

    @property
    def ids(self) -> list[Any]:
        """The item ids (0..n-1 when none were given)."""
        return self.item_ids if self.item_ids is not None else list(range(len(self)))

    def __len__(self) -> int:
        return len(self.queries)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    from mmlens.world.export import read_jsonl

    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path} is empty")
    return rows


def load_references(path: str | os.PathLike) -> dict[Any, str]:
    """``question_id -> text`` from a references JSONL (LLaVA's ``qa90_gpt4_answer.jsonl`` schema)."""
    path = Path(path)
    out = {}
    for lineno, row in _read_jsonl(path):
        if "question_id" not in row or "text" not in row:
            raise InputError(f"{path}:{lineno}: a reference needs 'question_id' and 'text'")
        out[row["question_id"]] = row["text"]
    return out


def load_split(
    path: str | os.PathLike,
    references: dict[Any, str] | str | os.PathLike | None = None,
    *,
    name: str | None = None,
    load_images: bool = False,
) -> ShiftSplit:
    """Read one split JSONL (see the module docstring). Images are paths unless ``load_images``."""
    path = Path(path)
    rows = _read_jsonl(path)
    if references is not None and not isinstance(references, dict):
        references = load_references(references)
    queries, responses, refs, images, ids = [], [], [], [], []
    for index, (lineno, row) in enumerate(rows):
        for key in ("prompt", "text"):
            if key not in row:
                raise InputError(f"{path}:{lineno}: missing key {key!r} (need question_id, prompt, text)")
        qid = row.get("question_id", index)
        if "reference" in row:
            ref = row["reference"]
        elif references is not None:
            if qid not in references:
                raise InputError(f"{path}:{lineno}: no reference for question_id {qid!r}")
            ref = references[qid]
        else:
            raise InputError(f"{path}:{lineno}: no 'reference' field and no references file given")
        queries.append(row["prompt"])
        responses.append(row["text"])
        refs.append(ref)
        ids.append(qid)
        if "image" in row:
            image_path = path.parent / row["image"]
            if not image_path.is_file():
                raise InputError(f"{path}:{lineno}: image not found: {image_path}")
            images.append(image_path)
    if images and len(images) != len(rows):
        raise InputError(f"{path}: some records have an 'image' and others do not")
    if images and load_images:
        images = [open_image(p) for p in images]
    first = rows[0][1]
    meta = first["split_meta"] if isinstance(first.get("split_meta"), dict) else {}
    return ShiftSplit(name or path.stem, queries, responses, refs, images or None, ids, dict(meta))


def load_splits(
    paths: Sequence[str | os.PathLike], references: str | os.PathLike | None = None, *, load_images: bool = False
) -> list[ShiftSplit]:
    """Splits from files or folders (every ``*.jsonl`` in a folder, sorted; a ``references.jsonl`` is skipped)."""
    refs = load_references(references) if references is not None else None
    out: list[ShiftSplit] = []
    seen: set[Path] = set()  # a file given directly and again through its folder is read once, first position wins
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(f for f in p.glob("*.jsonl") if f.name != "references.jsonl")
            if not files:
                raise InputError(f"no .jsonl split files in {p}")
            local_refs = refs
            if local_refs is None and (p / "references.jsonl").is_file():
                local_refs = load_references(p / "references.jsonl")
        else:
            files, local_refs = [p], refs
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            out.append(load_split(f, local_refs, load_images=load_images))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise InputError(f"duplicate split names: {sorted({n for n in names if names.count(n) > 1})}")
    return out


#: Languages of the released natural-shift grid (queries translated, followed by " Please answer in English.").
LANGUAGES = ("English", "German", "Chinese", "Korean", "Greek", "Arabic", "Hindi")


def language_of(name: str) -> str | None:
    """The language suffix of a split name (``..._German`` -> ``German``), else None."""
    last = name.rsplit("_", 1)[-1]
    return last if last in LANGUAGES else None


def assign_language_control(splits: Sequence[ShiftSplit], id_name: str, control: str | None = None) -> str | None:
    """The reference protocol for natural-language shifts: the English version of the ID split
    (``<id_name>_English`` unless ``control`` is given) is the *control*, not a shift (family ``control``), and
    every translated split is compared against it (``meta["emid_against"]``). Returns the control's name, or None
    when the splits have no such control (nothing is changed then)."""
    names = {s.name for s in splits}
    control = control or f"{id_name}_English"
    if control not in names:
        if control != f"{id_name}_English":
            raise InputError(f"control split {control!r} is not among the splits")
        return None
    for s in splits:
        if s.name == control:
            s.meta["family"] = "control"
        elif s.name != id_name and language_of(s.name) not in (None, "English"):
            s.meta.setdefault("family", "natural")
            s.meta["emid_against"] = control
    return control


def llava_bench_conditions(name: str) -> dict[str, Any]:
    """The visual condition (``defocus_blur_3`` ...), its severity and the text condition of a LLaVA-Bench split."""
    base = name.removeprefix("llava_bench_coco").lstrip("_")
    out: dict[str, Any] = {"visual": None, "visual_severity": 0, "text": None}
    for v in ("defocus_blur", "frost"):
        if base.startswith(v):
            sev = base[len(v) + 1 :].split("_", 1)[0]
            out["visual"], out["visual_severity"] = f"{v}_{sev}", int(sev)
            base = base[len(out["visual"]) :].lstrip("_")
    if base.startswith(("KeyboardAug", "sr_")):
        out["text"] = base
    elif base:
        out["text"] = f"language:{base}"
    return out


def llava_bench_family(name: str) -> str:
    """Shift family of a LLaVA-Bench shift split name (the English translation is the natural grid's control)."""
    base = name.removeprefix("llava_bench_coco")
    if base == "":
        return "id"
    if base == "_English":
        return "control"
    visual = any(v in base for v in ("defocus_blur", "frost"))
    text = any(t in base for t in ("KeyboardAug", "sr_"))
    if visual and text:
        return "joint"
    if visual:
        return "visual"
    if text:
        return "text"
    return "natural"


def load_llava_bench_shift(
    root: str | os.PathLike, model: str = "llava-v1.5-13b", *, language_control: bool = True
) -> list[ShiftSplit]:
    """The shared LLaVA-Bench shift responses: ID split first (``llava_bench_coco``), then the shifted ones.
    ``language_control``: translations are compared against ``llava_bench_coco_English`` (the released protocol;
    it is a copy of the ID split, the control), else against the ID split."""
    root = Path(root)
    folder = root / "responses" / model
    if not folder.is_dir():
        raise InputError(f"no responses for model {model!r} under {root / 'responses'}")
    refs = load_references(root / "references" / "qa90_gpt4_answer.jsonl")
    splits = [load_split(f, refs) for f in sorted(folder.glob("*.jsonl"))]
    for s in splits:
        s.meta.setdefault("family", llava_bench_family(s.name))
        for key, value in llava_bench_conditions(s.name).items():
            s.meta.setdefault(key, value)
    splits.sort(key=lambda s: (s.name != "llava_bench_coco", s.name))
    if not splits or splits[0].name != "llava_bench_coco":
        raise InputError(f"{folder} has no in-distribution split llava_bench_coco.jsonl")
    if language_control:
        assign_language_control(splits, "llava_bench_coco")
    return splits


def load_released_results(root: str | os.PathLike, model: str = "llava-v1.5-13b") -> dict[str, dict[str, Any]]:
    """The released per-split numbers (EMI, EMID, bound) keyed by split name, merged over the result files."""
    root = Path(root) / "released-results"
    out: dict[str, dict[str, Any]] = {}
    files = sorted(root.glob(f"*{model}*.json"))
    if not files:
        raise InputError(f"no released results for {model} in {root}")
    for f in files:
        blob = json.loads(f.read_text())
        for key in ("EMI", "EMID", "EMID_UB"):
            for split, v in (blob.get(key) or {}).items():
                out.setdefault(split, {})[key] = float(v)
    return out
