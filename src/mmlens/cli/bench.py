"""``mmlens bench``: the measurements each capability reports in ``benchmarks/results/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Run a benchmark and write its JSON result.", no_args_is_help=True)


@bench_app.command("zoo")
def bench_zoo_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/zoo.json"),
) -> None:
    """Build the whole zoo from scratch in a fresh folder, time it and evaluate every model."""
    from mmlens import zoo
    from mmlens.report import write_json_atomic

    result = zoo.zoo_benchmark()
    write_json_atomic(out, result)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"written to {out}")
