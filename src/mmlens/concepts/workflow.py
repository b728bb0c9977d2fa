"""The three steps behind ``mmlens concepts extract | learn | compare``, on folders.

An *extraction folder* holds a capture (safetensors shards + ``manifest.json``, resumable), ``inputs.jsonl`` (per
input: image path, prompt, reference, ground-truth attributes) and ``source.json`` (which model made it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmlens.concepts.compare import CompareConfig, Drift, ShiftAnalysis, compare_models, concept_drift
from mmlens.concepts.decompose import ConceptDictionary, DecomposerConfig
from mmlens.concepts.grounding import TextGrounder, TextGroundingConfig
from mmlens.concepts.report import dictionary_summary, write_comparison_report, write_dictionary_report
from mmlens.errors import InputError
from mmlens.io import write_json_atomic, write_jsonl_atomic
from mmlens.models.capture import CaptureConfig, CaptureResult, capture_activations, common_samples, load_capture

INPUTS = "inputs.jsonl"
SOURCE = "source.json"


class ImageFiles(Sequence):
    """Images opened on access: a report shows a few top samples, not every input."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        try:
            with Image.open(self.paths[int(index)]) as image:
                return image.convert("RGB")
        except OSError as err:
            raise InputError(f"cannot read image {self.paths[int(index)]}: {err}") from err


@dataclass
class Extraction:
    """An extraction folder, read back: the capture, its inputs and the model spec that made it."""

    folder: Path
    capture: CaptureResult
    inputs: list[dict[str, Any]]
    model: str

    def images(self) -> ImageFiles | None:
        paths = [r.get("image") for r in self.inputs]
        return ImageFiles([str(p) for p in paths]) if all(paths) else None

    def attributes(self, rows: Sequence[int]) -> dict[str, list[str]] | None:
        """Ground-truth attributes of the given inputs, for the attributes every input has."""
        names = set.intersection(*(set(r.get("attributes", {})) for r in self.inputs)) if self.inputs else set()
        if not names:
            return None
        return {n: [str(self.inputs[i]["attributes"][n]) for i in rows] for n in sorted(names)}


def world_inputs(out_dir: Path, n_scenes: int, word: str | None, seed: int = 0) -> list[dict[str, Any]]:
    """World "what shape is the <colour> object ?" items, images written under ``out_dir/images``."""
    from mmlens.concepts.world_data import shape_question_items
    from mmlens.world import World, WorldConfig

    items = shape_question_items(World(WorldConfig(), seed=seed), n_scenes, shape=word)
    if not items:
        raise InputError(f"no world question has the answer {word!r} in {n_scenes} scenes: use a shape word")
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for it in items:
        path = image_dir / f"scene-{it.scene_index:06d}.png"
        if not path.is_file():
            it.image.save(path)
        records.append(
            {"image": str(path.resolve()), "prompt": it.prompt, "reference": it.answer, "attributes": it.attributes}
        )
    return records


def read_inputs(path: Path, *, need_images: bool) -> list[dict[str, Any]]:
    """A user's JSONL: ``prompt`` (or ``question``), optional ``reference`` (or ``answer``) and ``attributes``, and
    ``image`` (relative to the file); or the ``data.jsonl`` of ``mmlens world export`` (one input per question of
    each record's ``vqa`` list)."""
    from mmlens.world.export import load_pairs_jsonl, read_jsonl

    if need_images:
        records = load_pairs_jsonl(path, load_images=False, require_caption=False)
        for r in records:
            r["image"] = r["image_path"]
    else:
        records = [rec for _, rec in read_jsonl(path)]
        if not records:
            raise InputError(f"{path} is empty; it needs one JSON object with a 'prompt' per line")
    inputs = []
    for i, r in enumerate(records):
        if "prompt" not in r and isinstance(r.get("vqa"), list):
            # a record of `mmlens world export` (as `mmlens steer` reads it): one input per question
            for q in r["vqa"]:
                if not isinstance(q, dict) or not isinstance(q.get("question"), str):
                    raise InputError(f"{path}: record {i + 1}: each 'vqa' entry needs a 'question' string")
                inputs.append(
                    {
                        "image": r.get("image"),
                        "prompt": q["question"],
                        "reference": q.get("answer"),
                        "attributes": {"answer_type": q.get("answer_type", ""), "template": q.get("template", "")},
                    }
                )
            continue
        # 'question'/'answer' as `mmlens steer` reads them: one JSONL serves both commands
        prompt = r.get("prompt", r.get("question"))
        if not isinstance(prompt, str):
            raise InputError(
                f"{path}: record {i + 1} needs a 'prompt' (or 'question') string, or a 'vqa' list of questions, as "
                "`mmlens world export` writes"
            )
        inputs.append(
            {
                "image": r.get("image"),
                "prompt": prompt,
                "reference": r.get("reference", r.get("answer")),
                "attributes": r.get("attributes", {}),
            }
        )
    return inputs


