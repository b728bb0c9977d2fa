"""``mmlens steer``: steering vision-language models (and causal LMs) with concept and shift vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmlens.cli.options import FieldOptions, config_options
from mmlens.steer.settings import EvalSettings, GenerationSettings, SteerConfig

steer_app = typer.Typer(help="Steering vision-language models with concept and shift vectors.", no_args_is_help=True)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")]
DataOption = Annotated[
    Path,
    typer.Option(
        help="JSONL of questions: image (path relative to the file; omit for a "
        "text-only LM), question, answer, answer_type per line, or the "
        "data.jsonl of `mmlens world export`."
    ),
]
STEER_HELP = {
    "alpha": "Strength (0 = the plain model).",
    "positions": "all | prompt_only | generated_only (never steers the first answer token) | from_last_prompt | "
    "text_only.",
    "condition": "always | source_concept (only samples nearer the vector's source than its contrasts, at the last "
    "prompt position).",
}
#: Generation while building: a few tokens (the first answer word); applying: whole answers.
BUILD_GENERATION = FieldOptions(GenerationSettings, defaults={"max_new_tokens": 4})
APPLY_GENERATION = FieldOptions(GenerationSettings)
EVAL_GENERATION = FieldOptions(GenerationSettings, defaults={"max_new_tokens": 4})


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _ints(value: str | None, name: str) -> list[int] | None:
    from mmlens.errors import InputError

    if not value:
        return None
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got {value!r}") from None


def _generative(spec: str):
    from mmlens.errors import ModelLoadError
    from mmlens.models import CausalLanguageModel, VisionLanguageModel, load_model

    model = load_model(spec)
    if not isinstance(model, (VisionLanguageModel, CausalLanguageModel)):
        raise ModelLoadError(
            f"{spec} is a {type(model).__name__}: steering needs a vision-language model or a causal LM"
        )
    return model


def _read_examples(data: Path):
    """The questions of ``data``, read before the model is loaded (a bad file is refused before any work)."""
    from mmlens.steer import load_vqa_jsonl

    return load_vqa_jsonl(data)


def _examples(model, data: Path, answer_type: str | None = None, items=None):
    from mmlens.errors import InputError
    from mmlens.models import CausalLanguageModel

    items = items if items is not None else _read_examples(data)
    has_images = items[0].image is not None
    if isinstance(model, CausalLanguageModel) and has_images:
        raise InputError(f"{data} has images but the model is a text-only causal LM: drop the 'image' fields")
    if not isinstance(model, CausalLanguageModel) and not has_images:
        raise InputError(f"{data} has no images but the model is a vision-language model")
    if answer_type:
        items = [e for e in items if e.answer_type == answer_type]
        if not items:
            raise InputError(f"{data} has no question of answer_type {answer_type!r}")
    return items


@steer_app.command("build")
@config_options(generation=BUILD_GENERATION)
def build_command(
    model: ModelOption,
    data: DataOption,
    generation: GenerationSettings,
    out: Annotated[Path, typer.Option(help="safetensors file to write (vectors + provenance metadata).")],
    source: Annotated[str | None, typer.Option(help="Source answer, e.g. yes (coarse vectors).")] = None,
    target: Annotated[str | None, typer.Option(help="Target answer, e.g. no (coarse vectors).")] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated decoder layers (default: all).")] = None,
    answer_type: Annotated[str | None, typer.Option(help="Use only questions of this answer_type.")] = None,
    finetuned: Annotated[
        str | None,
        typer.Option(
            help="A fine-tuned model: build fine-tuning shift vectors (finetuned - model, same questions) instead."
        ),
    ] = None,
    dictionary: Annotated[
        Path | None,
        typer.Option(
            help="Concept dictionary (a safetensors (k, hidden) matrix "
            "or a saved mmlens.concepts decomposer): all concept "
            "differences at the first of --layers."
        ),
    ] = None,
    use_truth: Annotated[
        bool,
        typer.Option(
            help="Label samples by the model's answer only where it matches the ground truth (reference filter)."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled-label control saved beside each vector.")] = 0,
) -> None:
    """Build steering vectors from the model's own activations at the last prompt position (the one that emits the
    first answer token): coarse source -> target mean differences (with a shuffled-label control per layer),
    fine-tuning shift vectors, or concept differences of a dictionary."""
    from mmlens.errors import InputError
    from mmlens.steer import (
        answer_labels,
        capture_examples,
        concept_vectors,
        finetuning_shift_vectors,
        save_vectors,
        shuffled_vector,
        vectors_from_capture,
    )

    read = _read_examples(data)
    chosen_layers = _ints(layers, "--layers")
    vlm = _generative(model)
    items = _examples(vlm, data, answer_type, read)
    chosen = chosen_layers or list(range(vlm.num_layers))
    if dictionary is not None:
        vectors = concept_vectors(dictionary, layer=chosen[0] % vlm.num_layers, model=model)
    elif finetuned is not None:
        tuned = _generative(finetuned)
        cap_a = capture_examples(
            vlm, items, chosen, max_new_tokens=generation.max_new_tokens, batch_size=generation.batch_size
        )
        cap_b = capture_examples(
            tuned, items, chosen, max_new_tokens=generation.max_new_tokens, batch_size=generation.batch_size
        )
        vectors = [
            finetuning_shift_vectors(
                cap_a.layer(i),
                cap_b.layer(i),
                layer=i % vlm.num_layers,
                model=model,
                position="last_prompt",
                finetuned=finetuned,
            )[0]
            for i in chosen
        ]
    else:
        if not source or not target:
            raise InputError("coarse vectors need --source and --target answers (or use --finetuned/--dictionary)")
        cap = capture_examples(
            vlm, items, chosen, max_new_tokens=generation.max_new_tokens, batch_size=generation.batch_size
        )
        labels = answer_labels(cap.generated, items, require_correct=use_truth)
        by_layer = vectors_from_capture(cap, labels, source, target, layers=chosen, model=model)
        vectors = []
        rows = [labels[i] for i in cap.sample_index.tolist()]
        for layer, vec in by_layer.items():
            vectors.append(vec)
            vectors.append(
                shuffled_vector(
                    cap.layer(layer),
                    rows,
                    vec.source,
                    vec.target,
                    layer=layer,
                    seed=seed,
                    model=model,
                    position=vec.position,
                )
            )
    path = save_vectors(out, vectors)
    typer.echo(json.dumps({"written": str(path), "vectors": [v.describe() for v in vectors]}, indent=2))


@steer_app.command("apply")
@config_options(config=FieldOptions(SteerConfig, help=STEER_HELP), generation=APPLY_GENERATION)
def apply_command(
    model: ModelOption,
    vectors: Annotated[Path, typer.Option(help="safetensors file written by `mmlens steer build`.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="JSONL to write: question, answer, plain answer, steered answer.")],
    config: SteerConfig,
    generation: GenerationSettings,
    layers: Annotated[str | None, typer.Option(help="Apply only the file's vectors for these layers.")] = None,
) -> None:
    """Generate with steering vectors (every non-control vector of the file, summed per layer) and without, and
    write both answers per question."""
    from mmlens.errors import InputError
    from mmlens.io import write_jsonl_atomic
    from mmlens.steer import Steering, VectorKind, generate_answers, load_vectors

    read = _read_examples(data)
    chosen = _ints(layers, "--layers")
    loaded = load_vectors(vectors)
    vlm = _generative(model)
    items = _examples(vlm, data, items=read)
    vecs = [
        v
        for v in loaded
        if v.kind not in (VectorKind.RANDOM, VectorKind.SHUFFLED)
        and (chosen is None or v.layer in {i % vlm.num_layers for i in chosen})
    ]
    if not vecs:
        raise InputError(f"{vectors} holds no steering vector for the chosen layers")
    plain = generate_answers(vlm, items, max_new_tokens=generation.max_new_tokens, batch_size=generation.batch_size)
    steered = generate_answers(
        vlm,
        items,
        Steering(tuple(vecs), config),
        max_new_tokens=generation.max_new_tokens,
        batch_size=generation.batch_size,
    )
    rows = [
        {"question": e.question, "answer": e.answer, "answer_type": e.answer_type, "plain": p, "steered": s}
        for e, p, s in zip(items, plain, steered)
    ]
    write_jsonl_atomic(out, rows)
    changed = sum(p != s for p, s in zip(plain, steered))
    typer.echo(
        json.dumps(
            {
                "written": str(out),
                "n": len(rows),
                "changed": changed,
                "alpha": config.alpha,
                "positions": config.positions.value,
                "vectors": [v.name for v in vecs],
            },
            indent=2,
        )
    )


@steer_app.command("eval")
@config_options(
    config=FieldOptions(SteerConfig, exclude=("alpha",), help=STEER_HELP),  # alpha: swept (--alphas)
    sweep=FieldOptions(EvalSettings, aliases={"random_seed": ("--seed",)}),
    generation=EVAL_GENERATION,
)
def eval_command(
    model: ModelOption,
    vectors: Annotated[Path, typer.Option(help="safetensors file written by `mmlens steer build`.")],
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Report folder: index.html and data.json.")],
    source: Annotated[str, typer.Option(help="Answer that should change, e.g. yes.")],
    target: Annotated[str, typer.Option(help="Answer it should become, e.g. no.")],
    config: SteerConfig,
    sweep: EvalSettings,
    generation: GenerationSettings,
    answer_type: Annotated[
        str | None, typer.Option(help="Answer type of the targeted questions (the others measure the accuracy kept).")
    ] = None,
) -> None:
    """Flip rate toward the target, accuracy kept on the other answer types and changed predictions, over an alpha
    sweep and per layer, against a random direction, shuffled labels and a logit bias, with an HTML report."""
    from mmlens.steer import FlipTarget, evaluate_vectors, load_vectors, write_steering_report

    read = _read_examples(data)
    loaded = load_vectors(vectors)
    vlm = _generative(model)
    items = _examples(vlm, data, items=read)
    result = evaluate_vectors(
        vlm,
        items,
        loaded,
        FlipTarget(source, target, answer_type),
        alphas=sweep.alphas,
        positions=config.positions,
        condition=config.condition,
        max_drop=sweep.max_drop,
        random_seed=sweep.random_seed,
        max_new_tokens=generation.max_new_tokens,
        batch_size=generation.batch_size,
    )
    result["model"] = model
    index = write_steering_report(result, out, items)
    summary = [
        {
            "vector": r["vector"]["name"],
            "alpha": r["best_alpha"],
            "flip_rate": r["at_best"]["steer"]["flip_rate"],
            "other_types_acc_drop": r["at_best"]["steer"]["other_types_acc_drop"],
            "random_flip_rate": r["at_best"]["random"]["flip_rate"],
            "logit_bias_flip_rate": r["at_best"]["logit_bias"]["flip_rate"],
        }
        for r in result["vectors"]
    ]
    typer.echo(json.dumps({"report": str(index), "vectors": summary}, indent=2))


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/steer.json"),
    seed: Annotated[int, typer.Option()] = 0,
    n_test: Annotated[int, typer.Option(min=10, help="Test scenes of the mini-llava tier.")] = 150,
    tiers: Annotated[
        str, typer.Option(help="Comma-separated: mini_llava (the zoo model), real_lm (SmolLM2-135M from its wheel).")
    ] = "mini_llava,real_lm",
    model: Annotated[str, typer.Option(help="The mini-llava tier's model.")] = "zoo:mini-llava",
    fresh: Annotated[
        bool, typer.Option(help="Start a new file instead of merging the tiers run now into OUT.")
    ] = False,
) -> None:
    """Steering, the paper's ungated vector first, against random, shuffled and logit-bias baselines on equal terms
    (one alpha rule on validation, the test read once, 3 seeds, 95 % intervals). Tier mini_llava: yes -> no per
    layer (gated column = our addition), colour/number selection, caption style, overhead. Tier real_lm: SmolLM2
    review sentiment. Tiers run now replace their entries in an existing OUT; each records its commit and time."""
    import sys

    from mmlens.bench.steer import TIERS, SteerBenchConfig, merge_steer_tiers, run_steer_tiers
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
    result = run_steer_tiers(
        chosen,
        SteerBenchConfig(seed=seed, n_test=n_test, model=model),
        progress_cb=lambda m: typer.echo(f"steer bench: {m}", err=True),
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
    )
    if existing is not None:
        result = merge_steer_tiers(existing, result)
    write_json_atomic(out, result)
    headline: dict = {"met": result.get("met"), "tier_runs": result.get("tier_runs")}
    if "yes_to_no" in result:
        headline["yes_to_no_ungated_at_best_layer"] = result["yes_to_no"]["ungated"]["at_best_layer"]
    if isinstance(result.get("real_lm"), dict):
        headline["real_lm"] = {k: result["real_lm"].get(k) for k in ("layer", "flip", "other_drop", "error")}
    typer.echo(json.dumps(headline, indent=2, default=str))
    typer.echo(f"written to {out}")
