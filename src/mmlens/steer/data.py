"""Reading a user's VQA data for steering: one JSONL, images relative to it (or none, for a text-only model)."""

from __future__ import annotations

import os
from pathlib import Path

from mmlens.errors import InputError
from mmlens.steer.evaluate import VQAExample


def _question(rec: dict, where: str) -> str:
    text = rec.get("question", rec.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: needs a 'question' (or 'prompt') string")
    return text


def load_vqa_jsonl(path: str | os.PathLike[str]) -> list[VQAExample]:
    """Examples from a JSONL whose lines are either one question (``image``, ``question`` or ``prompt``,
    optional ``answer`` and ``answer_type``) or a world export record (``image`` and a ``vqa`` list of
    ``{question, answer, answer_type, template}``, as ``mmlens world export`` writes). Lines without ``image`` are
    text-only (for a causal LM). Errors name the file and line."""
    from mmlens.world.export import load_pairs_jsonl, read_jsonl

    path = Path(path)
    raw = read_jsonl(path)
    if not raw:
        raise InputError(f"{path} is empty: it needs one JSON object per line")
    has_image = ["image" in rec for _, rec in raw]
    if any(has_image) and not all(has_image):
        line = raw[has_image.index(False)][0]
        raise InputError(f"{path}:{line}: missing 'image' (either every line has an image or none has)")
    records = load_pairs_jsonl(path, require_caption=False) if all(has_image) else [rec for _, rec in raw]
    out: list[VQAExample] = []
    for (lineno, _), rec in zip(raw, records):
        where = f"{path}:{lineno}"
        image = rec.get("image") if all(has_image) else None
        if isinstance(rec.get("vqa"), list):
            for q in rec["vqa"]:
                if not isinstance(q, dict):
                    raise InputError(f"{where}: 'vqa' must be a list of objects")
                out.append(
                    VQAExample(
                        image,
                        _question(q, where),
                        str(q.get("answer", "")),
                        str(q.get("answer_type", "")),
                        str(q.get("template", "")),
                    )
                )
        else:
            out.append(
                VQAExample(
                    image,
                    _question(rec, where),
                    str(rec.get("answer", "")),
                    str(rec.get("answer_type", "")),
                    str(rec.get("template", "")),
                )
            )
    if not out:
        raise InputError(f"{path} holds no questions")
    return out
