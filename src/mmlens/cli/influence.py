"""``mmlens influence``: Influence of training pairs on a contrastive model (ECIF).

Sign convention of every score: ``delta_val_loss_if_removed`` (``delta_test_loss_if_removed``) is the predicted
change of the validation (test) loss if the pair were removed from training; negative = harmful pair.

Under ``accelerate launch`` every process runs the command (the per-pair work is split across them inside
:class:`~mmlens.influence.analyzer.InfluenceAnalyzer`); only the main process writes files and prints.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from mmlens.cli.options import FieldOptions, config_options
from mmlens.enums import as_enum
from mmlens.influence.config import FitArguments, InfluenceArguments
from mmlens.models.options import ParamGroup

influence_app = typer.Typer(help="Influence of training pairs on a contrastive model (ECIF).", no_args_is_help=True)


@dataclasses.dataclass(frozen=True)
class FitSetup:
    """What every influence command fits: the model's parameter group on the training pairs, in OUT/fit (reused
    by a rerun, and by the other influence commands given the same OUT, while these settings are the same)."""

    model: str
    data: Path
    out: Path
    group: ParamGroup = ParamGroup.PROJECTION
    k: int = 1
    partition: Path | None = None

    def __post_init__(self) -> None:
        from mmlens.errors import InputError

        object.__setattr__(self, "group", as_enum(ParamGroup, self.group, "--group"))
        if self.k < 1:
            raise InputError(f"--k must be >= 1, got {self.k}")


SETUP_OPTIONS = FieldOptions(
    FitSetup,
    aliases={"model": ("-m",)},
    help={
        "model": "zoo:NAME, a local folder or a Hugging Face id.",
        "data": "Training pairs: JSONL of {image, caption} (image path relative to the file) or a datasets folder "
        "with image and caption columns.",
        "out": "Output folder (ranking, report, and the fit, reused on a rerun).",
        "group": "Parameter group: projection (fast, cached towers), last_k_layers, all (lora: Python API).",
        "k": "Layers per tower for last_k_layers.",
        "partition": "JSON of the recorded batch partition {batches: [[i, ...]]}; default: a seeded random partition.",
    },
)
FIT_OPTIONS = FieldOptions(
    FitArguments,
    defaults={"l2": 300.0},
    help={
        "batch_size": "Batch size of the recorded partition.",
        "l2": "L2 weight towards the given model's parameters (summed reduction).",
        "max_iter": "L-BFGS iterations of the fit.",
        "tolerance_grad": "The fit stops when the largest entry of the per-pair (mean) risk gradient is below this.",
        "newton_max_iter": "Newton-CG iterations after L-BFGS if it stopped above the tolerance (0: none).",
        "seed": "Seed of the default partition and of the randomised solvers (lissa, projected).",
        "precondition_after": "Plain L-BFGS evaluations before an unconverged fit continues Nystrom-preconditioned "
        "(0, the default: never; same minimiser and stopping rule).",
        "precondition_rank": "Hessian-vector products of the fit's Nystrom preconditioner.",
        "precondition_pairs": "Pairs (whole batches) the fit's preconditioner is sketched on, scaled to all pairs.",
    },
)
ARGS_OPTIONS = FieldOptions(
    InfluenceArguments,
    exclude=("seed",),  # one seed for the command: the fit's
    help={
        "neg_form": "Negative-term form: prob, reciprocal or exact.",
        "solver": "Inverse Hessian: cg, explicit, lissa, projected, identity.",
        "damping": "Damping added to the Hessian.",
        "cg_max_iter": "Conjugate-gradient iterations (cg).",
        "cg_tol": "Conjugate-gradient tolerance (cg).",
        "lissa_depth": "Recursion depth (lissa).",
        "lissa_scale": "Scale (lissa); default: 1.2 x the largest Hessian eigenvalue.",
        "proj_dim": "Random subspace dimension (projected; also the rank of CG's Nystrom preconditioner).",
        "preconditioner": "CG's preconditioner: nystrom or none (the same residual tolerance either way).",
        "precond_pairs": "Pairs (whole batches) CG's preconditioner is sketched on, scaled to all pairs.",
        "cg_precondition_after": "Plain CG iterations before CG builds its preconditioner and restarts from its "
        "current solution.",
    },
)
#: The options every influence command shares, from the dataclasses above (one source for all four commands).
FIT_GROUPS = {"setup": SETUP_OPTIONS, "fit_args": FIT_OPTIONS, "args": ARGS_OPTIONS}
FormatOpt = Annotated[str, typer.Option("--format", help="jsonl or csv.")]


class ScoreFormat(enum.Enum):
    """File format of the per-pair scores."""

    JSONL = "jsonl"
    CSV = "csv"


def _format(fmt: str) -> ScoreFormat:
    from mmlens.enums import as_enum

    return as_enum(ScoreFormat, fmt, "--format")


def _analyzer(setup: FitSetup, fit_args: FitArguments, args: InfluenceArguments):
    """Load the model and pairs, then fit the group (or reuse ``out/fit`` from an earlier run with the same
    settings: an interrupted or repeated run resumes there)."""
    import torch

    from mmlens.errors import InputError
    from mmlens.influence.analyzer import FitResult, InfluenceAnalyzer
    from mmlens.influence.data import BatchPartition, load_pair_data
    from mmlens.influence.task import ContrastiveTask, HeadTask, ModelTask
    from mmlens.models import ContrastiveModel, load_model

    args = dataclasses.replace(args, seed=fit_args.seed)
    group = setup.group
    if group is ParamGroup.LORA:  # before loading anything
        raise InputError("--group lora needs a model with LoRA adapters; use the Python API (attach_lora, HeadTask)")
    part = None
    if setup.partition is not None:
        if not setup.partition.is_file():
            raise InputError(f"{setup.partition} not found")
        part = BatchPartition.from_json(setup.partition.read_text())
    pairs = load_pair_data(setup.data)
    adapter = load_model(setup.model, expect=ContrastiveModel)
    task: ContrastiveTask
    if group is ParamGroup.PROJECTION:
        task = HeadTask(adapter, group, progress=True)
    else:
        task = ModelTask(adapter, group, k=setup.k)
    encoded = None
    if isinstance(task, HeadTask):  # the frozen towers' outputs, cached on disk: a rerun does not run them again
        from mmlens.influence.streaming import encode_cached

        encoded = encode_cached(task, pairs, setup.out / "cache", key=setup.model)
    analyzer = InfluenceAnalyzer(
        task, pairs, args=args, fit_args=fit_args, partition=part, progress=True, encoded=encoded
    )
    fit_dir = setup.out / "fit"
    settings = {
        "model": setup.model,
        "data": str(setup.data.resolve()),
        "group": group.value,
        "k": setup.k,
        "l2": fit_args.l2,
        "batch_size": fit_args.batch_size,
        "seed": fit_args.seed,
        "n_pairs": len(pairs),
        "max_iter": fit_args.max_iter,
        "tolerance_grad": fit_args.tolerance_grad,
        "newton_max_iter": fit_args.newton_max_iter,
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
            typer.echo(
                f"fitting the {group.value} group ({task.space.size} parameters) on {len(pairs)} pairs ...", err=True
            )
        from mmlens.io import atomic_folder

        fit = analyzer.fit()  # on every process: the same deterministic fit
        if main and not fit.converged:
            typer.echo(
                f"warning: the fit did not converge (largest per-pair gradient entry {fit.grad_norm / len(pairs):.2e}"
                f" > --tolerance-grad {fit_args.tolerance_grad:g}): the scores assume it did; raise --l2, "
                "--max-iter or --newton-max-iter",
                err=True,
            )
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
@config_options(**FIT_GROUPS)
def detect_command(
    setup: FitSetup,
    fit_args: FitArguments,
    args: InfluenceArguments,
    val: Annotated[Path, typer.Option(help="Clean validation pairs (JSONL or datasets folder).")],
    top: Annotated[int, typer.Option(min=1, help="Flagged pairs shown in the report.")] = 24,
    fmt: FormatOpt = "jsonl",
    all_forms: AllFormsOpt = False,
    self_influence: SelfInfluenceOpt = False,
) -> None:
    """Rank training pairs from most harmful to most helpful for the validation pairs; writes the ranking and an
    HTML report with thumbnails of the top flagged pairs."""
    from mmlens.influence.data import load_pair_data
    from mmlens.influence.report import REMOVAL_SCORE_NOTE, ranking_report, stand_out

    out_format = _format(fmt)  # checked before the fit
    val_pairs = load_pair_data(val)  # a bad --val is refused before the fit, not after it
    analyzer, pairs = _analyzer(setup, fit_args, args)
    _say_scoring(analyzer, len(pairs), len(val_pairs), "validation")
    streamed = _stream_scores(analyzer, setup.out, val_pairs, all_forms, self_influence)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    neg_form = args.neg_form.value
    rows = sorted(_score_rows(pairs, streamed, neg_form, all_forms), key=lambda r: r["delta_val_loss_if_removed"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    path = _write_rows(rows, setup.out, out_format)
    scale = stand_out([r["delta_val_loss_if_removed"] for r in rows])
    report = ranking_report(
        pairs,
        rows,
        title="Misaligned training pairs (ECIF)",
        subtitle=f"{setup.model} on {setup.data.name}: {len(pairs)} pairs, group {setup.group.value}, "
        f"negative form {neg_form}",
        explanation=REMOVAL_SCORE_NOTE + " Harmful pairs are flagged first. " + scale.note,
        card_scores=("delta_val_loss_if_removed",),
        cards=top,
        cards_title="Most harmful pairs" if scale.n_outliers else "Lowest scores (no pair stands out)",
        ranking_title="Ranking",
        columns=["rank", "id", "caption", "delta_val_loss_if_removed", "pos", f"neg_{neg_form}"],
        scales={"delta_val_loss_if_removed": scale},
        data={
            "n_pairs": len(pairs),
            "stand_out": scale.to_dict(),
            "fit": {
                "risk": analyzer.fitted.risk,
                "grad_max": analyzer.fitted.grad_norm,
                "evaluations": analyzer.fitted.evaluations,
            },
            "scoring": {"shards": streamed.n_shards, "reused_shards": streamed.reused_shards, "n_val": len(val_pairs)},
            "solver": {k2: v for k2, v in analyzer.inverse().info.items() if k2 != "solves"},
        },
    )
    index = report.write(setup.out / "report")
    typer.echo(
        json.dumps(
            {
                "ranking": str(path),
                "report": str(index),
                "most_harmful": rows[0]["id"],
                "most_harmful_score": rows[0]["delta_val_loss_if_removed"],
                "n_standing_out": scale.n_outliers,
            },
            indent=2,
        )
    )


@influence_app.command("value")
@config_options(**FIT_GROUPS)
def value_command(
    setup: FitSetup,
    fit_args: FitArguments,
    args: InfluenceArguments,
    val: Annotated[Path, typer.Option(help="Validation pairs (JSONL or datasets folder).")],
    fmt: FormatOpt = "jsonl",
    all_forms: AllFormsOpt = False,
    self_influence: SelfInfluenceOpt = False,
) -> None:
    """The value of every training pair for the validation pairs, by role (pos) and negative form, in input order;
    scored in resumable shards (rerun the same command to resume an interrupted run)."""
    from mmlens.influence.data import load_pair_data

    out_format = _format(fmt)  # checked before the fit
    val_pairs = load_pair_data(val)  # a bad --val is refused before the fit, not after it
    analyzer, pairs = _analyzer(setup, fit_args, args)
    _say_scoring(analyzer, len(pairs), len(val_pairs), "validation")
    streamed = _stream_scores(analyzer, setup.out, val_pairs, all_forms, self_influence)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    rows = _score_rows(pairs, streamed, args.neg_form.value, all_forms)
    path = _write_rows(rows, setup.out, out_format)
    n_harmful = sum(r["delta_val_loss_if_removed"] < 0 for r in rows)
    typer.echo(json.dumps({"scores": str(path), "n_pairs": len(rows), "n_harmful": n_harmful}, indent=2))


#: Where ``trace`` writes its report inside OUT: its own folder, so that it can share OUT (and the fit) with
#: ``detect`` without replacing detect's report (OUT/report).
TRACE_REPORT = "trace-report"


@influence_app.command("trace")
@config_options(**FIT_GROUPS)
def trace_command(
    setup: FitSetup,
    fit_args: FitArguments,
    args: InfluenceArguments,
    test: Annotated[Path, typer.Option(help="Test pairs to explain (JSONL or datasets folder).")],
    negatives: Annotated[
        Path | None, typer.Option(help="Extra pairs that form the test batch (needed if --test holds one pair).")
    ] = None,
    relative: Annotated[str, typer.Option(help="none, theta (RelatIF) or l.")] = "theta",
    top: Annotated[int, typer.Option(min=1, help="Training pairs listed per test pair.")] = 8,
) -> None:
    """For each test pair, the training pairs that most raised its loss, with thumbnails (OUT/trace.jsonl and
    OUT/trace-report/; OUT may be detect's folder: the fit is shared, detect's report kept)."""
    from mmlens.influence.config import Relative
    from mmlens.influence.data import load_pair_data
    from mmlens.influence.report import stand_out, trace_rows, write_trace_report
    from mmlens.io import write_jsonl_atomic

    relative_enum = as_enum(Relative, relative, "--relative")  # checked before the fit
    test_pairs = load_pair_data(test)
    negative_pairs = load_pair_data(negatives) if negatives else None
    analyzer, pairs = _analyzer(setup, fit_args, args)
    _say_scoring(analyzer, len(pairs), len(test_pairs), "test")
    result = analyzer.trace(test_pairs, negative_pairs, relative=relative_enum, form=args.neg_form.value)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    rows = trace_rows(test_pairs, pairs, result, top)
    path = write_jsonl_atomic(setup.out / "trace.jsonl", rows)
    scales = [stand_out(result.relative_influence[t]) for t in range(len(test_pairs))]
    index = write_trace_report(test_pairs, pairs, rows, setup.out / TRACE_REPORT, model=setup.model, scales=scales)
    typer.echo(json.dumps({"trace": str(path), "report": str(index)}, indent=2))


@influence_app.command("remove")
@config_options(**FIT_GROUPS)
def remove_command(
    setup: FitSetup,
    fit_args: FitArguments,
    args: InfluenceArguments,
    save_to: Annotated[
        Path, typer.Option(help="Folder for the edited model (loadable with load_model / from_pretrained).")
    ],
    indices: Annotated[Path | None, typer.Option(help="Text/JSON file of pair indices to remove.")] = None,
    ranking: Annotated[
        Path | None, typer.Option(help="scores.jsonl from `detect`: remove its top --n-remove pairs.")
    ] = None,
    n_remove: Annotated[int, typer.Option(min=1, help="How many top-ranked pairs to remove.")] = 10,
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
    analyzer, _ = _analyzer(setup, fit_args, args)
    edited = analyzer.edited_model(chosen, args.neg_form.value)
    if not analyzer.work.is_main_process:
        return  # the main process writes
    save_model(edited, save_to)
    typer.echo(json.dumps({"removed": len(chosen), "model": str(save_to)}, indent=2))
