"""``mmlens audit``: one command, one report: the analyses that apply to a model and its data, as a static site.

Its options are the fields of :class:`mmlens.audit.AuditConfig` and of each stage's config (``--shift-n-items``,
``--influence-val-fraction``, ...): a field added to a stage config is an option here without a change.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Annotated

import typer

from mmlens.audit.config import AuditConfig, Stage, parse_shift_grid, parse_stages
from mmlens.cli.options import Converter, FieldOptions, config_options

if TYPE_CHECKING:
    from mmlens.audit.config import Scenario

audit_app = typer.Typer(add_completion=False)


def _show_grid(grid: tuple[Scenario, ...]) -> str:
    """The text of a shift grid (without its leading clean scenario), as :func:`parse_shift_grid` reads it."""
    parts = []
    for visual, v_level, text, t_level in grid[1:]:
        items = ([f"{visual}:{v_level}"] if visual else []) + ([f"{text}:{t_level}"] if text else [])
        parts.append("+".join(items))
    return ",".join(parts)


AUDIT_OPTIONS = FieldOptions(
    AuditConfig,
    aliases={
        "model": ("-m",),
        "out_dir": ("--out",),
        "shift.grid": ("--corruption-grid",),
        "influence.inject_swap_rate": ("--inject-swaps",),
        "influence.val_fraction": ("--val-fraction",),
        "shift.n_items": ("--shift-items",),
        "concepts.n_items": ("--concept-items",),
        "concepts.n_concepts": ("--n-concepts",),
        "steering.n_items": ("--steer-items",),
        "steering.layer": ("--steer-layer",),
        "hallucination.n_images": ("--hallucination-images",),
        "shift.image_model": ("--image-model",),
        "shift.text_embedder": ("--text-embedder",),
    },
    help={
        "model": "zoo:NAME, a local folder or a Hugging Face id.",
        "data": "A folder in the layout of `mmlens world export` (data.jsonl with image, caption, vqa, objects, "
        "pope per record + images), or world / world:N (held-out scenes of the model's world).",
        "out_dir": "Folder of the site: index.html (summary), audit.json, one folder per analysis. A rerun reuses "
        "the stages whose settings did not change.",
        "finetuned": "A fine-tuned version of --model: what fine-tuning moved (concepts, steering, hallucination).",
        "stages": "Comma-separated stages to consider (the others are reported as not requested): "
        + ", ".join(s.value for s in Stage)
        + ".",
        "shift.grid": "Comma-separated shifts NAME:SEVERITY (visual: fog, defocus_blur, gaussian_noise, contrast, "
        "jpeg, pixelate; text: keyboard, synonym, paraphrase; joint: fog:3+keyboard:3).",
        "shift.image_model": "CLIP-like model for the image side of the shift analysis (e.g. zoo:mini-clip); "
        "default: text only.",
        "shift.text_embedder": "Text embedder of the shift analysis: minilm | sentence:PATH | "
        "embedding-layer[:PATH] | hashing[:N].",
        "steering.layer": "Decoder layer of the steering vectors (default: the middle one).",
        "world_scenes": "Scenes for --data world.",
        "force": "Recompute every stage, even unchanged ones.",
    },
    converters={
        "stages": Converter(parse_stages, lambda stages: ",".join(Stage(s).value for s in stages)),
        "shift.grid": Converter(parse_shift_grid, _show_grid),
    },
)


@audit_app.command("audit")
@config_options(config=AUDIT_OPTIONS)
def audit_command(
    config: AuditConfig,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Batch size of every stage (overrides each --<stage>-batch-size).")
    ] = None,
) -> None:
    """Run the analyses that apply to MODEL and DATA (influence for contrastive models; shift, concepts, steering
    and hallucination probes for vision-language models) and write one static HTML site (OUT/index.html)."""
    from mmlens.audit import run_audit

    if batch_size is not None:
        config = dataclasses.replace(
            config,
            **{
                stage.value: dataclasses.replace(config.stage_config(stage), batch_size=batch_size)
                for stage in Stage
                if hasattr(config.stage_config(stage), "batch_size")
            },
        )

    result = run_audit(config)
    typer.echo(
        json.dumps(
            {
                "report": str(result.index),
                "seconds": result.seconds,
                "stages": {s.stage.value: s.status.value for s in result.stages},
            },
            indent=2,
        )
    )
