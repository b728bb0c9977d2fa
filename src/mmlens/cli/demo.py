"""``mmlens demo``: the main job on the built-in default (the zoo on the miniature world)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder of the HTML report.")] = Path("mmlens-demo"),
    examples: Annotated[int, typer.Option(min=1, max=64, help="Example images per model in the report.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for choosing the examples.")] = 0,
) -> None:
    """Build the zoo if missing, evaluate it, and write a readable HTML report (OUT/index.html)."""
    from mmlens.report.demo import DemoConfig, run_demo

    index = run_demo(DemoConfig(out_dir=out, examples=examples, seed=seed))
    typer.echo(f"report: {index}")
