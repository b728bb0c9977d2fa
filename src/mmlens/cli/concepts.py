"""``mmlens concepts``: Concept dictionaries over hidden states and what fine-tuning shifted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmlens.cli.config import is_main_process
from mmlens.enums import as_enum

concepts_app = typer.Typer(
    help="Concept dictionaries over hidden states and what fine-tuning shifted.", no_args_is_help=True
)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _text_config(top_tokens: int, keep: int, apply_final_norm: bool):
    from mmlens.concepts.grounding import TextGroundingConfig

    return TextGroundingConfig(top_tokens=top_tokens, keep=keep, apply_final_norm=apply_final_norm)


TopTokens = Annotated[int, typer.Option(min=1, help="Candidate tokens of W_U u per concept.")]
Keep = Annotated[int, typer.Option(min=1, help="Words kept per concept after the word/stop-word filters.")]
ApplyNorm = Annotated[
    bool,
    typer.Option(
        help="Apply the final norm before the unembedding (exact for features that are not final-normed already)."
    ),
]
Layer = Annotated[str, typer.Option(help="Captured key: final_norm or layer.N.")]
Method = Annotated[str, typer.Option(help="kmeans, snmf, pca, dictionary or top_norm.")]


@concepts_app.command("extract")
def extract_command(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")],
    out: Annotated[
        Path, typer.Option(help="Extraction folder (resumable: rerun the same command after an interruption).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="JSONL of image (relative path), prompt, optional reference "
            "and attributes. Default: world shape questions."
        ),
    ] = None,
    word: Annotated[
        str | None, typer.Option(help="Token of interest (position token_of_interest; default circle).")
    ] = None,
    words: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated class of words: capture where any of them is emitted (position token_class)."
        ),
    ] = None,
    position: Annotated[
        str | None,
        typer.Option(
            help="token_of_interest, token_class, generated_mean, last_prompt or fixed_index (default: token_class "
            "with --words, else token_of_interest)."
        ),
    ] = None,
    index: Annotated[int, typer.Option(help="Prompt token index for fixed_index (negative from the end).")] = -1,
    layers: Annotated[str, typer.Option(help="Comma-separated decoder layers (negative from the end).")] = "-1",
    final_norm: Annotated[bool, typer.Option(help="Also capture the final-normed residual.")] = True,
    filters: Annotated[str, typer.Option("--filter", help="Comma-separated: ground_truth, prediction.")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=0)] = 8,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    n_scenes: Annotated[int, typer.Option(min=1, help="World scenes without --data.")] = 2000,
) -> None:
    """Capture hidden states at a token position through generation, for every input; write safetensors shards."""
    from mmlens.concepts.workflow import extract
    from mmlens.models.capture import CaptureConfig, PositionKind, PositionRule

    if position is None:  # --words alone names a class (it used to be ignored, for the token "circle")
        kind = PositionKind.TOKEN_CLASS if words else PositionKind.TOKEN_OF_INTEREST
    else:
        kind = as_enum(PositionKind, position, "--position")
    if words and kind is not PositionKind.TOKEN_CLASS:
        from mmlens.errors import InputError

        raise InputError(f"--words goes with --position token_class (got --position {kind.value}); use --word for one")
    rule_words: tuple[str, ...] = ()
    if kind is PositionKind.TOKEN_OF_INTEREST:
        rule_words = (word or "circle",)
    elif kind is PositionKind.TOKEN_CLASS:
        rule_words = tuple(_csv(words))
    chosen = set(_csv(filters))
    unknown = chosen - {"ground_truth", "prediction"}
    if unknown:
        raise typer.BadParameter(f"unknown filters {sorted(unknown)}", param_hint="--filter")
    try:
        layer_ids = tuple(int(v) for v in _csv(layers))
    except ValueError:
        raise typer.BadParameter(f"layers must be integers, got {layers!r}", param_hint="--layers") from None
    filter_words = (word,) if word and kind is not PositionKind.TOKEN_OF_INTEREST else ()
    config = CaptureConfig(
        layers=layer_ids,
        position=PositionRule(kind, rule_words, index),
        final_norm=final_norm,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        require_in_ground_truth="ground_truth" in chosen,
        require_in_prediction="prediction" in chosen,
        filter_words=filter_words,
    )
    ex = extract(model, out, config, data=data, n_scenes=n_scenes)
    if not is_main_process():  # under a launcher every process gets here; one prints the result
        return
    typer.echo(
        json.dumps(
            {"inputs": len(ex.inputs), "kept": len(ex.capture), "keys": ex.capture.keys, "folder": str(out)}, indent=2
        )
    )


@concepts_app.command("learn")
def learn_command(
    capture: Annotated[Path, typer.Option(help="An extraction folder (mmlens concepts extract).")],
    out: Annotated[Path, typer.Option(help="Report folder: index.html, data.json, dictionary.safetensors.")],
    layer: Layer = "final_norm",
    method: Method = "kmeans",
    n_concepts: Annotated[int, typer.Option(min=1)] = 20,
    sparsity: Annotated[float, typer.Option(min=0.0, help="L1 weight on codes (snmf, dictionary).")] = 1.0,
    top_samples: Annotated[int, typer.Option(min=1, help="Most-activating samples shown per concept.")] = 5,
    model: Annotated[str | None, typer.Option(help="Model for text grounding (default: the extraction's).")] = None,
    top_tokens: TopTokens = 50,
    keep: Keep = 10,
    apply_final_norm: ApplyNorm = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Learn a concept dictionary on an extraction; a card per concept with its words, top images and purity."""
    from mmlens.concepts.decompose import DecomposerConfig, DecomposerKind
    from mmlens.concepts.workflow import learn

    dec = DecomposerConfig(
        as_enum(DecomposerKind, method, "--method"), n_concepts=n_concepts, seed=seed, sparsity=sparsity
    )
    summary = learn(
        capture,
        out,
        dec,
        layer=layer,
        text=_text_config(top_tokens, keep, apply_final_norm),
        model_spec=model,
        n_top=top_samples,
    )
    typer.echo(
        json.dumps(
            {
                "concepts": len(summary["concepts"]),
                "disentanglement": summary.get("disentanglement"),
                "mean_purity": summary.get("mean_purity"),
                "report": summary["report"],
            },
            indent=2,
        )
    )


