"""``mmlens influence``: Influence of training pairs on a contrastive model (ECIF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

influence_app = typer.Typer(help="Influence of training pairs on a contrastive model (ECIF).", no_args_is_help=True)


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/influence.json"),
) -> None:
    """The influence benchmark (being built)."""
    from mmlens.errors import MMLensError

    raise MMLensError("the influence benchmark is not built yet")
