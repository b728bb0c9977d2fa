"""Run a vision-language model over an evaluation set under a grid of shifts and write one JSONL per split.

Output folder: ``<split>.jsonl`` in the shared schema (``question_id``, ``prompt`` = the query actually fed,
``text`` = the response, ``reference``, ``image`` = path of the (shifted) image relative to the folder,
``model_id``, ``metadata`` with the shift and decoding settings, ``split_meta`` with the split's accuracy against
the reference when the references are exact answers), plus ``images/<split>/<i>.png`` and ``generation.json``.

Scenarios are ``(visual shift or None, text shift or None, severity)``; names follow
``clean``, ``<visual>_<s>``, ``<text>_<s>``, ``<visual>_<s>+<text>_<s>``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.io import atomic_folder, write_json_atomic
from mmlens.models.distributed import DistributedWork
from mmlens.progress import progress_bar
from mmlens.shift.settings import GenerateConfig as GenerateConfig
from mmlens.shift.settings import Scenario as Scenario


def scenario_name(s: Scenario) -> str:
    v, vs, t, ts = s
    parts = ([f"{v}_{vs}"] if v else []) + ([f"{t}_{ts}"] if t else [])
    return "+".join(parts) or "clean"


def scenario_family(s: Scenario) -> str:
    v, _, t, _ = s
    return "joint" if v and t else "visual" if v else "text" if t else "id"


def default_scenarios() -> list[Scenario]:
    """clean + 12 visual + 9 text + 6 joint = 28 scenarios (27 shifts)."""
    out: list[Scenario] = [(None, 0, None, 0)]
    for v in ("defocus_blur", "fog", "gaussian_noise", "contrast"):
        out += [(v, k, None, 0) for k in (1, 3, 5)]
    for t in ("keyboard", "synonym", "paraphrase"):
        out += [(None, 0, t, k) for k in (1, 3, 5)]
    out += [("defocus_blur", k, "keyboard", k) for k in (1, 3, 5)]
    out += [("gaussian_noise", k, "synonym", k) for k in (1, 3, 5)]
    return out


def _apply(images: Sequence[Any], prompts: Sequence[str], s: Scenario, seed: int) -> tuple[list, list[str]]:
    from mmlens.world.corruptions import corrupt_image, corrupt_text

    v, vs, t, ts = s
    imgs = [corrupt_image(im, v, vs, seed=seed + i) if v else im for i, im in enumerate(images)]
    texts = [corrupt_text(p, t, ts, seed=seed + i) if t else p for i, p in enumerate(prompts)]
    return imgs, texts


def _write_split(
    tmp: Path | None,
    name: str,
    vlm: Any,
    imgs: list,
    texts: list[str],
    references: list[str],
    item_ids: list,
    meta: dict,
    config: GenerateConfig,
    model_id: str,
    score: Callable[[str, str], bool] | None,
    work: DistributedWork,
) -> dict:
    """Generate one split (its batches split across processes) and, with ``tmp`` (the main process), write it."""
    import json

    answers = work.map_batches(
        lambda lo, hi: vlm.generate(
            imgs[lo:hi], texts[lo:hi], max_new_tokens=config.max_new_tokens, batch_size=config.batch_size
        ),
        len(texts),
        config.batch_size,
    )
    meta = dict(meta)
    if score is not None:
        meta["accuracy"] = float(np.mean([score(a, r) for a, r in zip(answers, references)]))
    if tmp is None:
        return {"split": name, **meta}
    img_dir = tmp / "images" / name
    img_dir.mkdir(parents=True)
    decoding = {"max_new_tokens": config.max_new_tokens, "do_sample": False, "seed": config.seed}
    lines = []
    for i, (im, q, a, r) in enumerate(zip(imgs, texts, answers, references)):
        im.save(img_dir / f"{i}.png")
        lines.append(
            json.dumps(
                {
                    "question_id": item_ids[i],
                    "prompt": q,
                    "text": a,
                    "reference": r,
                    "image": f"images/{name}/{i}.png",
                    "model_id": model_id,
                    "metadata": {"scenario": name, "decoding": decoding},
                    "split_meta": meta,
                }
            )
            + "\n"
        )
    (tmp / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    return {"split": name, **meta}


def generate_responses(
    vlm: Any,
    images: Sequence[Any],
    prompts: Sequence[str],
    references: Sequence[str],
    out_dir: str | os.PathLike,
    config: GenerateConfig = GenerateConfig(),
    *,
    model_id: str = "model",
    item_ids: Sequence[Any] | None = None,
    score: Callable[[str, str], bool] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    work: DistributedWork | None = None,
) -> list[Path]:
    """Generate responses of ``vlm`` (a ``VisionLanguageModel``) for every scenario of ``config`` (shifts applied
    here); write the split folder atomically. ``score(response, reference) -> bool`` adds ``accuracy`` to each
    split's ``split_meta``.

    Under ``accelerate launch`` (``work``: default :meth:`DistributedWork.from_environment`) each split's batches
    are split across the processes and gathered; the main process writes the folder, the texts are the
    single-process ones."""
    images, prompts, references = list(images), list(prompts), list(references)
    n = len(prompts)
    if n == 0:
        raise InputError("no evaluation items to generate responses for")
    if len(images) != n or len(references) != n:
        raise InputError(f"{len(images)} images, {n} prompts and {len(references)} references: need equal counts")
    item_ids = list(item_ids) if item_ids is not None else list(range(n))
    if len(item_ids) != n:
        raise InputError(f"{len(item_ids)} item ids for {n} prompts: need one id per item")
    out = Path(out_dir)
    work = work if work is not None else DistributedWork.from_environment()
    scenarios = list(config.scenarios)
    scenarios = progress_bar(scenarios, desc="shift scenarios", enabled=progress and work.is_main_process, leave=True)
    summary = []
    with _output_folder(out, overwrite, work) as tmp:
        for s in scenarios:
            imgs, texts = _apply(images, prompts, s, config.seed)
            meta = {
                "family": scenario_family(s),
                "visual_shift": s[0],
                "visual_severity": s[1],
                "text_shift": s[2],
                "text_severity": s[3],
            }
            summary.append(
                _write_split(
                    tmp, scenario_name(s), vlm, imgs, texts, references, item_ids, meta, config, model_id, score, work
                )
            )
        if tmp is not None:
            write_json_atomic(
                tmp / "generation.json",
                {"model_id": model_id, "n_items": n, "config": asdict(config), "splits": summary},
            )
    work.wait_for_everyone()
    return [out / f"{row['split']}.jsonl" for row in summary]


@contextlib.contextmanager
def _output_folder(out: Path, overwrite: bool, work: DistributedWork):
    """The main process's atomic folder (``None`` on the others). Every process checks ``out`` first, so that a
    refused folder stops all of them instead of leaving the others waiting at the next gather."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another output path")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) or choose another path")
    if not work.is_main_process:
        yield None
        return
    with atomic_folder(out, overwrite=overwrite) as tmp:
        yield tmp


