"""``mmlens steer``: Steering vision-language models with concept and shift vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

steer_app = typer.Typer(help="Steering vision-language models with concept and shift vectors.", no_args_is_help=True)


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/steer.json"),
) -> None:
    """The steer benchmark (being built)."""
    from mmlens.errors import MMLensError

    raise MMLensError("the steer benchmark is not built yet")
