"""The ``mmlens`` command: a thin layer over the public API of each package.

User-caused problems (:class:`mmlens.errors.MMLensError`) are printed as one line on stderr with exit code 2;
anything else is a bug and keeps its traceback. Every command accepts ``--config FILE`` (YAML or TOML) and writes
the options it used beside its results (:mod:`mmlens.cli.config`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer

from mmlens.cli.align import align_app
from mmlens.cli.audit import audit_command
from mmlens.cli.bench import bench_app
from mmlens.cli.concepts import concepts_app
from mmlens.cli.config import add_config_support
from mmlens.cli.demo import demo_command
from mmlens.cli.influence import influence_app
from mmlens.cli.models import models_app
from mmlens.cli.shift import shift_app
from mmlens.cli.steer import steer_app
from mmlens.cli.world import world_app
from mmlens.cli.zoo import zoo_app
from mmlens.errors import MMLensError

app = typer.Typer(
    name="mmlens",
    help="Where a multimodal model's alignment breaks, why, and how to repair it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(zoo_app, name="zoo")
app.add_typer(world_app, name="world")
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
app.add_typer(shift_app, name="shift")
app.add_typer(influence_app, name="influence")
app.add_typer(concepts_app, name="concepts")
app.add_typer(steer_app, name="steer")
app.add_typer(align_app, name="align")
app.command("demo")(demo_command)
app.command("audit")(audit_command)


def command():
    """The click command tree of :data:`app` with ``--config FILE`` on every command (see
    :mod:`mmlens.cli.config`): what ``mmlens`` and ``python -m mmlens`` run."""
    return add_config_support(typer.main.get_command(app))


def main(argv: Sequence[str] | None = None) -> None:
    # Spinning OpenMP waits make torch 5-20x slower when another process shares the cores; must precede torch's import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        command().main(args=list(argv) if argv is not None else None, prog_name="mmlens")
    except MMLensError as err:
        print(f"mmlens: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["app", "command", "main"]