def extract(
    model_spec: str,
    out_dir: str | os.PathLike[str],
    config: CaptureConfig,
    *,
    data: str | os.PathLike[str] | None = None,
    n_scenes: int = 2000,
    progress: bool = True,
) -> Extraction:
    """Capture ``model_spec``'s activations on ``data`` (or world shape questions) into ``out_dir`` (resumable)."""
    from mmlens.models import CausalLanguageModel, VisionLanguageModel, load_model

    if data is not None and not Path(data).is_file():  # before the (possibly slow) model load
        raise InputError(f"{data} not found; give the path of an existing JSONL file")
    model = load_model(model_spec)
    if not isinstance(model, (VisionLanguageModel, CausalLanguageModel)):
        raise InputError(f"{model_spec} is not a generative model: concepts need a vision-language model or causal LM")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    text_only = isinstance(model, CausalLanguageModel)
    if data is None:
        if text_only:
            raise InputError("a text-only model needs --data (a JSONL of prompts)")
        word = config.position.words[0] if config.position.words else None
        inputs = world_inputs(root, n_scenes, word)
    else:
        inputs = read_inputs(Path(data), need_images=not text_only)
    # ImageFiles turns an unreadable image into an InputError (a clear one-line error, not a traceback); read
    # them before anything is written
    images = None if text_only else list(ImageFiles([r["image"] for r in inputs]))
    write_jsonl_atomic(root / INPUTS, inputs)
    write_json_atomic(root / SOURCE, {"model": model_spec})
    references = [r.get("reference") or "" for r in inputs]
    if config.require_in_ground_truth and not any(r.get("reference") for r in inputs):
        raise InputError("the ground-truth filter needs a 'reference' in the input records")
    result = capture_activations(
        model, images, [r["prompt"] for r in inputs], config, ground_truths=references, out_dir=root, progress=progress
    )
    return Extraction(root, result, inputs, model_spec)


def open_extraction(folder: str | os.PathLike[str]) -> Extraction:
    root = Path(folder)
    capture = load_capture(root)
    inputs_path, source_path = root / INPUTS, root / SOURCE
    if not inputs_path.is_file() or not source_path.is_file():
        raise InputError(f"{root} is not an extraction folder (run `mmlens concepts extract` first)")
    inputs = [json.loads(line) for line in inputs_path.read_text().splitlines() if line.strip()]
    return Extraction(root, capture, inputs, json.loads(source_path.read_text())["model"])


def _grounder(model_spec: str, text: TextGroundingConfig) -> TextGrounder:
    from mmlens.models import load_model

    return TextGrounder.from_model(load_model(model_spec), text)


def _features(ex: Extraction, layer: str) -> np.ndarray:
    if layer not in ex.capture.activations:
        raise InputError(f"layer {layer!r} was not captured in {ex.folder}; captured: {', '.join(ex.capture.keys)}")
    feats = ex.capture.activations[layer].double().numpy()
    if not len(feats):
        raise InputError(f"the capture in {ex.folder} kept no sample (check the token of interest and filters)")
    return feats


def learn(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    decomposer: DecomposerConfig,
    *,
    layer: str = "final_norm",
    text: TextGroundingConfig | None = None,
    model_spec: str | None = None,
    n_top: int = 5,
) -> dict[str, Any]:
    """Fit a dictionary on an extraction, ground it, write ``index.html``, ``data.json`` and the dictionary."""
    ex = open_extraction(folder)
    feats = _features(ex, layer)
    dictionary = ConceptDictionary(decomposer).fit(feats)
    grounder = _grounder(model_spec or ex.model, text or TextGroundingConfig())
    words = grounder(dictionary.components_)
    rows = ex.capture.sample_index.tolist()
    summary = dictionary_summary(dictionary, feats, words, n_top=n_top, attributes=ex.attributes(rows), sample_ids=rows)
    summary.update(layer=layer, extraction=str(ex.folder), model=model_spec or ex.model)
    index = write_dictionary_report(summary, ex.images(), out_dir)
    dictionary.save(Path(out_dir) / "dictionary.safetensors")
    summary["report"] = str(index)
    return summary


def _step_of(spec: str, fallback: int) -> int:
    match = re.search(r"step-(\d+)", spec)
    return int(match.group(1)) if match else fallback


def compare(
    folder_a: str | os.PathLike[str],
    folder_b: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: CompareConfig,
    *,
    layer: str = "final_norm",
    text: TextGroundingConfig | None = None,
    drift_folders: Sequence[str | os.PathLike[str]] = (),
    model_a: str | None = None,
    model_b: str | None = None,
) -> tuple[ShiftAnalysis, Drift | None, Path]:
    """Shift analysis of two extractions of the same inputs (common samples), plus drift over checkpoint
    extractions; writes the comparison report."""
    text = text or TextGroundingConfig()
    ex_a, ex_b = open_extraction(folder_a), open_extraction(folder_b)
    if ex_a.capture.metadata.get("inputs_fingerprint") != ex_b.capture.metadata.get("inputs_fingerprint"):
        raise InputError(f"{ex_a.folder} and {ex_b.folder} were extracted from different inputs")
    a, b = common_samples(ex_a.capture, ex_b.capture)
    _features(ex_a, layer), _features(ex_b, layer)
    ground_a, ground_b = _grounder(model_a or ex_a.model, text), _grounder(model_b or ex_b.model, text)
    analysis = compare_models(a.activations[layer], b.activations[layer], config, ground_a=ground_a, ground_b=ground_b)
    drift = None
    if drift_folders:
        exs = [open_extraction(f) for f in drift_folders]
        shared = sorted(set.intersection(*(set(e.capture.sample_index.tolist()) for e in [ex_a, *exs])))
        if len(shared) < config.decomposer.n_concepts:
            raise InputError(
                f"only {len(shared)} samples are kept by every checkpoint: too few for "
                f"{config.decomposer.n_concepts} concepts"
            )
        base = ex_a.capture.select(shared).activations[layer].double().numpy()
        feats = [e.capture.select(shared).activations[layer].double().numpy() for e in exs]
        steps = [_step_of(e.model, i) for i, e in enumerate(exs)]
        drift = concept_drift(base, feats, steps, ground_a, [_grounder(e.model, text) for e in exs], config.decomposer)
    rows = a.sample_index.tolist()
    index = write_comparison_report(
        analysis,
        out_dir,
        drift=drift,
        images=ex_a.images(),
        sample_ids=rows,
        extra={"a": str(ex_a.folder), "b": str(ex_b.folder), "layer": layer, "n_common": len(rows)},
    )
    return analysis, drift, index
