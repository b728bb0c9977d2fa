"""``mmlens demo``: the audit of the built-in zoo on the miniature world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

demo_app = typer.Typer(add_completion=False)


@demo_app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder of the site (a rerun reuses the finished stages).")] = Path(
        "mmlens-demo"
    ),
    examples: Annotated[int, typer.Option(min=1, max=64, help="Example images per model on the zoo page.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the examples and the audits.")] = 0,
    clip_scenes: Annotated[int, typer.Option(min=16, help="World pairs of the mini-clip audit.")] = 400,
    swap_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Share of mini-clip's training captions swapped (the detection's ground truth)."
        ),
    ] = 0.1,
    llava_scenes: Annotated[int, typer.Option(min=16, help="World scenes of the mini-llava audit.")] = 300,
) -> None:
    """Audit the zoo (the models shipped with mmlens or built locally; a missing one is built first) on the
    miniature world (mini-clip: influence; mini-llava against mini-llava-colour: shift, concepts, steering,
    hallucination) into one HTML site (OUT/index.html)."""
    from mmlens.audit.demo import DemoConfig, run_demo

    index = run_demo(
        DemoConfig(
            out_dir=out,
            examples=examples,
            seed=seed,
            clip_scenes=clip_scenes,
            swap_rate=swap_rate,
            llava_scenes=llava_scenes,
        )
    )
    summary = json.loads((out / "audit.json").read_text())
    typer.echo(f"report: {index} (audits: {summary['audit_seconds']:.0f} s)")
