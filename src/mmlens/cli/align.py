"""``mmlens align``: Preference alignment against hallucination: BDHS pairs, DPO, POPE/CHAIR."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mmlens.align.settings import BDHSConfig, DPOSettings
from mmlens.cli.options import FieldOptions, config_options

align_app = typer.Typer(
    help="Preference alignment against hallucination: BDHS pairs, DPO, POPE/CHAIR.", no_args_is_help=True
)


class DPOMode(enum.Enum):
    """``mmlens align dpo --mode``: offline pairs, or one of the online modes of :class:`OnlineMode`."""

    OFFLINE = "offline"
    ONLINE = "online"
    MIXED = "mixed"
    ONLINE_BDHS = "online-bdhs"


def _on_main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` (which neither print progress nor write)."""
    from mmlens.models.distributed import DistributedWork

    return DistributedWork.from_environment().is_main_process


def _examples(model: str, data: Path | None, n_scenes: int, seed: int):
    from mmlens.align.data import load_sft_jsonl
    from mmlens.align.world_data import world_sft_examples
    from mmlens.zoo import world_of

    if data is not None:
        return load_sft_jsonl(data), None
    world = world_of(model)
    return world_sft_examples(world, n_scenes, seed=seed), world


BDHS_OPTIONS = FieldOptions(
    BDHSConfig,
    aliases={"eps_s": ("--eps",)},
    help={
        "rho": "Probability of hiding each image token.",
        "visible_tokens": "Keep exactly this many image tokens visible (overrides --rho).",
        "mask_layers": "Comma-separated decoder layers to mask (default: all).",
        "eps_s": "Accept a rejected answer when its similarity to the chosen one is below this.",
        "max_tries": "Tries per example; the last one unguided.",
        "guided": "Reference-guided completion (off: every try generates whole answers, the paper's ablation).",
        "corruption": "Hide image tokens (mask) or diffuse the image instead (noise, BDHS_noise).",
        "noise_step": "With --corruption noise: step of POVID's 1000-step noise schedule.",
        "seed": "Seed of the masks, the cuts and the world SFT turns.",
    },
)


