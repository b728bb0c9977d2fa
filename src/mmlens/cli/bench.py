"""``mmlens bench``: the measurements each capability reports in ``benchmarks/results/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmlens.cli import align, bench_influence, concepts, steer

bench_app = typer.Typer(help="Run a benchmark and write its JSON result.", no_args_is_help=True)


@bench_app.command("zoo")
def bench_zoo_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/zoo.json"),
    home: Annotated[
        Path | None,
        typer.Option(
            help="Build into this MMLENS_HOME and keep the models (default: a temporary folder, deleted afterwards)."
        ),
    ] = None,
) -> None:
    """Build the whole zoo from scratch in a fresh folder, time it and evaluate every model."""
    from mmlens.bench.zoo import zoo_benchmark
    from mmlens.io import write_json_atomic

    result = zoo_benchmark(home=home)
    write_json_atomic(out, result)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"written to {out}")


@bench_app.command("shift")
def bench_shift_command(
    out: Annotated[Path, typer.Option(help="Where to write the JSON result.")] = Path("benchmarks/results/shift.json"),
    tiers: Annotated[
        str, typer.Option(help="Comma-separated: ground_truth, llava_bench, mini_world.")
    ] = "ground_truth,llava_bench,mini_world",
    seed: Annotated[int, typer.Option()] = 0,
    llava_bench_dir: Annotated[Path, typer.Option(help="Folder of the real LLaVA-Bench shift responses.")] = Path(
        "../shared/data/llava-bench-shift"
    ),
    fresh: Annotated[
        bool, typer.Option(help="Start a new file instead of merging the tiers run now into OUT.")
    ] = False,
) -> None:
    """EMI/EMID benchmark: Gaussian ground truth, mini-llava under world shifts, real LLaVA-1.5-13B responses, cost.

    Tiers run now replace their entries in an existing OUT (written by this command), the others are kept; each
    tier records its commit, time and command in ``tier_runs``."""
    import sys

    from mmlens.bench.shift import TIERS, merge_tiers, shift_benchmark
    from mmlens.errors import InputError
    from mmlens.io import write_json_atomic

    chosen = tuple(t.strip() for t in tiers.split(",") if t.strip())
    unknown = set(chosen) - set(TIERS)
    if unknown:
        raise typer.BadParameter(f"unknown tiers {sorted(unknown)}", param_hint="--tiers")
    existing = None
    if out.is_file() and not fresh:
        try:
            existing = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {out} to merge into ({err}); use --fresh") from None
        merge_tiers(existing, {"tier_runs": {}, "seed": seed, "torch_threads": 0})  # fail before any work
    result = shift_benchmark(
        chosen,
        seed=seed,
        llava_bench_dir=llava_bench_dir,
        progress_cb=lambda t: typer.echo(f"running tier {t} ...", err=True),
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
    )
    if existing is not None:
        result = merge_tiers(existing, result)
    write_json_atomic(out, result)
    headline = {k: v for k, v in result.items() if not isinstance(v, dict)}
    typer.echo(json.dumps(headline, indent=2))
    typer.echo(f"written to {out}")


@bench_app.command("cli")
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
) -> None:
    """Wall time and peak memory of scoring every training pair, N = 10^3, 10^4, 10^5, two parameter groups."""
    from mmlens.bench.influence_scale import influence_scale_benchmark

    result = influence_scale_benchmark(
        model, seed=seed, out=out, jobs=jobs, plot=plot, progress_cb=lambda r: typer.echo(f"running {r} ...", err=True)
    )
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"written to {out}")


# Each capability's benchmark lives beside its own commands (mmlens/cli/<capability>.py; influence: its own
# module, so its tiers can grow without touching the influence commands).
bench_app.command("influence")(bench_influence.bench_command)
bench_app.command("concepts")(concepts.bench_command)
bench_app.command("steer")(steer.bench_command)
bench_app.command("align")(align.bench_command)
