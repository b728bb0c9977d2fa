"""The ``mmlens`` command: a thin layer over the public API of each package.

Everything a user can cause (a :class:`mmlens.errors.MMLensError`, and every option the parser refuses) is printed
as one line ``mmlens: error: ...`` on stderr with exit code 2; anything else is a bug and keeps its traceback.
Every command accepts ``--config FILE`` (YAML or TOML) and writes the options it used beside its results
(:mod:`mmlens.cli.config`), checks its output path before any work, and says what was kept on Ctrl-C.

Start-up: the command groups are imported only when named (``mmlens --help`` imports none of them), and each
group's module imports only typer and light config modules; the deep-learning stack is imported inside the
command that runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import typer
from typer.core import TyperGroup

HELP = "Where a multimodal model's alignment breaks, why, and how to repair it."

#: name -> (module, typer app, one-line help shown by ``mmlens --help`` without importing the module)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "zoo": (
        "mmlens.cli.zoo",
        "zoo_app",
        "The built-in model zoo: shipped with mmlens, or built on this machine from the miniature world.",
    ),
    "world": (
        "mmlens.cli.world",
        "world_app",
        "The seeded miniature world: scenes, captions, VQA, POPE probes, shifts.",
    ),
    "models": (
        "mmlens.cli.models",
        "models_app",
        "Load any supported model (zoo:NAME, a local path or a Hugging Face id) and run it.",
    ),
    "bench": ("mmlens.cli.bench", "bench_app", "Run a benchmark and write its JSON result."),
    "shift": (
        "mmlens.cli.shift",
        "shift_app",
        "Distribution-shift risk of a vision-language model: EMI, EMID and its bound.",
    ),
    "influence": (
        "mmlens.cli.influence",
        "influence_app",
        "Influence of training pairs on a contrastive model (ECIF).",
    ),
    "concepts": (
        "mmlens.cli.concepts",
        "concepts_app",
        "Concept dictionaries over hidden states and what fine-tuning shifted.",
    ),
    "steer": ("mmlens.cli.steer", "steer_app", "Steering vision-language models with concept and shift vectors."),
    "align": (
        "mmlens.cli.align",
        "align_app",
        "Preference alignment against hallucination: BDHS pairs, DPO, POPE/CHAIR.",
    ),
    "demo": (
        "mmlens.cli.demo",
        "demo_app",
        "Audit the zoo (shipped, or built here if missing) on the miniature world into one HTML site.",
    ),
    "audit": (
        "mmlens.cli.audit",
        "audit_app",
        "Run the analyses that apply to a model and its data and write one static HTML site.",
    ),
}
#: Subcommands that are one command rather than a group of them.
SINGLE_COMMANDS = ("demo", "audit")


def load_subcommand(name: str) -> Any:
    """The click command of ``mmlens NAME``: its module imported now, ``--config``/``--verbose`` and the checks of
    :mod:`mmlens.cli.config` added to every leaf."""
    from mmlens.cli.config import add_config_support

    module, attribute, _ = SUBCOMMANDS[name]
    app = getattr(importlib.import_module(module), attribute)
    # a group stays a group even with one command (`mmlens world export`); demo and audit are single commands
    command = typer.main.get_command(app) if name in SINGLE_COMMANDS else typer.main.get_group(app)
    command.name = name
    _plain_help(command)
    return add_config_support(command)


def _plain_help(command: Any) -> None:
    """Click's plain help (every spelling of an option listed, compact, no rich import) on the whole tree."""
    command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


class _LazyCommands(MutableMapping[str, Any]):
    """The subcommands of ``mmlens``: names known up front, each loaded on first access."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in SUBCOMMANDS:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = load_subcommand(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the subcommands of mmlens are fixed")

    def __iter__(self) -> Iterator[str]:
        return iter(SUBCOMMANDS)

    def __len__(self) -> int:
        return len(SUBCOMMANDS)


class LazyGroup(TyperGroup):
    """``mmlens``: lists its subcommands from :data:`SUBCOMMANDS` (no import) and loads the one that runs."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(SUBCOMMANDS)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in SUBCOMMANDS.items()])


def command() -> Any:
    """The click command of ``mmlens`` (subcommands load on access; iterate ``command().commands.values()`` for the
    whole tree): what ``mmlens`` and ``python -m mmlens`` run."""
    return LazyGroup(name="mmlens", commands=_LazyCommands(), help=HELP, no_args_is_help=True, rich_markup_mode=None)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _usage_message(err: Any) -> str:
    """One line for an error of the option parser: which command, what was wrong (click's message, which names the
    option), and where the help is."""
    message = _one_line(err.format_message())
    ctx = getattr(err, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return message + where


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``mmlens ARGV``; always ends in ``SystemExit`` (0 success, 2 user error, 130 interrupted)."""
    from typer import exceptions as typer_exceptions
    from typer._click import exceptions as click_exceptions  # typer vendors click

    from mmlens.errors import MMLensError

    # Spinning OpenMP waits make torch 5-20x slower when another process shares the cores; must precede torch's import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = command().main(args=args, prog_name="mmlens", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as err:
        typer.echo(err.ctx.get_help())
        code = 0
    except click_exceptions.ClickException as err:  # the parser's errors: a bad value, a missing option, ...
        print(f"mmlens: error: {_usage_message(err)}", file=sys.stderr)
        code = 2
    except typer_exceptions.Abort:
        code = 130
    except MMLensError as err:
        print(f"mmlens: error: {_one_line(err)}", file=sys.stderr)
        code = 2
    raise SystemExit(code if isinstance(code, int) else 0)


__all__ = ["SUBCOMMANDS", "LazyGroup", "command", "load_subcommand", "main"]