@concepts_app.command("compare")
def compare_command(
    a: Annotated[Path, typer.Option("--a", help="Extraction folder of the original model.")],
    b: Annotated[Path, typer.Option("--b", help="Extraction folder of the fine-tuned model (same inputs).")],
    out: Annotated[Path, typer.Option(help="Report folder: index.html and data.json.")],
    drift: Annotated[
        list[Path] | None,
        typer.Option(
            help="Extraction folder of a fine-tuning checkpoint, in step order; repeat for each (drift curve)."
        ),
    ] = None,
    layer: Layer = "final_norm",
    method: Method = "kmeans",
    n_concepts: Annotated[int, typer.Option(min=1)] = 20,
    statistic: Annotated[str, typer.Option(help="mean, median or trimmed_mean.")] = "mean",
    alpha: Annotated[float, typer.Option(help="Shifted concept u + alpha * shift.")] = 1.0,
    top_tokens: TopTokens = 50,
    keep: Keep = 10,
    apply_final_norm: ApplyNorm = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Match concepts of two models, shift vectors and their recovery against baselines, drift over checkpoints."""
    from mmlens.concepts.compare import CompareConfig, ShiftStatistic
    from mmlens.concepts.decompose import DecomposerConfig, DecomposerKind
    from mmlens.concepts.workflow import compare

    config = CompareConfig(
        decomposer=DecomposerConfig(as_enum(DecomposerKind, method, "--method"), n_concepts=n_concepts, seed=seed),
        statistic=as_enum(ShiftStatistic, statistic, "--statistic"),
        alpha=alpha,
        seed=seed,
    )
    analysis, drift_result, index = compare(
        a, b, out, config, layer=layer, text=_text_config(top_tokens, keep, apply_final_norm), drift_folders=drift or ()
    )
    headline = analysis.headline()
    # how many inputs both extractions kept: every number above rests on them
    headline["n_common"] = json.loads((index.parent / "data.json").read_text(encoding="utf-8"))["n_common"]
    if drift_result is not None:
        headline["drift_t_overlap"] = dict(zip(drift_result.steps, drift_result.t_overlap))
    headline["report"] = str(index)
    typer.echo(json.dumps(headline, indent=2))


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path(
        "benchmarks/results/concepts.json"
    ),
    n_scenes: Annotated[int, typer.Option(min=10, help="World test scenes to draw questions from.")] = 4000,
    word: Annotated[str, typer.Option(help="The shape word used as token of interest.")] = "circle",
    seed: Annotated[int, typer.Option()] = 0,
    tiers: Annotated[
        str,
        typer.Option(help="Comma-separated: mini_llava (the zoo models), real_lm (SmolLM2-135M from its wheel)."),
    ] = "mini_llava,real_lm",
    fresh: Annotated[
        bool, typer.Option(help="Start a new file instead of merging the tiers run now into OUT.")
    ] = False,
) -> None:
    """Tier mini_llava: concepts of mini-llava vs a fine-tune (mini-llava-colour, or mini-llava-swap when the colour
    fine-tune keeps too few samples) and the colour fine-tune's checkpoints: per-concept vs global shift over 5 seeds
    with 95 % intervals, recovery vs baselines (k-means, semi-NMF and sklearn semi-NMF), whether the analysis finds
    the concepts of mini-llava-swap's swapped colours (AUROC, ranks), drift, grounding purity, capture throughput.
    Tier real_lm: SmolLM2's concept dictionaries at four layers, their sentiment purity against random sets and
    the cosine of the best sentiment concept with the steering vector. Tiers run now replace their entries in an
    existing OUT; each records its commit and time."""
    import sys

    from mmlens.bench.concepts import TIERS, ConceptsBenchConfig, merge_concepts_tiers, run_concepts_tiers
    from mmlens.errors import InputError
    from mmlens.io import write_json_atomic

    chosen = tuple(t.strip() for t in tiers.split(",") if t.strip())
    unknown = set(chosen) - set(TIERS)
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown tiers {sorted(unknown)}; use {', '.join(TIERS)}", param_hint="--tiers")
    existing = None
    if out.is_file() and not fresh:
        try:
            existing = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {out} to merge into ({err}); use --fresh") from None
        merge_concepts_tiers(existing, {"tier_runs": {}})  # fail before any work
    result = run_concepts_tiers(
        chosen,
        ConceptsBenchConfig(word=word, n_scenes=n_scenes, seed=seed),
        log=lambda m: typer.echo(m, err=True),
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
    )
    if existing is not None:
        result = merge_concepts_tiers(existing, result)
    write_json_atomic(out, result)
    headline: dict = {"tier_runs": result.get("tier_runs")}
    if "gain" in result:
        headline["gain"] = {k: result["gain"][k] for k in ("per_concept", "global", "permuted", "random", "verdict")}
        headline["recovery"], headline["targets"] = result["recovery"], result["targets"]
    real = result.get("real_lm")
    if isinstance(real, dict):
        headline["real_lm"] = real.get("error") or {
            layer: {kind: v[kind]["verdict"] for kind in v if isinstance(v[kind], dict)}
            for layer, v in real.get("per_layer", {}).items()
        }
    typer.echo(json.dumps(headline, indent=2, default=str))
    typer.echo(f"written to {out}")
