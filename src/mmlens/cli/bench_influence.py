"""``mmlens bench influence``: the ECIF benchmark's one command (tiers merged into one resumable result file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None


def bench_command(
    out: Annotated[Path, typer.Option(help="The JSON result (tiers run now are merged into it).")] = Path(
        "benchmarks/results/influence.json"
    ),
    tiers: Annotated[str, typer.Option(help="Comma-separated: memorised, fidelity_towers, clean_trained.")] = (
        "memorised,fidelity_towers,clean_trained"
    ),
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the memorised models and finished units are kept (default $MMLENS_HOME/bench/influence)."
        ),
    ] = None,
    kinds: Annotated[str, typer.Option(help="Memorised tier: noise kinds (confusable, random).")] = "confusable,random",
    rates: Annotated[str, typer.Option(help="Memorised tier: noise rates, in the order they are run.")] = "0.2,0.1,0.4",
    seeds: Annotated[str, typer.Option(help="Memorised tier: seeds (>= 3 for intervals).")] = "0,1,2",
    models: Annotated[str, typer.Option(help="Clean-trained tier: zoo models.")] = "digits-clip,mini-clip",
    peer: Annotated[bool, typer.Option(help="Run the peer library (kronfluence EK-FAC) side by side.")] = True,
    stop_after: Annotated[
        float | None,
        typer.Option(help="Minutes after which no new memorised unit starts (the rest is left to a rerun)."),
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Start a new file instead of merging into OUT.")] = False,
    seed: Annotated[int, typer.Option(help="Clean-trained tier seed.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Draw the two regimes' detection AUROC here (PNG).")] = Path(
        "docs/images/influence_regimes.png"
    ),
) -> None:
    """ECIF benchmark. memorised: CLIPs trained end to end on 10/20/40 % misaligned pairs (zoo recipe), detection
    with intervals over seeds, trace-back, removal; clean_trained: the heads-only regime, fidelity, cost.
    Resumable: finished memorised units are kept in the work folder; the file (and the plot) are rewritten after
    each."""
    import time

    from mmlens.bench.influence import TIERS, BenchConfig, influence_benchmark, plot_regimes
    from mmlens.bench.influence_memorised import MemorisedConfig
    from mmlens.errors import InputError
    from mmlens.io import write_json_atomic

    chosen = tuple(t.strip() for t in tiers.split(",") if t.strip())
    unknown = set(chosen) - set(TIERS)
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown tiers {sorted(unknown)}; use {', '.join(TIERS)}", param_hint="--tiers")
    chosen_models = tuple(m.strip() for m in models.split(",") if m.strip())
    if set(chosen_models) - {"digits-clip", "mini-clip"}:
        raise typer.BadParameter(f"unknown models {sorted(set(chosen_models) - {'digits-clip', 'mini-clip'})}")
    chosen_kinds = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if set(chosen_kinds) - {"confusable", "random"}:
        raise typer.BadParameter("kinds are confusable and random", param_hint="--kinds")
    rate_values = _floats(rates, "--rates")
    if any(not 0 < r < 1 for r in rate_values):
        raise typer.BadParameter("rates must be in (0, 1)", param_hint="--rates")
    seed_values = tuple(int(s) for s in _floats(seeds, "--seeds"))
    existing = None
    if out.is_file() and not fresh:
        try:
            existing = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {out} to merge into ({err}); use --fresh") from None

    def write(result: dict) -> None:
        write_json_atomic(out, result)
        if plot is not None:
            plot_regimes(result, plot)

    memorised = MemorisedConfig(kinds=chosen_kinds, rates=rate_values, seeds=seed_values, run_peer=peer)
    result = influence_benchmark(
        BenchConfig(models=chosen_models, run_peer=peer, seed=seed),
        log=lambda s: typer.echo(s, err=True),
        tiers=chosen,
        memorised=memorised,
        work=work_dir,
        existing=existing,
        command=" ".join(["mmlens", *sys.argv[1:]]) if sys.argv else None,
        deadline=None if stop_after is None else time.time() + 60 * stop_after,
        write=write,
    )
    typer.echo(json.dumps(result.get("memorised_status", {}), indent=2))
    typer.echo(f"written to {out}")
