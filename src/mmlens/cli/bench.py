"""``mmlens bench``: the measurements each capability reports in ``benchmarks/results/``."""

from __future__ import annotations

import functools
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mmlens.cli import align, bench_influence, concepts, steer

bench_app = typer.Typer(help="Run a benchmark and write its JSON result.", no_args_is_help=True)


def _command_line(ctx: Any) -> str:
    """The command that repeats this run: the command path and every option not left at its default."""
    from typer._click.core import ParameterSource  # typer vendors click

    parts = [ctx.command_path]
    for param in ctx.command.params:
        if param.name in ("config", "verbose") or not getattr(param, "opts", None):
            continue
        source = ctx.get_parameter_source(param.name)
        if source in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params.get(param.name)
        if getattr(param, "is_flag", False):
            names = param.opts if value else (param.secondary_opts or param.opts)
            parts.append(names[0])
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


def _records_its_command(command: Callable[..., None]) -> Callable[..., None]:
    """A benchmark command whose JSON result (``--out``) says which command wrote it, and when: the keys
    ``command`` and ``written`` are added once the benchmark has written its file."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from typer._click.globals import get_current_context

        from mmlens.io import write_json_atomic

        line = _command_line(get_current_context())
        command(*args, **kwargs)
        out = Path(kwargs["out"])
        result = json.loads(out.read_text())
        if isinstance(result, dict):
            stamp = {"command": line, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_json_atomic(out, stamp | {k: v for k, v in result.items() if k not in stamp})

    run.records_its_command = True  # type: ignore[attr-defined]
    return run


@bench_app.command("zoo")
@_records_its_command
def bench_zoo_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/zoo.json"),
    home: Annotated[
        Path | None,
        typer.Option(
            help="Build into this MMLENS_HOME and keep the models (default: a temporary folder, deleted afterwards)."
        ),
    ] = None,
) -> None:
    """Build the whole zoo from scratch in a fresh folder (the shipped zoo out of the lookup), time it, evaluate
    every model and compare each rebuilt metric with the shipped model's."""
    from mmlens.bench.zoo import zoo_benchmark
    from mmlens.io import write_json_atomic

    result = zoo_benchmark(home=home)
    write_json_atomic(out, result)
    typer.echo(json.dumps(result, indent=2))
    if "reproduction" in result:
        typer.echo(_reproduction_line(result))
    typer.echo(f"written to {out}")


def _reproduction_line(result: dict) -> str:
    """One line on how the rebuilt zoo compares with the shipped one (``bench zoo``'s ``reproduction``)."""
    rep = result["reproduction"]
    if rep["shipped_zoo"] is None:
        return "reproduced: nothing to compare (no zoo is shipped with this installation)"
    rows = [(n, k, r) for n, m in result["models"].items() for k, r in m.get("reproduced", {}).items()]
    missed = [f"{n} {k} {r['shipped']} -> {r['rebuilt']}" for n, k, r in rows if not r["within"]]
    same = sum(rep["weights_identical"].values())
    return (
        f"reproduced: {len(rows) - len(missed)} of {len(rows)} metrics within {rep['tolerance']} of the shipped "
        f"models'; weights bit-identical for {same} of {len(rep['weights_identical'])} models"
        + (f"; outside: {'; '.join(missed)}" if missed else "")
    )


