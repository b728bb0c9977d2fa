"""``mmlens zoo``: build, list and evaluate the built-in models."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

zoo_app = typer.Typer(
    help="The built-in model zoo, trained on this machine from the miniature world.", no_args_is_help=True
)


@zoo_app.command("build")
def build_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to build (default: all but the opt-in mini-llava-prior). Dependencies are built first."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if already built.")] = False,
) -> None:
    """Train the zoo models that are missing and cache them (in $MMLENS_HOME/zoo, default ~/.cache/mmlens/zoo)."""
    from mmlens import zoo

    metrics = zoo.build(names or None, force=force)
    for name, values in metrics.items():
        typer.echo(f"{name}: {json.dumps(_headline(values))}")


@zoo_app.command("list")
def list_command() -> None:
    """Print every zoo model, whether it is built, and its headline metrics."""
    from mmlens import zoo

    typer.echo(f"zoo folder: {zoo.zoo_dir()}")
    for name, built, metrics in zoo.list_zoo():
        status = "built  " if built else "missing"
        details = json.dumps(_headline(metrics)) if metrics else ""
        typer.echo(f"  {status} {name:<20} {details}")


@zoo_app.command("eval")
def eval_command(name: Annotated[str, typer.Argument(help="A built zoo model.")]) -> None:
    """Re-evaluate a built zoo model from disk and print its metrics."""
    from mmlens import zoo

    typer.echo(json.dumps(zoo.evaluate(name), indent=2))


def _headline(metrics: dict | None) -> dict:
    """The numbers worth a line: top-level numbers and small nested groups of rates (e.g. VQA accuracy per type)."""
    if not metrics:
        return {}
    keep: dict[str, Any] = {}
    for key, value in metrics.get("metrics", metrics).items():
        if isinstance(value, float):
            keep[key] = round(value, 4)
        elif isinstance(value, int) and not isinstance(value, bool):
            keep[key] = value
        elif isinstance(value, dict) and len(value) <= 3 and all(isinstance(v, float) for v in value.values()):
            keep[key] = {k: round(float(v), 4) for k, v in value.items()}
    return keep
