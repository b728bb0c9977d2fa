"""``mmlens world``: the miniature multimodal world and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

world_app = typer.Typer(
    help="The seeded miniature world: scenes, captions, VQA, POPE probes, shifts.", no_args_is_help=True
)


@world_app.command("export")
def export_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (PNG images + data.jsonl).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 200,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    bias_strength: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Co-occurrence of the biased object pairs (default: the world's, 0.75)."),
    ] = None,
    hf_dataset: Annotated[
        bool, typer.Option("--hf-dataset", help="Also save a Hugging Face `datasets` copy in OUT_DIR/hf.")
    ] = False,
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


@world_app.command("digits")
def digits_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (PNG images + data.jsonl of image, caption).")],
    split: Annotated[
        str, typer.Option(help="train or test (the split digits-clip was trained / evaluated on).")
    ] = "train",
    n: Annotated[int | None, typer.Option("--n", min=2, help="Number of pairs (default: the whole split).")] = None,
    swap_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Swap the captions of this share of the "
            "pairs (known misaligned pairs for "
            "`mmlens influence detect`; marked "
            "swapped: true).",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the captions and of the swap.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """Export scikit-learn's handwritten digits as image-caption pairs ("a handwritten seven"), the data of the zoo's
    digits-clip: the input of the influence example in the README."""
    import json

    from mmlens.influence.data import PairData, inject_noise
    from mmlens.io import atomic_folder
    from mmlens.world.digits import digits_pairs

    if split not in ("train", "test"):
        from mmlens.errors import InputError

        raise InputError(f"--split {split!r}: use train or test")
    pairs = digits_pairs(split, seed=seed, n=n)
    data = PairData(
        tuple(p.image for p in pairs), tuple(p.caption for p in pairs), labels=tuple(p.label for p in pairs)
    )
    noisy = inject_noise(data, swap_rate, "random_swap", seed=seed)
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for i, (pair, caption) in enumerate(zip(pairs, noisy.data.captions)):
                name = f"images/{split}-{i:05d}.png"
                pair.image.save(tmp / name, format="PNG")
                f.write(
                    json.dumps(
                        {
                            "image": name,
                            "caption": caption,
                            "label": pair.label,
                            "sklearn_index": pair.index,
                            "swapped": bool(noisy.is_noisy[i]),
                        }
                    )
                    + "\n"
                )
    typer.echo(f"wrote {len(pairs)} digit pairs ({int(noisy.is_noisy.sum())} swapped) to {out_dir / 'data.jsonl'}")
