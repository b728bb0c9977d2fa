"""``mmlens shift``: responses under distribution shift, and their EMI / EMID / bound analysis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mmlens.cli.config import is_main_process
from mmlens.cli.options import FieldOptions, config_options
from mmlens.shift.options import EstimatorKind, Fusion, ImageFeatureMode, Preset
from mmlens.shift.settings import GenerateConfig, ShiftConfig

shift_app = typer.Typer(
    help="Distribution-shift risk of a vision-language model: EMI, EMID and its bound.", no_args_is_help=True
)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


GENERATE_OPTIONS = FieldOptions(
    GenerateConfig,
    exclude=("scenarios",),  # made from --visual/--text/--severities/--joint
    help={
        "max_new_tokens": "Tokens generated per answer.",
        "batch_size": "Questions per generate call.",
        "seed": "Seed of the corruptions.",
    },
)
SHIFT_OPTIONS = FieldOptions(
    ShiftConfig,
    exclude=("estimator.seed",),  # one seed for the analysis: --seed
    aliases={
        "estimator.kind": ("--estimator",),
        "n_permutations": ("--permutations",),
        "n_bootstrap": ("--bootstrap",),
        "n_estimators": ("--estimator-seeds",),
    },
    help={
        "estimator.kind": "club is the reference.",
        "estimator_data": "pooled (transductive) is the reference.",
        "fusion": "average is the reference.",
        "bound": "scale_adjusted is the reference.",
        "h_hat": "Entropy constant of the theorem/compact bounds.",
        "log_base": "Units of every estimate: e (nats) or 2 (bits).",
        "mixture": "RJSD mixture; sample_size is the reference.",
        "term_values": "raw bound terms, or excess over their permutation null.",
        "n_permutations": "Permutations for each RJSD null.",
        "n_bootstrap": "Bootstrap resamples for EMI intervals.",
        "seed": "Seed of the estimators, permutations and bootstrap.",
        "n_estimators": "Estimators trained with different seeds; their spread enters every interval.",
        "dedup_pairs": "Drop exact duplicate (query, response) pairs before training the estimator.",
        "early_stopping_split": "Early-stopping hold-out of the estimator: by query group or by pair.",
    },
)


@shift_app.command("generate")
@config_options(generate=GENERATE_OPTIONS)
def generate_command(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")],
    out: Annotated[Path, typer.Option(help="Folder to write: one <split>.jsonl per shift scenario + images.")],
    generate: GenerateConfig,
    data: Annotated[
        Path | None,
        typer.Option(
            help="JSONL with image, prompt and reference per line (image path "
            "relative to the file) or the data.jsonl of `mmlens world export`, shifted here by the grid; or a folder "
            "of such JSONL files = your own splits, used as they are. "
            "Default: held-out world VQA of a world-trained zoo model."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=2, help="World items (without --data).")] = 200,
    visual: Annotated[str | None, typer.Option(help="Comma-separated visual shifts, e.g. defocus_blur,fog.")] = None,
    text: Annotated[str | None, typer.Option(help="Comma-separated text shifts, e.g. keyboard,synonym.")] = None,
    severities: Annotated[str, typer.Option(help="Comma-separated severities 1-5.")] = "1,3,5",
    joint: Annotated[bool, typer.Option(help="Also every visual x text pair at equal severity.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Run a vision-language model under a grid of shifts (default grid: 27 world shifts), or over your own split
    files, and write one response JSONL per split."""
    from mmlens.bench.world_sets import generate_world_splits
    from mmlens.errors import InputError
    from mmlens.models import VisionLanguageModel, load_model
    from mmlens.shift.generate import (
        default_scenarios,
        generate_for_splits,
        generate_responses,
        load_eval_records,
    )

    try:
        sev = [int(s) for s in _csv(severities)]
    except ValueError:
        raise InputError(f"--severities must be comma-separated integers 1-5, got {severities!r}") from None
    vs, ts = _csv(visual), _csv(text)
    scenarios: list[Any]
    if vs or ts:
        scenarios = (
            [(None, 0, None, 0)]
            + [(v, k, None, 0) for v in vs for k in sev]
            + [(None, 0, t, k) for t in ts for k in sev]
        )
        if joint:
            scenarios += [(v, k, t, k) for v in vs for t in ts for k in sev]
    else:
        scenarios = default_scenarios()
    config = dataclasses.replace(generate, scenarios=tuple(scenarios))
    if data is None:
        paths = generate_world_splits(model, out, n=n, config=config, overwrite=overwrite)
    elif data.is_dir():
        files = sorted(data.glob("*.jsonl"))
        if not files:
            raise InputError(f"no .jsonl split files in {data}")
        vlm = load_model(model, expect=VisionLanguageModel)
        paths = generate_for_splits(vlm, files, out, config, model_id=model, overwrite=overwrite)
    else:
        records = load_eval_records(data)
        vlm = load_model(model, expect=VisionLanguageModel)
        paths = generate_responses(
            vlm,
            [r["image"] for r in records],
            [r["prompt"] for r in records],
            [r["reference"] for r in records],
            out,
            config,
            model_id=model,
            item_ids=[r.get("question_id", i) for i, r in enumerate(records)],
            overwrite=overwrite,
        )
    if is_main_process():  # under a launcher every process gets here; one says so
        typer.echo(f"wrote {len(paths)} splits to {out}")


