"""The data of an audit: a folder in the layout of ``mmlens world export`` (``data.jsonl`` + images), or the built-in
world (``world`` / ``world:N``, exported into the audit folder first, so every stage reads the same files).

Each record has ``image`` (a path relative to ``data.jsonl``) and, as far as the user has them, ``caption``,
``vqa`` (a list of ``{question, answer, answer_type}``), ``objects`` (the object names in the image) and ``pope``
(``{question, label, kind}`` probes). A stage that needs a field no record has is skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlens.errors import InputError, MMLensError

WORLD_PREFIX = "world"
DATA_FILE = "data.jsonl"


@dataclass(frozen=True)
class AuditData:
    """The validated records of ``folder/data.jsonl``; ``records[i]["image"]`` is a loaded RGB image and
    ``records[i]["image_path"]`` its absolute path."""

    folder: Path
    records: tuple[dict[str, Any], ...]
    fingerprint: str

    @property
    def jsonl(self) -> Path:
        return self.folder / DATA_FILE

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_captions(self) -> bool:
        return all(isinstance(r.get("caption"), str) and r["caption"].strip() for r in self.records)

    def questions(self) -> list[dict[str, Any]]:
        """Every VQA item with its record index: ``{record, question, answer, answer_type, template}``."""
        out = []
        for i, r in enumerate(self.records):
            for q in r.get("vqa") or ():
                if isinstance(q, dict) and isinstance(q.get("question"), str):
                    out.append(
                        {
                            "record": i,
                            "question": q["question"],
                            "answer": str(q.get("answer", "")),
                            "answer_type": str(q.get("answer_type", "")),
                            "template": str(q.get("template", "")),
                        }
                    )
        return out

    @property
    def has_yes_no(self) -> bool:
        answers = {q["answer"].strip().lower() for q in self.questions()}
        return {"yes", "no"} <= answers

    @property
    def has_objects(self) -> bool:
        return any(isinstance(r.get("objects"), list) and r["objects"] for r in self.records)

    @property
    def has_pope(self) -> bool:
        return any(isinstance(r.get("pope"), list) and r["pope"] for r in self.records)


def _fingerprint(folder: Path, records: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256((folder / DATA_FILE).read_bytes())
    for r in records:
        digest.update(Path(r["image_path"]).read_bytes())
    return digest.hexdigest()[:16]


def load_audit_data(folder: str | Path) -> AuditData:
    """Read and validate an exported folder: InputError for a missing folder or file, an empty dataset, a
    record without an image, or an unreadable image."""
    from mmlens.world.export import load_pairs_jsonl

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"data folder {folder} not found: give a folder with {DATA_FILE} (as `mmlens world export` "
            "writes) or 'world' / 'world:N'"
        )
    if not (folder / DATA_FILE).is_file():
        raise InputError(f"{folder} has no {DATA_FILE}: the audit reads the layout of `mmlens world export`")
    records = load_pairs_jsonl(folder / DATA_FILE, require_caption=False)  # errors name file and line
    return AuditData(folder.resolve(), tuple(records), _fingerprint(folder, records))


def parse_world_spec(spec: str, default_scenes: int) -> int | None:
    """The number of scenes of a ``world`` / ``world:N`` spec, or None if ``spec`` is not one."""
    if spec != WORLD_PREFIX and not spec.startswith(WORLD_PREFIX + ":"):
        return None
    _, _, count = spec.partition(":")
    if not count:
        return default_scenes
    try:
        n = int(count)
    except ValueError:
        raise InputError(f"data {spec!r}: write world:N with N a number of scenes") from None
    if n < 8:
        raise InputError(f"data {spec!r}: the audit needs at least 8 scenes")
    return n


def world_of_model(model: str):
    """The world a zoo model was trained on (its held-out split is the natural audit data), else the default."""
    from mmlens.world import World, WorldConfig
    from mmlens.zoo import world_of

    try:
        return world_of(model)
    except MMLensError:  # no recorded world (a hub id, a user's folder): the default world
        return World(WorldConfig(), seed=0)


def export_world_data(model: str, n_scenes: int, root: Path) -> Path:
    """Export ``n_scenes`` held-out scenes of the model's world into ``root/world-<n>-<hash>`` (reused when the
    same world was exported there before)."""
    from mmlens.world.export import export_world

    world = world_of_model(model)
    key = hashlib.sha256(
        json.dumps([world.cfg.to_dict(), world.seed, n_scenes], sort_keys=True, default=str).encode()
    ).hexdigest()[:10]
    folder = root / f"world-{n_scenes}-{key}"
    if not (folder / DATA_FILE).is_file():
        export_world(folder, world, n_scenes, split="test", overwrite=True)
    return folder


__all__ = ["AuditData", "export_world_data", "load_audit_data", "parse_world_spec", "world_of_model"]