@align_app.command("bdhs")
@config_options(config=BDHS_OPTIONS)
def bdhs_command(
    model: Annotated[str, typer.Option("--model", "-m", help="zoo:NAME, a local folder or a Hugging Face id.")],
    out: Annotated[
        Path, typer.Option(help="Folder to write: pairs.jsonl, images/, dataset/, stats.json, report/index.html.")
    ],
    config: BDHSConfig,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your SFT data: a JSONL of {image (path relative to the "
            "file), prompt, answer}, or the data.jsonl of `mmlens world export`. "
            "Default: world SFT turns of a world-trained zoo model."
        ),
    ] = None,
    n_scenes: Annotated[int, typer.Option(min=1, help="World scenes (without --data).")] = 100,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Build BDHS preference pairs (chosen = your SFT answer, rejected = the model's biased completion with the
    image hidden) in TRL's format, with statistics per try and an HTML report of example pairs."""
    from mmlens.align.bdhs import bdhs_pairs
    from mmlens.align.data import write_pairs
    from mmlens.align.report import pairs_report
    from mmlens.errors import InputError
    from mmlens.models import VisionLanguageModel, load_model
    from mmlens.models.distributed import DistributedWork

    if out.is_dir() and any(out.iterdir()) and not overwrite:  # before the generation, on every process
        raise InputError(f"{out} exists and is not empty; pass --overwrite or choose another folder")
    examples, _ = _examples(model, data, n_scenes, config.seed)
    vlm = load_model(model, expect=VisionLanguageModel)
    # under accelerate launch every process generates its share of the batches; the main one writes
    work = DistributedWork.from_environment()
    pairs, stats = bdhs_pairs(
        vlm, examples, config, work=work, on_try=lambda t, n: typer.echo(f"try {t}: {n} examples", err=True)
    )
    if not pairs:
        raise InputError("BDHS produced no usable pair (every rejected answer was empty or equal to the chosen)")
    if not work.is_main_process:
        return
    path = write_pairs(pairs, out, overwrite=overwrite, extra_files={"stats.json": stats.to_dict()})
    pairs_report(pairs, stats.to_dict(), title=f"BDHS pairs of {model}").write(out / "report")
    typer.echo(json.dumps(stats.to_dict(), indent=2))
    typer.echo(f"wrote {len(pairs)} pairs to {path} (report: {out / 'report' / 'index.html'})")


DPO_OPTIONS = FieldOptions(
    DPOSettings,
    aliases={"loss_type": ("--loss",), "learning_rate": ("--lr",), "mix_probability": ("--mix-p",)},
    help={
        "loss_type": "TRL loss type.",
        "finetune": "LoRA adapters (merged after training) or full.",
        "refresh_every": "Online modes: steps between fresh pairs.",
        "on_policy": "Online modes: fresh pairs from the current policy for every batch (overrides --refresh-every).",
        "mix_probability": "Mixed mode: probability of an offline pair.",
        "sft_weight": "Add TRL's SFT loss on the chosen answers with this weight (against DPO's length bias; 0 = off).",
        "ld_alpha": "LD-DPO: weight of the tokens beyond the shorter answer (default: plain DPO).",
        "seed": "Seed of training and of the world SFT turns.",
    },
)


@align_app.command("dpo")
@config_options(settings=DPO_OPTIONS)
def dpo_command(
    model: Annotated[str, typer.Option("--model", "-m", help="The SFT model: zoo:NAME, a folder or a HF id.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the aligned model (save_pretrained), train_log.json and report/.")
    ],
    settings: DPOSettings,
    pairs: Annotated[
        Path | None,
        typer.Option(help="Preference pairs (a folder from `align bdhs` or its pairs.jsonl); offline and mixed modes."),
    ] = None,
    mode: Annotated[DPOMode, typer.Option(help="offline | online | mixed | online-bdhs.")] = DPOMode.OFFLINE,
    data: Annotated[
        Path | None,
        typer.Option(
            help="SFT JSONL for the online modes, or the data.jsonl of `mmlens world export` (default: world SFT "
            "turns of a world zoo model)."
        ),
    ] = None,
    judge: Annotated[
        str,
        typer.Option(
            help="Online judge: 'oracle' (ground truth: the world's, or the 'objects' "
            "of your --data lines) or 'vlm:MODEL' (a vision-language judge)."
        ),
    ] = "oracle",
    n_scenes: Annotated[int, typer.Option(min=1, help="World scenes (online modes without --data).")] = 100,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Align a model with DPO through TRL: offline on pairs, online (two samples ranked by a judge), mixed, or
    online BDHS."""
    from mmlens.align.data import load_preference_pairs
    from mmlens.align.eval import vocabulary_parser
    from mmlens.align.judges import OracleJudge, VLMJudge, WorldOracleJudge
    from mmlens.align.report import pairs_report
    from mmlens.align.settings import OnlineMode
    from mmlens.align.train import train_dpo, train_online
    from mmlens.errors import InputError
    from mmlens.io import atomic_folder, write_json_atomic
    from mmlens.models import VisionLanguageModel, load_model

    try:
        mode = DPOMode(mode)  # also accepts the plain value (from Python or a --config file)
    except ValueError:
        raise InputError(f"unknown --mode {mode!r}; use one of {', '.join(m.value for m in DPOMode)}") from None
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty; pass --overwrite or choose another folder")
    if mode in (DPOMode.OFFLINE, DPOMode.MIXED) and pairs is None:
        raise InputError(f"--mode {mode.value} needs --pairs (make them with `mmlens align bdhs`)")
    if mode in (DPOMode.ONLINE, DPOMode.MIXED) and judge != "oracle" and not judge.startswith("vlm:"):
        raise InputError(f"unknown --judge {judge!r}; use 'oracle' or 'vlm:MODEL'")  # before loading anything
    offline = load_preference_pairs(pairs) if pairs is not None else None
    vlm = load_model(model, expect=VisionLanguageModel)
    if mode is DPOMode.OFFLINE:
        assert offline is not None  # checked with the options
        trained, log = train_dpo(vlm, offline, settings)
    else:
        examples, world = _examples(model, data, n_scenes, settings.seed)
        judge_obj: Any = None
        if mode in (DPOMode.ONLINE, DPOMode.MIXED):
            if judge == "oracle" and world is not None:
                judge_obj = WorldOracleJudge(world)
            elif judge == "oracle":
                vocabulary = sorted({o for e in examples for o in (e.objects or ())})
                if not vocabulary:
                    raise InputError("--judge oracle needs 'objects' (the objects in each image) in the --data lines")
                judge_obj = OracleJudge(vocabulary_parser(vocabulary))
            elif judge.startswith("vlm:"):
                judge_obj = VLMJudge(load_model(judge[4:], expect=VisionLanguageModel))
            else:
                raise InputError(f"unknown --judge {judge!r}; use 'oracle' or 'vlm:MODEL'")
        online_mode = OnlineMode(mode.value.replace("-", "_"))
        trained, log = train_online(
            vlm,
            examples,
            online_mode,
            settings,
            judge=judge_obj,
            offline_pairs=offline,
            bdhs=BDHSConfig(seed=settings.seed),
            progress=lambda d, t: _on_main_process() and typer.echo(f"step {d}/{t}", err=True),
        )
    # Under accelerate launch TRL trains data-parallel on every process; the main one writes the model once.
    if not _on_main_process():
        return
    with atomic_folder(out) as tmp:
        trained.save_pretrained(tmp)
        write_json_atomic(tmp / "train_log.json", log)
        if offline:
            pairs_report(
                offline,
                {"mode": mode.value, "steps": settings.steps, "loss_type": settings.loss_type.value},
                title=f"DPO ({mode.value}) of {model}",
            ).write(tmp / "report")
    last = log["steps"][-1] if log.get("steps") else {}
    typer.echo(json.dumps({"mode": mode.value, "final": last}, indent=2))
    typer.echo(f"aligned model written to {out}")


@align_app.command("eval")
def eval_command(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Model(s) to compare (repeat the option); NAME=SPEC to name a column."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the report (index.html, data.json).")],
    pope: Annotated[
        Path | None,
        typer.Option(help="Your POPE probes: JSONL of {image, question, label}, or a `world export` data.jsonl."),
    ] = None,
    chair: Annotated[
        Path | None,
        typer.Option(
            help="Your CHAIR images: JSONL of {image, objects, [prompt, answer]}, or a `world export` data.jsonl."
        ),
    ] = None,
    world_model: Annotated[
        str | None,
        typer.Option(
            help="Without --pope/--chair: the world-trained model whose "
            "world gives the probes (default: the first model)."
        ),
    ] = None,
    n_scenes: Annotated[int, typer.Option(min=1, help="World test scenes for POPE and CHAIR.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """POPE (accuracy, precision, recall, F1, yes-ratio), CHAIR_i / CHAIR_s with object recall, and the
    image-dependence gap of one or more models, side by side in an HTML report."""
    from mmlens.align.eval import WorldEvalConfig, evaluate_files, evaluate_on_world
    from mmlens.align.report import metrics_report
    from mmlens.html.report import format_number
    from mmlens.models import VisionLanguageModel, load_model
    from mmlens.zoo import world_of

    named = [(m.split("=", 1) if "=" in m else (m, m)) for m in model]
    results = {}
    world = None
    if pope is None and chair is None:
        world = world_of(world_model or named[0][1])
    for name, spec in named:
        vlm = load_model(spec, expect=VisionLanguageModel)
        if world is not None:
            cfg = WorldEvalConfig(
                n_pope_scenes=n_scenes, n_caption_scenes=n_scenes, n_gap_examples=n_scenes, batch_size=batch_size
            )
            metrics = evaluate_on_world(vlm, world, cfg)
            metrics.pop("examples", None)
        else:
            metrics = evaluate_files(
                vlm, pope=str(pope) if pope else None, chair=str(chair) if chair else None, batch_size=batch_size
            )
        results[name] = metrics
        numbers = [
            f"{k}={format_number(v)}" for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_n")
        ]
        # a few metrics per line: 22 on one line are unreadable in a terminal
        typer.echo(f"{name}:\n" + "\n".join("  " + ", ".join(numbers[i : i + 4]) for i in range(0, len(numbers), 4)))
    path = metrics_report(results).write(out)
    typer.echo(f"report: {path}")


def bench_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/align.json"),
    model: Annotated[
        str, typer.Option("--model", "-m", help="The SFT model: zoo:NAME or a folder with the zoo's metrics.json.")
    ] = "zoo:mini-llava",
    seeds: Annotated[str, typer.Option(help="Comma-separated test seeds (>= 3).")] = "0,1,2,3,4",
    arms: Annotated[str, typer.Option(help="Comma-separated arms (default: all; sft is always run).")] = "",
    smoke: Annotated[
        bool, typer.Option(help="Reduced sizes that exercise every arm in minutes: a check, never a result.")
    ] = False,
    fresh: Annotated[bool, typer.Option(help="Discard the finished runs in OUT.runs/ instead of resuming.")] = False,
    report: Annotated[Path | None, typer.Option(help="Also write an HTML report to this folder.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the arms side by side with intervals (PNG) here.")
    ] = None,
) -> None:
    """Alignment against prior-driven hallucination: every arm (SFT; DPO on substitution / noisy-image / BDHS pairs
    and the BDHS variants; on-policy online, refresh-every-8 online, mixed and online BDHS; the length-bias
    remedies) tuned with one budget and rule on validation scenes, then read once on test scenes per seed, with 95 %
    intervals. Resumes from OUT.runs/ (one file per finished run)."""
    import sys

    from mmlens.align.report import bench_report
    from mmlens.bench.align import ARMS, AlignBenchConfig, Arm, align_benchmark, smoke_config
    from mmlens.errors import InputError

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise InputError("--seeds is empty")
    names = [a.strip() for a in arms.split(",") if a.strip()]
    unknown = sorted(set(names) - {a.value for a in ARMS})
    if unknown:
        raise InputError(f"unknown arms {unknown}; valid: {', '.join(a.value for a in ARMS)}")
    chosen = tuple(a for a in ARMS if not names or a.value in names or a is Arm.SFT)
    config = (
        smoke_config(model, seeds=seed_list, arms=chosen)
        if smoke
        else AlignBenchConfig(model=model, seeds=seed_list, arms=chosen)
    )
    result = align_benchmark(
        config,
        out,
        fresh=fresh,
        progress=lambda m: typer.echo(m, err=True),
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
    )
    if report is not None:
        bench_report(result).write(report)
    if plot is not None:
        from mmlens.align.report import arms_figure

        plot.parent.mkdir(parents=True, exist_ok=True)
        arms_figure(result).savefig(plot, dpi=120)
    headline = {
        name: {k: v["mean"] for k, v in rec.items() if isinstance(v, dict) and "mean" in v}
        for name, rec in result["arms"].items()
    }
    typer.echo(json.dumps({"failure": result["failure"], "arms": headline, "cost": result["cost"]}, indent=2))
    typer.echo(f"written to {out}")