@shift_app.command("emi")
@config_options(config=SHIFT_OPTIONS)
def emi_command(
    id_split: Annotated[
        Path,
        typer.Option(
            "--id", help="In-distribution split JSONL (question_id, prompt, text, reference or --references)."
        ),
    ],
    ood: Annotated[list[Path], typer.Option(help="OOD split JSONL or folder of them; repeat for more.")],
    out: Annotated[Path, typer.Option(help="Report folder: index.html and data.json (the result).")],
    config: ShiftConfig,
    references: Annotated[Path | None, typer.Option(help="JSONL of question_id -> reference text.")] = None,
    preset: Annotated[
        Preset | None,
        typer.Option(
            help="reference = the EMI authors' pipeline: CLIP ViT-B/32 patch mean + xlm-roberta-base embedding layer "
            "(needs their weights: hub or --image-model/--text-model folders), average fusion, CLUB, translations "
            "against the English control."
        ),
    ] = None,
    text_embedder: Annotated[
        str | None,
        typer.Option(
            help="minilm | sentence:PATH | embedding-layer[:PATH] | hashing[:N] | lexical (default minilm; with "
            "--preset reference: embedding-layer:<--text-model>)"
        ),
    ] = None,
    text_model: Annotated[str | None, typer.Option(help="--preset reference: XLM-R hub id or folder.")] = None,
    image_model: Annotated[
        str | None,
        typer.Option(
            help="CLIP-like model for image features (e.g. zoo:mini-clip);"
            " omit for text-only queries. With --preset reference: "
            "CLIP hub id or folder (default ViT-B/32)."
        ),
    ] = None,
    image_mode: Annotated[
        ImageFeatureMode, typer.Option(help="patch_mean is the reference.")
    ] = ImageFeatureMode.PATCH_MEAN,
    estimator_file: Annotated[
        Path | None,
        typer.Option(
            help="Reuse a saved estimator (an mmlens estimator or ensemble file, or the authors' CLUB_global.pt) "
            "instead of training."
        ),
    ] = None,
    save_estimator: Annotated[Path | None, typer.Option(help="Save the trained estimator(s) here.")] = None,
    control: Annotated[
        str | None,
        typer.Option(
            help="Control split for translated splits (default with --preset reference: <id>_English if present)."
        ),
    ] = None,
) -> None:
    """EMI per split, EMID of every OOD split against the ID split, the bound's terms, correlations, HTML report."""
    from mmlens.errors import InputError
    from mmlens.models.embed import ClipImageEmbedder, reference_embedders
    from mmlens.models.embed import text_embedder as make_text_embedder
    from mmlens.shift.analysis import analyse
    from mmlens.shift.data import assign_language_control, load_splits
    from mmlens.shift.estimators import load_estimator
    from mmlens.shift.report import write_shift_report

    reference = preset is Preset.REFERENCE
    config = dataclasses.replace(config, estimator=dataclasses.replace(config.estimator, seed=config.seed))
    if reference and (config.fusion is not Fusion.AVERAGE or config.estimator.kind is not EstimatorKind.CLUB):
        raise InputError("--preset reference uses average fusion and the CLUB estimator; drop --fusion/--estimator")
    if not reference and text_model:
        raise InputError("--text-model belongs to --preset reference; otherwise use --text-embedder")
    load_images = image_model is not None or reference
    splits = load_splits([id_split, *ood], references, load_images=load_images)
    if reference or control:
        assign_language_control(splits, splits[0].name, control)
    est = load_estimator(estimator_file) if estimator_file else None
    has_images = any(s.images is not None for s in splits)
    if reference:
        if text_embedder:
            raise InputError("--preset reference fixes the text features; pass --text-model for another XLM-R copy")
        clip = image_model or "openai/clip-vit-base-patch32"
        texts: Any
        texts, image = reference_embedders(
            None if clip.startswith("zoo:") or not has_images else clip, text_model or "xlm-roberta-base"
        )
        if has_images and clip.startswith("zoo:"):
            image = ClipImageEmbedder(clip, mode=ImageFeatureMode.PATCH_MEAN)
    else:
        texts = make_text_embedder(text_embedder or "minilm")
        image = ClipImageEmbedder(image_model, mode=image_mode) if image_model else None
    result = analyse(splits, config, text_embedder=texts, image_embedder=image, estimator=est, id_split=splits[0].name)
    result.embedders["preset"] = preset.value if preset else None
    index = write_shift_report(result, out)
    if save_estimator:
        result.estimator.save(save_estimator)
        typer.echo(f"saved estimator to {save_estimator}")
    corr = result.correlations.get("emid_bound", {})
    typer.echo(
        json.dumps(
            {
                "splits": len(result.rows),
                "pearson_emid_bound": corr.get("pearson"),
                "pearson_emid_bound_ci": corr.get("pearson_ci"),
                "report": str(index),
            },
            indent=2,
        )
    )
