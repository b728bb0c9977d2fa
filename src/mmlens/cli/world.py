"""``mmlens world``: the miniature multimodal world and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmlens.cli.options import Converter, FieldOptions, config_options
from mmlens.world.core import WorldConfig

world_app = typer.Typer(
    help="The seeded miniature world: scenes, captions, VQA, POPE probes, shifts.", no_args_is_help=True
)


def _parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    from mmlens.errors import InputError

    pairs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        parts = item.split(":")
        if len(parts) != 2:
            raise InputError(f"--bias-pairs must be comma-separated ANCHOR:PARTNER pairs, got {text!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return tuple(pairs)


WORLD_OPTIONS = FieldOptions(
    WorldConfig,
    panel="The world (defaults: the world of the zoo)",
    help={
        "image_size": "Image side in pixels.",
        "grid_size": "Cells per side (1-3); at most one object per cell.",
        "shapes": "Comma-separated object classes.",
        "colours": "Comma-separated colours.",
        "backgrounds": "Comma-separated backgrounds.",
        "min_objects": "Fewest objects per scene.",
        "max_objects": "Most objects per scene.",
        "bias_pairs": "Comma-separated ANCHOR:PARTNER classes: the partner appears with the anchor at --bias-strength.",
        "bias_strength": "Co-occurrence of the biased object pairs.",
        "caption_leak": "Share of captions that name an absent partner of a present anchor (noisy captions).",
        "split_fractions": "Share of the scene space of train, val, test (three numbers).",
    },
    converters={"bias_pairs": Converter(_parse_pairs, lambda pairs: ",".join(f"{a}:{b}" for a, b in pairs))},
)


@world_app.command("export")
@config_options(world=WORLD_OPTIONS)
def export_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (PNG images + data.jsonl).")],
    world: WorldConfig,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 200,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    hf_dataset: Annotated[
        bool, typer.Option("--hf-dataset", help="Also save a Hugging Face `datasets` copy in OUT_DIR/hf.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """Export scenes as PNG images and a JSONL of captions, VQA, objects and POPE ground truth."""
    from mmlens.world import World
    from mmlens.world.export import export_world, to_hf_dataset

    path = export_world(out_dir, World(world, seed=seed), n=n, split=split, overwrite=overwrite)
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
