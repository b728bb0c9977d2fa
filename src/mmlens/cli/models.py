"""``mmlens models``: inspect a model and run it over a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(
    help="Load any supported model (zoo:NAME, a local path or a Hugging Face id) and run it.", no_args_is_help=True
)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")]


@models_app.command("info")
def info_command(model: Annotated[str, typer.Argument(help="zoo:NAME, a local folder or a Hugging Face id.")]) -> None:
    """Print the model's family, architecture and the handles the analyses use."""
    from mmlens.models import load_model

    typer.echo(json.dumps(_describe(load_model(model)), indent=2))


def _describe(adapter) -> dict:
    """What a user needs to know before an analysis: family, class, size and the handles the analyses resolve."""
    model = adapter.model
    info = {
        "adapter": type(adapter).__name__,
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(adapter.dtype),
        "device": str(adapter.device),
    }
    if hasattr(adapter, "decoder_layers"):
        info["decoder_layers"] = len(adapter.decoder_layers)
        info["final_norm"] = type(adapter.final_norm).__name__
        info["lm_head"] = (
            f"{type(adapter.lm_head).__name__}({adapter.lm_head.in_features} -> {adapter.lm_head.out_features})"
        )
        info["image_token_id"] = adapter.image_token_id
    else:
        info["logit_scale"] = float(adapter.logit_scale.detach())
        info["parameter_groups"] = {name: len(params) for name, params in adapter.parameter_groups().items() if params}
    return info


@models_app.command("generate")
def generate_command(
    model: ModelOption,
    data: Annotated[Path, typer.Option(help="JSONL with an `image` field (path relative to the file) per line.")],
    out: Annotated[Path, typer.Option(help="JSONL to write: the input records with a `response` field.")],
    prompt: Annotated[
        str, typer.Option(help="Prompt used where a record has no `prompt` field.")
    ] = "describe the image .",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
) -> None:
    """Run a vision-language model over the images of a JSONL file (batched, greedy)."""
    from mmlens.io import write_jsonl_atomic
    from mmlens.models import VisionLanguageModel, load_model
    from mmlens.world.export import load_pairs_jsonl

    records = load_pairs_jsonl(data, require_caption=False)
    adapter = load_model(model, expect=VisionLanguageModel)
    prompts = [record.get("prompt") or prompt for record in records]
    responses = adapter.generate(
        [r["image"] for r in records], prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    rows = [
        {k: v for k, v in r.items() if k != "image"} | {"image": r["image_path"], "prompt": p, "response": a}
        for r, p, a in zip(records, prompts, responses)
    ]
    write_jsonl_atomic(out, rows)
    typer.echo(f"wrote {len(rows)} responses to {out}")


@models_app.command("embed")
def embed_command(
    model: ModelOption,
    data: Annotated[Path, typer.Option(help="JSONL of {image, caption} pairs (image path relative to the file).")],
    out: Annotated[Path, typer.Option(help="safetensors file with image_embeds, text_embeds and the pair similarity.")],
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Embed the image-caption pairs of a JSONL file with a contrastive model and save them as safetensors."""
    import torch
    from safetensors.torch import save_file

    from mmlens.models import ContrastiveModel, load_model
    from mmlens.world.export import load_pairs_jsonl

    records = load_pairs_jsonl(data)
    adapter = load_model(model, expect=ContrastiveModel)
    image_embeds = adapter.embed_images([r["image"] for r in records], batch_size=batch_size)
    text_embeds = adapter.embed_texts([r["caption"] for r in records], batch_size=batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "image_embeds": image_embeds.contiguous(),
        "text_embeds": text_embeds.contiguous(),
        "pair_similarity": (image_embeds * text_embeds).sum(-1).contiguous(),
    }
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:  # one rename on success; nothing left beside OUT on failure
        save_file(
            {k: v.to(torch.float32) for k, v in tensors.items()},
            tmp,
            metadata={"model": model, "data": str(data.absolute())},
        )
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    typer.echo(f"wrote {len(records)} pair embeddings to {out}")
