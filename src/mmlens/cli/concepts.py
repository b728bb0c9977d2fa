"""``mmlens concepts``: Concept dictionaries over hidden states and what fine-tuning shifted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

concepts_app = typer.Typer(help="Concept dictionaries over hidden states and what fine-tuning shifted.", no_args_is_help=True)


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/concepts.json"),
) -> None:
    """The concepts benchmark (being built)."""
    from mmlens.errors import MMLensError

    raise MMLensError("the concepts benchmark is not built yet")
