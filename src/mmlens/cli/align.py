"""``mmlens align``: Preference alignment against hallucination: BDHS pairs, DPO, POPE/CHAIR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

align_app = typer.Typer(help="Preference alignment against hallucination: BDHS pairs, DPO, POPE/CHAIR.", no_args_is_help=True)


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/align.json"),
) -> None:
    """The align benchmark (being built)."""
    from mmlens.errors import MMLensError

    raise MMLensError("the align benchmark is not built yet")
