"""``mmlens influence``: Influence of training pairs on a contrastive model (ECIF).

Sign convention of every score: ``delta_val_loss_if_removed`` (``delta_test_loss_if_removed``) is the predicted
change of the validation (test) loss if the pair were removed from training; negative = harmful pair.

Under ``accelerate launch`` every process runs the command (the per-pair work is split across them inside
:class:`~mmlens.influence.analyzer.InfluenceAnalyzer`); only the main process writes files and prints.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

influence_app = typer.Typer(help="Influence of training pairs on a contrastive model (ECIF).", no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")]
DataOpt = Annotated[
    Path,
    typer.Option(
        help="Training pairs: JSONL of {image, caption} (image path relative to the "
        "file) or a datasets folder with image and caption columns."
    ),
]
OutOpt = Annotated[Path, typer.Option(help="Output folder (ranking, report, and the fit, reused on a rerun).")]
GroupOpt = Annotated[str, typer.Option(help="Parameter group: projection (fast, cached towers), last_k_layers, all.")]
KOpt = Annotated[int, typer.Option("--k", min=1, help="Layers per tower for last_k_layers.")]
FormOpt = Annotated[str, typer.Option(help="Negative-term form: prob, reciprocal or exact.")]
SolverOpt = Annotated[str, typer.Option(help="Inverse Hessian: cg, explicit, lissa, projected, identity.")]
L2Opt = Annotated[float, typer.Option(help="L2 weight towards the given model's parameters (summed reduction).")]
BatchOpt = Annotated[int, typer.Option(min=2, help="Batch size of the recorded partition.")]
DampOpt = Annotated[float, typer.Option(min=0.0, help="Damping added to the Hessian.")]
PartOpt = Annotated[
    Path | None,
    typer.Option(
        help="JSON of the recorded batch partition {batches: [[i, ...]]}; default: a seeded random partition."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the default partition.")]
FormatOpt = Annotated[str, typer.Option("--format", help="jsonl or csv.")]


class ScoreFormat(enum.Enum):
    """File format of the per-pair scores."""

    JSONL = "jsonl"
    CSV = "csv"


def _format(fmt: str) -> ScoreFormat:
    from mmlens.enums import as_enum

    return as_enum(ScoreFormat, fmt, "--format")


def _analyzer(
    model: str,
    data: Path,
    out: Path,
    group: str,
    k: int,
    neg_form: str,
    solver: str,
    l2: float,
    batch_size: int,
    damping: float,
    partition: Path | None,
    seed: int,
):
    """Load the model and pairs, then fit the group (or reuse ``out/fit`` from an earlier run with the same
    settings: an interrupted or repeated run resumes there)."""
    import torch

    from mmlens.enums import as_enum
    from mmlens.errors import InputError
    from mmlens.influence.analyzer import FitResult, InfluenceAnalyzer
    from mmlens.influence.config import FitArguments, HessianSolver, InfluenceArguments, NegForm, ParamGroup
    from mmlens.influence.data import BatchPartition, load_pair_data
    from mmlens.influence.task import ContrastiveTask, HeadTask, ModelTask
    from mmlens.models import ContrastiveModel, load_model

    args = InfluenceArguments(
        neg_form=as_enum(NegForm, neg_form, "--neg-form"),  # validate before loading anything
        solver=as_enum(HessianSolver, solver, "--solver"),
        damping=damping,
    )
    fit_args = FitArguments(batch_size=batch_size, l2=l2, seed=seed)
    group_enum = as_enum(ParamGroup, group, "--group")
    pairs = load_pair_data(data)
    adapter = load_model(model, expect=ContrastiveModel)
    task: ContrastiveTask
    if group_enum is ParamGroup.PROJECTION:
        task = HeadTask(adapter, group_enum, progress=True)
    elif group_enum is ParamGroup.LORA:
        raise InputError("--group lora needs a model with LoRA adapters; use the Python API (attach_lora, HeadTask)")
    else:
        task = ModelTask(adapter, group_enum, k=k)
    part = None
    if partition is not None:
        if not partition.is_file():
            raise InputError(f"{partition} not found")
        part = BatchPartition.from_json(partition.read_text())
    encoded = None
    if isinstance(task, HeadTask):  # the frozen towers' outputs, cached on disk: a rerun does not run them again
        from mmlens.influence.streaming import encode_cached

        encoded = encode_cached(task, pairs, out / "cache", key=model)
    analyzer = InfluenceAnalyzer(
        task, pairs, args=args, fit_args=fit_args, partition=part, progress=True, encoded=encoded
    )
    fit_dir = out / "fit"
    settings = {
        "model": model,
        "data": str(data.resolve()),
        "group": group,
        "k": k,
        "l2": l2,
        "batch_size": batch_size,
        "seed": seed,
        "n_pairs": len(pairs),
    }
    settings_file = fit_dir / "settings.json"
    main = analyzer.work.is_main_process
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        saved = FitResult.load(fit_dir)
        # same partition and same starting weights (a model folder may have been overwritten since)
        if saved.partition.batches == analyzer.partition.batches and torch.equal(saved.theta0, analyzer.theta0):
            analyzer.use_fit(saved)
            if main:
                typer.echo(f"reusing the fit in {fit_dir}", err=True)
    # Under a launcher: every process has decided before the main one can write a fit the others would reuse.
    analyzer.work.wait_for_everyone()
    if analyzer.fitted is None:
        if main:
            typer.echo(f"fitting the {group} group ({task.space.size} parameters) on {len(pairs)} pairs ...", err=True)
        from mmlens.io import atomic_folder

        fit = analyzer.fit()  # on every process: the same deterministic fit
        if main:
            with atomic_folder(fit_dir) as tmp:
                fit.save(tmp)
                (tmp / "settings.json").write_text(json.dumps(settings))
    return analyzer, pairs


def _say_scoring(analyzer, n_train: int, n_other: int, what: str) -> None:
    """One line before the scoring, which follows the fit and can take a while (per-pair gradients, solves)."""
    if analyzer.work.is_main_process:
        typer.echo(f"scoring {n_train} training pairs against {n_other} {what} pairs ...", err=True)


def _write_rows(rows: list[dict], out: Path, fmt: ScoreFormat) -> Path:
    from mmlens.io import atomic_text_file, write_jsonl_atomic

    if fmt is ScoreFormat.JSONL:
        return write_jsonl_atomic(out / "scores.jsonl", rows)
    import csv

    with atomic_text_file(out / "scores.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "scores.csv"


#: Robust z-score beyond which a pair stands out (Iglewicz and Hoaglin's cut-off for the modified z-score).
STAND_OUT_Z = 3.5


def _stand_out(scores: list[float]) -> dict:
    """Which harmful scores stand out from the rest: modified z-score (score - median) / (1.4826 MAD) below
    ``-STAND_OUT_Z``. On clean data every score is within the spread, and the report says so instead of heading
    the lowest scores "most harmful". An addition of ours (a scale for the ranking), not part of ECIF."""
    import numpy as np

    values = np.asarray(scores, dtype=float)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    z = (values - median) / mad if mad > 0 else np.zeros_like(values)
    n = int((z < -STAND_OUT_Z).sum())
    lowest = float(z.min()) if len(z) else 0.0
    if n:
        note = (
            f"{n} pair(s) stand out as harmful: their score is more than {STAND_OUT_Z} robust standard "
            f"deviations below the median (median {median:.3g}, robust sd {mad:.3g})."
        )
    else:
        note = (
            f"No pair stands out: the lowest score is {abs(lowest):.2f} robust standard deviations below the "
            f"median (median {median:.3g}, robust sd {mad:.3g}; a pair stands out beyond {STAND_OUT_Z}), so "
            "the ranking below is not evidence of misaligned pairs."
        )
    return {
        "n_outliers": n,
        "median": median,
        "robust_sd": mad,
        "lowest_z": lowest,
        "threshold_z": STAND_OUT_Z,
        "note": note,
    }


AllFormsOpt = Annotated[
    bool,
    typer.Option(
        "--all-forms",
        help="Also score the negative forms other than --neg-form (columns neg_prob, neg_reciprocal, neg_exact; "
        "doubles the per-pair gradients).",
    ),
]


SelfInfluenceOpt = Annotated[
    bool,
    typer.Option(
        "--self-influence/--no-self-influence",
        help="Also each pair's self-influence g^T H^-1 g (column self_influence; with --solver cg it needs a "
        "projected Hessian: 256 Hessian-vector products over all pairs).",
    ),
]


def _stream_scores(analyzer, out: Path, val_pairs, all_forms: bool, self_influence: bool):
    """Every training pair scored in resumable shards under ``out/shards`` (an interrupted run resumes at the first
    missing shard and gives the same scores; other settings start over)."""
    from mmlens.influence.streaming import score_pairs

    streamed = score_pairs(analyzer, out / "shards", val_pairs, all_forms=all_forms, with_self_influence=self_influence)
    if analyzer.work.is_main_process and streamed.reused_shards:
        typer.echo(
            f"resumed: {streamed.reused_shards} of {streamed.n_shards} shards reused from {out / 'shards'}", err=True
        )
    return streamed


def _score_rows(pairs, streamed, neg_form: str, all_forms: bool) -> list[dict]:
    """One row per training pair from the streamed columns: the value, its parts (the chosen negative form, or
    all three with ``all_forms``), self-influence and the max negative probability."""
    import numpy as np

    from mmlens.influence.config import NegForm

    cols = streamed.columns
    forms = [f.value for f in NegForm] if all_forms else [neg_form]
    rows = []
    for i in range(len(pairs)):
        row = {
            "index": i,
            "id": pairs.ids[i],
            "caption": pairs.captions[i],
            "delta_val_loss_if_removed": float(cols["delta_val_loss_if_removed"][i]),
            "pos": float(cols["pos"][i]),
        }
        for form in forms:
            row[f"neg_{form}"] = float(cols[f"neg_{form}"][i])
        if not np.isnan(cols["self_influence"][i]):
            row["self_influence"] = float(cols["self_influence"][i])
        row["max_negative_prob"] = float(cols["max_negative_prob"][i])
        rows.append(row)
    return rows


@influence_app.command("detect")
def detect_command(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    val: Annotated[Path, typer.Option(help="Clean validation pairs (JSONL or datasets folder).")],
    group: GroupOpt = "projection",
    k: KOpt = 1,
    neg_form: FormOpt = "exact",
    solver: SolverOpt = "cg",
    l2: L2Opt = 300.0,
    batch_size: BatchOpt = 64,
    damping: DampOpt = 0.0,
    partition: PartOpt = None,
    seed: SeedOpt = 0,
    top: Annotated[int, typer.Option(min=1, help="Flagged pairs shown in the report.")] = 24,
    fmt: FormatOpt = "jsonl",
    all_forms: AllFormsOpt = False,
    self_influence: SelfInfluenceOpt = False,
) -> None:
    """Rank training pairs from most harmful to most helpful for the validation pairs; writes the ranking and an
    HTML report with thumbnails of the top flagged pairs."""
    from mmlens.influence.data import load_pair_data
    from mmlens.influence.report import REMOVAL_SCORE_NOTE, ranking_report

    out_format = _format(fmt)  # checked before the fit
    val_pairs = load_pair_data(val)  # a bad --val is refused before the fit, not after it
    analyzer, pairs = _analyzer(model, data, out, group, k, neg_form, solver, l2, batch_size, damping, partition, seed)
    _say_scoring(analyzer, len(pairs), len(val_pairs), "validation")
    streamed = _stream_scores(analyzer, out, val_pairs, all_forms, self_influence)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    rows = sorted(_score_rows(pairs, streamed, neg_form, all_forms), key=lambda r: r["delta_val_loss_if_removed"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    path = _write_rows(rows, out, out_format)
    standout = _stand_out([r["delta_val_loss_if_removed"] for r in rows])
    report = ranking_report(
        pairs,
        rows,
        title="Misaligned training pairs (ECIF)",
        subtitle=f"{model} on {data.name}: {len(pairs)} pairs, group {group}, negative form {neg_form}",
        explanation=REMOVAL_SCORE_NOTE + " Harmful pairs are flagged first. " + standout["note"],
        card_scores=("delta_val_loss_if_removed",),
        cards=top,
        cards_title="Most harmful pairs" if standout["n_outliers"] else "Lowest scores (no pair stands out)",
        ranking_title="Ranking",
        columns=["rank", "id", "caption", "delta_val_loss_if_removed", "pos", f"neg_{neg_form}"],
        data={
            "n_pairs": len(pairs),
            "stand_out": standout,
            "fit": {
                "risk": analyzer.fitted.risk,
                "grad_max": analyzer.fitted.grad_norm,
                "evaluations": analyzer.fitted.evaluations,
            },
            "scoring": {"shards": streamed.n_shards, "reused_shards": streamed.reused_shards, "n_val": len(val_pairs)},
            "solver": {k2: v for k2, v in analyzer.inverse().info.items() if k2 != "solves"},
        },
    )
    index = report.write(out / "report")
    typer.echo(
        json.dumps(
            {
                "ranking": str(path),
                "report": str(index),
                "most_harmful": rows[0]["id"],
                "most_harmful_score": rows[0]["delta_val_loss_if_removed"],
                "n_standing_out": standout["n_outliers"],
            },
            indent=2,
        )
    )


@influence_app.command("value")
def value_command(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    val: Annotated[Path, typer.Option(help="Validation pairs (JSONL or datasets folder).")],
    group: GroupOpt = "projection",
    k: KOpt = 1,
    neg_form: FormOpt = "exact",
    solver: SolverOpt = "cg",
    l2: L2Opt = 300.0,
    batch_size: BatchOpt = 64,
    damping: DampOpt = 0.0,
    partition: PartOpt = None,
    seed: SeedOpt = 0,
    fmt: FormatOpt = "jsonl",
    all_forms: AllFormsOpt = False,
    self_influence: SelfInfluenceOpt = False,
) -> None:
    """The value of every training pair for the validation pairs, by role (pos) and negative form, in input order;
    scored in resumable shards (rerun the same command to resume an interrupted run)."""
    from mmlens.influence.data import load_pair_data

    out_format = _format(fmt)  # checked before the fit
    val_pairs = load_pair_data(val)  # a bad --val is refused before the fit, not after it
    analyzer, pairs = _analyzer(model, data, out, group, k, neg_form, solver, l2, batch_size, damping, partition, seed)
    _say_scoring(analyzer, len(pairs), len(val_pairs), "validation")
    streamed = _stream_scores(analyzer, out, val_pairs, all_forms, self_influence)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    rows = _score_rows(pairs, streamed, neg_form, all_forms)
    path = _write_rows(rows, out, out_format)
    n_harmful = sum(r["delta_val_loss_if_removed"] < 0 for r in rows)
    typer.echo(json.dumps({"scores": str(path), "n_pairs": len(rows), "n_harmful": n_harmful}, indent=2))


@influence_app.command("trace")
def trace_command(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    test: Annotated[Path, typer.Option(help="Test pairs to explain (JSONL or datasets folder).")],
    negatives: Annotated[
        Path | None, typer.Option(help="Extra pairs that form the test batch (needed if --test holds one pair).")
    ] = None,
    relative: Annotated[str, typer.Option(help="none, theta (RelatIF) or l.")] = "theta",
    group: GroupOpt = "projection",
    k: KOpt = 1,
    neg_form: FormOpt = "exact",
    solver: SolverOpt = "cg",
    l2: L2Opt = 300.0,
    batch_size: BatchOpt = 64,
    damping: DampOpt = 0.0,
    partition: PartOpt = None,
    seed: SeedOpt = 0,
    top: Annotated[int, typer.Option(min=1, help="Training pairs listed per test pair.")] = 8,
) -> None:
    """For each test pair, the training pairs that most raised its loss, with thumbnails."""
    from mmlens.enums import as_enum
    from mmlens.influence.config import Relative
    from mmlens.influence.data import load_pair_data
    from mmlens.influence.report import trace_rows, write_trace_report
    from mmlens.io import write_jsonl_atomic

    relative_enum = as_enum(Relative, relative, "--relative")  # checked before the fit
    test_pairs = load_pair_data(test)
    negative_pairs = load_pair_data(negatives) if negatives else None
    analyzer, pairs = _analyzer(model, data, out, group, k, neg_form, solver, l2, batch_size, damping, partition, seed)
    _say_scoring(analyzer, len(pairs), len(test_pairs), "test")
    result = analyzer.trace(test_pairs, negative_pairs, relative=relative_enum, form=neg_form)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    rows = trace_rows(test_pairs, pairs, result, top)
    path = write_jsonl_atomic(out / "trace.jsonl", rows)
    index = write_trace_report(test_pairs, pairs, rows, out / "report", model=model)
    typer.echo(json.dumps({"trace": str(path), "report": str(index)}, indent=2))


@influence_app.command("remove")
def remove_command(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    save_to: Annotated[
        Path, typer.Option(help="Folder for the edited model (loadable with load_model / from_pretrained).")
    ],
    indices: Annotated[Path | None, typer.Option(help="Text/JSON file of pair indices to remove.")] = None,
    ranking: Annotated[
        Path | None, typer.Option(help="scores.jsonl from `detect`: remove its top --n-remove pairs.")
    ] = None,
    n_remove: Annotated[int, typer.Option(min=1, help="How many top-ranked pairs to remove.")] = 10,
    group: GroupOpt = "projection",
    k: KOpt = 1,
    neg_form: FormOpt = "exact",
    solver: SolverOpt = "cg",
    l2: L2Opt = 300.0,
    batch_size: BatchOpt = 64,
    damping: DampOpt = 0.0,
    partition: PartOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Closed-form removal (ECIF edit, no retraining) of chosen pairs; saves the edited model."""
    from mmlens.errors import InputError
    from mmlens.influence.analyzer import save_model

    if (indices is None) == (ranking is None):
        raise InputError("give exactly one of --indices FILE or --ranking scores.jsonl")
    if indices is not None:
        if not indices.is_file():
            raise InputError(f"{indices} not found")
        text = indices.read_text().replace(",", " ").replace("[", " ").replace("]", " ")
        try:
            chosen = [int(tok) for tok in text.split()]
        except ValueError:
            raise InputError(f"{indices}: expected integers (pair indices)") from None
    else:
        from mmlens.world.export import read_jsonl

        assert ranking is not None  # one of --indices, --ranking was checked
        records = [r for _, r in read_jsonl(ranking)]
        # `value` writes the same file name in input order, without ranks: removing its first rows would be wrong
        if not records or not all("index" in r and "rank" in r for r in records):
            raise InputError(
                f"{ranking} is not a ranking written by `mmlens influence detect` (every row needs 'index' and 'rank')"
            )
        records.sort(key=lambda r: r["rank"])
        chosen = [int(r["index"]) for r in records[:n_remove]]
    if not chosen:
        raise InputError("no pair indices to remove")
    analyzer, _ = _analyzer(model, data, out, group, k, neg_form, solver, l2, batch_size, damping, partition, seed)
    edited = analyzer.edited_model(chosen, neg_form)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    save_model(edited, save_to)
    typer.echo(json.dumps({"removed": len(chosen), "model": str(save_to)}, indent=2))
