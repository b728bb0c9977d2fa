"""``mmlens audit``: one command, one report: the analyses that apply to a model and its data, as a static site."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_GRID = "fog:3,fog:5,keyboard:3,keyboard:5"
ALL_STAGES = "influence,shift,concepts,steering,hallucination"


def audit_command(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")],
    data: Annotated[str, typer.Option(help="A folder in the layout of `mmlens world export` (data.jsonl with "
                                           "image, caption, vqa, objects, pope per record + images), or world / "
                                           "world:N (held-out scenes of the model's world).")],
    out: Annotated[Path, typer.Option(help="Folder of the site: index.html (summary), audit.json, one folder per "
                                           "analysis. A rerun reuses the stages whose settings did not change.")],
    finetuned: Annotated[str | None, typer.Option(help="A fine-tuned version of --model: what fine-tuning "
                                                           "moved (concepts, steering, hallucination).")] = None,
    corruption_grid: Annotated[str, typer.Option(help="Comma-separated shifts NAME:SEVERITY (visual: fog, "
                                                 "defocus_blur, gaussian_noise, contrast, jpeg, pixelate; text: "
                                                 "keyboard, synonym, paraphrase; joint: fog:3+keyboard:3).")]
    = DEFAULT_GRID,
    image_model: Annotated[str | None, typer.Option(help="CLIP-like model for the image side of the shift "
                                                            "analysis (e.g. zoo:mini-clip); default: text only.")]
    = None,
    text_embedder: Annotated[str, typer.Option(help="Text embedder of the shift analysis: minilm | sentence:PATH "
                                                    "| embedding-layer[:PATH] | hashing[:N].")] = "minilm",
    stages: Annotated[str, typer.Option(help="Comma-separated stages to consider (the others are reported as "
                                             "not requested).")] = ALL_STAGES,
    inject_swaps: Annotated[float, typer.Option(min=0.0, max=0.9, help="Swap this share of the training "
                                                                        "captions before influence (a check with "
                                                                        "known truth: reports the AUROC).")] = 0.0,
    val_fraction: Annotated[float, typer.Option(min=0.05, max=0.9, help="Share of the pairs held out for the "
                                                                         "influence value.")] = 0.25,
    shift_items: Annotated[int, typer.Option(min=4, help="Questions (one per image) under each shift.")] = 200,
    concept_items: Annotated[int, typer.Option(min=8, help="Questions captured for the concept dictionary.")] = 600,
    n_concepts: Annotated[int, typer.Option(min=2)] = 12,
    steer_items: Annotated[int, typer.Option(min=8, help="Questions for steering (half build, half evaluate).")]
    = 600,
    steer_layer: Annotated[int | None, typer.Option(help="Decoder layer of the steering vectors (default: the "
                                                            "middle one).")] = None,
    hallucination_images: Annotated[int, typer.Option(min=1, help="Images for POPE and CHAIR.")] = 150,
    world_scenes: Annotated[int, typer.Option(min=8, help="Scenes for --data world.")] = 400,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option(help="Recompute every stage, even unchanged ones.")] = False,
) -> None:
    """Run the analyses that apply to MODEL and DATA (influence for contrastive models; shift, concepts, steering
    and hallucination probes for vision-language models) and write one static HTML site (OUT/index.html)."""
    from mmlens.audit import (
        AuditConfig,
        ConceptsStage,
        HallucinationStage,
        InfluenceStage,
        ShiftStage,
        SteeringStage,
        parse_shift_grid,
        parse_stages,
        run_audit,
    )

    config = AuditConfig(
        model=model, data=data, out_dir=out, finetuned=finetuned, stages=parse_stages(stages),
        influence=InfluenceStage(val_fraction=val_fraction, inject_swap_rate=inject_swaps),
        shift=ShiftStage(grid=parse_shift_grid(corruption_grid), n_items=shift_items, image_model=image_model,
                         text_embedder=text_embedder, batch_size=batch_size),
        concepts=ConceptsStage(n_items=concept_items, n_concepts=n_concepts, batch_size=batch_size),
        steering=SteeringStage(layer=steer_layer, n_items=steer_items, batch_size=batch_size),
        hallucination=HallucinationStage(n_images=hallucination_images, batch_size=batch_size),
        world_scenes=world_scenes, seed=seed, force=force)
    result = run_audit(config)
    typer.echo(json.dumps({"report": str(result.index), "seconds": result.seconds,
                           "stages": {s.stage.value: s.status.value for s in result.stages}}, indent=2))
