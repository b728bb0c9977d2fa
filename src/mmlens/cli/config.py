"""Config files for every command: ``--config FILE`` (YAML or TOML) mirrors the command's options, and the
resolved options (every value the run actually used) are written beside the command's results.

A config file is one flat mapping of option names (``max_new_tokens`` or ``max-new-tokens``) to values; the
command line wins over the file, the file over the defaults (click's ``default_map``). A list given for a
comma-separated option (``visual: [fog, defocus_blur]``) is joined with commas. Unknown names are an
:class:`~mmlens.errors.InputError` (one line, exit 2).

The resolved config goes next to the command's ``--out`` (or ``OUT_DIR`` argument): ``<out>/mmlens-config.yaml``
when the output is a folder, ``<out>.config.yaml`` when it is a file; it is itself a valid ``--config`` file for
the same command, so ``mmlens shift generate --config runs/mine/mmlens-config.yaml --overwrite`` repeats the run.
Commands without an output path (``zoo list``, ``models info``, ...) accept ``--config`` and write nothing.
"""

from __future__ import annotations

import copy
import enum
import functools
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mmlens.errors import InputError
from mmlens.io import atomic_text_file

CONFIG_OPTION = "config"
#: The parameters that name a command's output, in order of preference.
OUTPUT_PARAMETERS = ("out", "out_dir")
FOLDER_CONFIG_NAME = "mmlens-config.yaml"
FILE_CONFIG_SUFFIX = ".config.yaml"


class ConfigFormat(enum.Enum):
    YAML = "yaml"
    TOML = "toml"


_SUFFIXES = {".yaml": ConfigFormat.YAML, ".yml": ConfigFormat.YAML, ".toml": ConfigFormat.TOML}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file; InputError if missing or malformed."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"config file {path} must end in .yaml, .yml or .toml")
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if fmt is ConfigFormat.TOML else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise InputError(f"config file {path} is not valid {fmt.value.upper()}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InputError(f"config file {path} must hold a mapping of option names to values, "
                         f"not a {type(data).__name__}")
    return dict(data)


def _takes_one_value(param: Any) -> bool:
    return getattr(param, "nargs", 1) == 1 and not getattr(param, "multiple", False)


def command_defaults(config: Mapping[str, Any], params: list[Any], source: str, command_path: str
                     ) -> dict[str, Any]:
    """The ``default_map`` of a command from a config mapping: names normalised, unknown names refused."""
    by_name = {p.name: p for p in params if p.name and p.name != CONFIG_OPTION and getattr(p, "expose_value", True)}
    defaults: dict[str, Any] = {}
    unknown = []
    for key, value in config.items():
        name = str(key).lstrip("-").replace("-", "_")
        param = by_name.get(name)
        if param is None:
            unknown.append(str(key))
            continue
        if isinstance(value, (list, tuple)) and _takes_one_value(param):
            value = ",".join(str(v) for v in value)  # the comma-separated options
        defaults[name] = value
    if unknown:
        valid = ", ".join(sorted(by_name)) or "none"
        raise InputError(f"{source}: unknown option(s) {', '.join(unknown)} for '{command_path}' "
                         f"(valid: {valid})")
    return defaults


def _load_into_context(ctx: Any, param: Any, value: Any) -> None:
    """Eager callback of ``--config``: runs before the other options are resolved, so its ``default_map``
    supplies their values (command line > config file > defaults)."""
    if value is None or ctx.resilient_parsing:
        return
    defaults = command_defaults(read_config_file(value), list(ctx.command.params), str(value), ctx.command_path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _config_option_prototype() -> Any:
    """The click parameter of ``--config``, built by typer from a one-option command."""

    def prototype(
        config: Annotated[Path | None, typer.Option(
            "--config", is_eager=True, expose_value=False, metavar="FILE",
            help="YAML or TOML file of this command's options (names as below, e.g. max_new_tokens: 8); "
                 "options given on the command line win. The resolved options are written beside the results.")]
        = None,
    ) -> None:
        pass

    one_option = typer.Typer(add_completion=False)
    one_option.command()(prototype)
    command = typer.main.get_command(one_option)
    option = next(p for p in command.params if p.name == CONFIG_OPTION)
    option.callback = _load_into_context  # the raw (ctx, param, value) form, set after typer built it
    return option


def _plain(value: Any) -> Any:
    """A YAML-safe form of a resolved option value."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config_path(options: Mapping[str, Any]) -> Path | None:
    """Where the resolved config of a run with these options goes (``None``: the command has no output path)."""
    out = next((options[name] for name in OUTPUT_PARAMETERS if options.get(name) is not None), None)
    if out is None:
        return None
    out = Path(out)
    return out / FOLDER_CONFIG_NAME if out.is_dir() else out.with_name(out.name + FILE_CONFIG_SUFFIX)


def write_resolved_config(command_path: str, options: Mapping[str, Any]) -> Path | None:
    """Write every option value of a finished run beside its output (atomically); returns the path."""
    path = resolved_config_path(options)
    if path is None:
        return None
    body = yaml.safe_dump({k: _plain(v) for k, v in options.items()}, sort_keys=False, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(path) as f:
        f.write(f"# {command_path}: the options this run used. Repeat it with:\n"
                f"#   {command_path} --config {path}\n{body}")
    return path


def _is_main_process() -> bool:
    # Under accelerate launch / torchrun every process runs the command; one writes the config.
    return int(os.environ.get("RANK", "0") or "0") == 0


def _with_resolved_config(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        from typer._click.globals import get_current_context  # typer vendors click

        ctx = get_current_context()
        result = callback(*args, **kwargs)
        if _is_main_process():
            ordered = {p.name: ctx.params[p.name] for p in ctx.command.params if p.name in ctx.params}
            write_resolved_config(ctx.command_path, ordered)
        return result

    return run


def _leaf_commands(command: Any) -> list[Any]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [command]
    return [leaf for sub in subcommands.values() for leaf in _leaf_commands(sub)]


def add_config_support(root: Any) -> Any:
    """Give every leaf command of the click command tree ``root`` (built by ``typer.main.get_command``) a
    ``--config FILE`` option and make it write its resolved config after a successful run. Returns ``root``."""
    prototype = _config_option_prototype()
    for command in _leaf_commands(root):
        if any(p.name == CONFIG_OPTION for p in command.params):
            continue
        command.params.append(copy.copy(prototype))
        if command.callback is not None:
            command.callback = _with_resolved_config(command.callback)
    return root


__all__ = ["ConfigFormat", "FILE_CONFIG_SUFFIX", "FOLDER_CONFIG_NAME", "add_config_support", "command_defaults",
           "read_config_file", "resolved_config_path", "write_resolved_config"]