@bench_app.command("shift")
@_records_its_command
def bench_shift_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/shift.json"),
    tiers: Annotated[
        str, typer.Option(help="Comma-separated: ground_truth, llava_bench, mini_world.")
    ] = "ground_truth,llava_bench,mini_world",
    seed: Annotated[int, typer.Option()] = 0,
    llava_bench_dir: Annotated[Path, typer.Option(help="Folder of the real LLaVA-Bench shift responses.")] = Path(
        "../shared/data/llava-bench-shift"
    ),
    official_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The EMI authors' CLUB_global.pt (default: emi-official/CLUB_global.pt beside --llava-bench-dir)."
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="Start a new file instead of merging the tiers run now into OUT.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Take the parts an interrupted run of the same command on the same code finished from "
            "OUT.checkpoint.json (--no-resume: recompute everything)."
        ),
    ] = True,
) -> None:
    """EMI/EMID benchmark: Gaussian ground truth, mini-llava under world shifts, real LLaVA-1.5-13B responses, cost.

    Tiers run now replace their entries in an existing OUT (written by this command), the others are kept; each
    tier records its commit, time, machine and command in ``tier_runs``. Every finished part is kept in
    OUT.checkpoint.json until OUT is written, so an interrupted run resumes when the command is run again."""
    import sys

    from mmlens.bench.shift import TIERS, merge_tiers, shift_benchmark
    from mmlens.errors import InputError
    from mmlens.io import write_json_atomic

    chosen = tuple(t.strip() for t in tiers.split(",") if t.strip())
    unknown = set(chosen) - set(TIERS)
    if unknown:
        raise typer.BadParameter(f"unknown tiers {sorted(unknown)}", param_hint="--tiers")
    if official_checkpoint is not None and not official_checkpoint.is_file():
        raise InputError(f"official checkpoint not found: {official_checkpoint}")
    existing = None
    if out.is_file() and not fresh:
        try:
            existing = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {out} to merge into ({err}); use --fresh") from None
        merge_tiers(existing, {"tier_runs": {}, "seed": seed, "torch_threads": 0})  # fail before any work
    checkpoint = out.with_name(out.name + ".checkpoint.json")
    result = shift_benchmark(
        chosen,
        seed=seed,
        llava_bench_dir=llava_bench_dir,
        official_checkpoint=official_checkpoint,
        progress_cb=lambda message: typer.echo(message, err=True),
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
        checkpoint=checkpoint,
        resume=resume,
    )
    if existing is not None:
        result = merge_tiers(existing, result)
    write_json_atomic(out, result)
    checkpoint.unlink(missing_ok=True)
    headline = {k: v for k, v in result.items() if not isinstance(v, dict)}
    typer.echo(json.dumps(headline, indent=2))
    typer.echo(f"written to {out}")


@bench_app.command("cli")
@_records_its_command
def bench_cli_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/cli.json"),
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each command (the median and the min are kept).")] = 5,
) -> None:
    """Start-up time of the command line: `mmlens --help` and every subcommand's `--help`, each a fresh process,
    with the machine's load average (targets: 1.5 s and 2 s)."""
    from mmlens.cli.startup import cli_benchmark
    from mmlens.io import write_json_atomic

    result = cli_benchmark(repeats=repeats, progress=lambda m: typer.echo(m, err=True))
    write_json_atomic(out, result)
    typer.echo(
        json.dumps({k: result[k] for k in ("help_s", "subcommand_help_max_s", "targets_met", "load_average")}, indent=2)
    )
    typer.echo(f"written to {out}")


@bench_app.command("influence-scale")
@_records_its_command
def bench_influence_scale_command(
    out: Annotated[
        Path, typer.Option(help="Where to write the JSON result (written after every run; a rerun resumes).")
    ] = Path("benchmarks/results/influence_scale.json"),
    plot: Annotated[Path | None, typer.Option(help="Also draw the scaling plot (PNG) here.")] = Path(
        "docs/images/influence_scale.png"
    ),
    model: Annotated[str, typer.Option(help="The contrastive model.")] = "zoo:digits-clip",
    seed: Annotated[int, typer.Option()] = 0,
    jobs: Annotated[int, typer.Option(min=1, help="Runs at once (each in its own process).")] = 1,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore the runs already in --out (after a change of what a run does).")
    ] = False,
) -> None:
    """Wall time and peak memory of scoring every training pair, N = 10^3, 10^4, 10^5, two parameter groups."""
    from mmlens.bench.influence_scale import influence_scale_benchmark

    result = influence_scale_benchmark(
        model,
        seed=seed,
        out=out,
        jobs=jobs,
        plot=plot,
        fresh=fresh,
        progress_cb=lambda r: typer.echo(f"running {r} ...", err=True),
    )
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"written to {out}")


# Each capability's benchmark lives beside its own commands (mmlens/cli/<capability>.py; influence: its own
# module, so its tiers can grow without touching the influence commands).
bench_app.command("influence")(_records_its_command(bench_influence.bench_command))
bench_app.command("concepts")(_records_its_command(concepts.bench_command))
bench_app.command("steer")(_records_its_command(steer.bench_command))
bench_app.command("align")(_records_its_command(align.bench_command))
