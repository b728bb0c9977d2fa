"""``mmlens world``: the miniature multimodal world and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

world_app = typer.Typer(help="The seeded miniature world: scenes, captions, VQA, POPE probes, shifts.", no_args_is_help=True)


@world_app.command("export")
def export_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (PNG images + data.jsonl).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 200,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    bias_strength: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Co-occurrence of the biased object pairs (default: the world's, 0.75).")] = None,
    hf_dataset: Annotated[bool, typer.Option("--hf-dataset", help="Also save a Hugging Face `datasets` copy in OUT_DIR/hf.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """Export scenes as PNG images and a JSONL of captions, VQA, objects and POPE ground truth."""
    import dataclasses

    from mmlens.world import World, WorldConfig
    from mmlens.world.export import export_world, to_hf_dataset

    config = WorldConfig() if bias_strength is None else dataclasses.replace(WorldConfig(), bias_strength=bias_strength)
    world = World(config, seed=seed)
    path = export_world(out_dir, world, n=n, split=split, overwrite=overwrite)
    typer.echo(f"wrote {n} scenes to {path}")
    if hf_dataset:
        dataset = to_hf_dataset(path)
        dataset.save_to_disk(str(Path(out_dir) / "hf"))
        typer.echo(f"wrote a datasets copy to {Path(out_dir) / 'hf'}")
