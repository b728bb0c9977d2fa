"""``mmlens zoo``: build, list, evaluate and ship the built-in models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

zoo_app = typer.Typer(
    help="The built-in model zoo: shipped with mmlens, or built on this machine from the miniature world.",
    no_args_is_help=True,
)


@zoo_app.command("build")
def build_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to build (default: all but the opt-in mini-llava-prior). Dependencies are built first."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Rebuild the named models (default: all) locally even if built or shipped; a local build overrides "
            "the shipped copy. Their dependencies are built only if missing."
        ),
    ] = False,
) -> None:
    """Train the zoo models that are neither built nor shipped with mmlens, into $MMLENS_HOME/zoo (default
    ~/.cache/mmlens/zoo)."""
    from mmlens import zoo

    metrics = zoo.build(names or None, force=force)
    for name, values in metrics.items():
        typer.echo(f"{name} ({zoo.source_of(name)}): {json.dumps(_headline(values))}")


@zoo_app.command("list")
def list_command() -> None:
    """Print every zoo model, where it loads from (a local build overrides the shipped copy), and its headline
    metrics. Shipped models are checked against the shipped manifest."""
    from mmlens import zoo

    shipped = zoo.shipped_dir()
    manifest = zoo.read_manifest()
    typer.echo("lookup order: 1. local builds, 2. models shipped with mmlens")
    typer.echo(f"  1. {zoo.zoo_dir()}  ($MMLENS_HOME/zoo)")
    if shipped is None:
        typer.echo(f"  2. none ({zoo.SHIPPED_ENV}=none)")
    elif not manifest:
        typer.echo(f"  2. {shipped}  (nothing shipped: no manifest.json)")
    else:
        typer.echo(f"  2. {shipped}  ({len(manifest['models'])} models, {manifest.get('recipes', '?')} recipes)")
    for entry in zoo.zoo_status(verify=True):
        if entry.source is None:
            status = "missing"
            details = "(opt-in: `mmlens zoo build " + entry.name + "`)" if entry.opt_in else ""
        else:
            status = entry.source
            details = json.dumps(_headline(entry.record)) if entry.record else ""
            if entry.overrides_shipped:
                details += "  [overrides the shipped copy]"
        if entry.problem:
            status, details = "CORRUPT", entry.problem
        typer.echo(f"  {status:<8} {entry.name:<27} {details}")


@zoo_app.command("ship")
def ship_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to ship (default: all but the opt-in ones); their dependencies ship with them."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="The MMLENS_HOME whose zoo/ holds the built models (default: $MMLENS_HOME)."),
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option(help="The shipped folder to replace (default: the package's mmlens/zoo/shipped)."),
    ] = None,
    recipes: Annotated[
        str,
        typer.Option(help="Check each record against the `default` recipes, or the `smoke` budget (tests only)."),
    ] = "default",
) -> None:
    """Replace the zoo shipped with mmlens by built models: checks that each was built with its recipe and after
    its dependencies, copies it (mini-llava-colour without its checkpoints) and writes the manifest of sizes and
    sha256 hashes that every load verifies."""
    from mmlens import zoo

    manifest = zoo.ship(names or None, source=source, dest=to, recipes=recipes)
    where = to if to is not None else zoo.shipped_dir()
    total = sum(m["bytes"] for m in manifest["models"].values())
    for name, entry in manifest["models"].items():
        skipped = f" (without {', '.join(entry['excluded'])})" if entry["excluded"] else ""
        typer.echo(f"  {name:<27} {entry['bytes'] / 1e6:6.1f} MB{skipped}")
    typer.echo(f"shipped {len(manifest['models'])} models ({total / 1e6:.1f} MB) from {manifest['source']} to {where}")


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