def load_eval_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL of ``image`` (loaded), ``prompt`` and ``reference``, or the ``data.jsonl`` of
    ``mmlens world export`` (one record per question of each line's ``vqa`` list, its answer the reference, as
    ``mmlens steer`` and ``mmlens concepts`` read it); InputError if a record lacks a field."""
    from mmlens.world.export import load_pairs_jsonl

    records = []
    for i, r in enumerate(load_pairs_jsonl(path, require_caption=False)):
        if "prompt" not in r and isinstance(r.get("vqa"), list):
            for k, q in enumerate(r["vqa"]):
                if not isinstance(q, dict) or not isinstance(q.get("question"), str) or "answer" not in q:
                    raise InputError(f"{path}: record {i + 1}: each 'vqa' entry needs a 'question' and an 'answer'")
                item_id = f"{r.get('scene_id', i)}/{k}"
                records.append({**r, "prompt": q["question"], "reference": str(q["answer"]), "question_id": item_id})
            continue
        if "prompt" not in r or "reference" not in r:
            raise InputError(
                f"{path}: record {i + 1} needs 'prompt' and 'reference' fields (or a 'vqa' list of questions, "
                "as `mmlens world export` writes)"
            )
        records.append(r)
    if not records:
        raise InputError(f"{path} holds no questions")
    return records


def generate_for_splits(
    vlm: Any,
    split_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: GenerateConfig = GenerateConfig(),
    *,
    model_id: str = "model",
    overwrite: bool = False,
    progress: bool = True,
    work: DistributedWork | None = None,
) -> list[Path]:
    """User-provided splits (already shifted): each JSONL of ``image``, ``prompt``, ``reference`` (and optional
    ``question_id``) becomes ``<out_dir>/<stem>.jsonl`` with the model's responses; no shift is applied.
    Split across processes under ``accelerate launch`` as :func:`generate_responses`."""
    files = [Path(f) for f in split_files]
    if not files:
        raise InputError("no split files given")
    work = work if work is not None else DistributedWork.from_environment()
    summary = []
    iterator = files
    iterator = progress_bar(files, desc="splits", enabled=progress and work.is_main_process, leave=True)
    with _output_folder(Path(out_dir), overwrite, work) as tmp:
        for f in iterator:
            records = load_eval_records(f)
            summary.append(
                _write_split(
                    tmp,
                    f.stem,
                    vlm,
                    [r["image"] for r in records],
                    [r["prompt"] for r in records],
                    [r["reference"] for r in records],
                    [r.get("question_id", i) for i, r in enumerate(records)],
                    {"family": "user"},
                    config,
                    model_id,
                    None,
                    work,
                )
            )
        if tmp is not None:
            write_json_atomic(
                tmp / "generation.json", {"model_id": model_id, "config": asdict(config), "splits": summary}
            )
    work.wait_for_everyone()
    return [Path(out_dir) / f"{row['split']}.jsonl" for row in summary]
