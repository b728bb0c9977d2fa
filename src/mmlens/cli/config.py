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

Paths: a relative path in a config file is relative to the file's folder (so a config file works from anywhere).
The resolved config stores a path relative to its own folder when both lie inside the folder the command ran from
(so it repeats the run from any folder, moves with its project, and a committed one carries no writer's folder
names), else absolute.

Every leaf command also gets, from :func:`add_config_support`: ``--verbose`` (the per-process and per-weight-load
progress bars of the libraries, hidden otherwise), finite numbers only (``nan``/``inf`` are refused by the parser),
its output location checked before any work (:data:`OUTPUT_KINDS`), and a word on Ctrl-C about what was kept.
"""

from __future__ import annotations

import copy
import enum
import errno
import functools
import math
import os
import sys
import tomllib
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mmlens.errors import InputError
from mmlens.io import atomic_text_file

CONFIG_OPTION = "config"
VERBOSE_OPTION = "verbose"
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
        raise InputError(
            f"config file {path} must hold a mapping of option names to values, not a {type(data).__name__}"
        )
    return dict(data)


def _takes_one_value(param: Any) -> bool:
    return getattr(param, "nargs", 1) == 1 and not getattr(param, "multiple", False)


def _config_names(param: Any) -> list[str]:
    """The keys a config file may use for ``param``: its name and each of its option spellings (aliases)."""
    names = [param.name]
    for opt in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
        if opt.startswith("--"):
            names.append(opt[2:].replace("-", "_"))
    return names


#: Parameters whose text names a local path when one exists (models and data may also be ids: zoo:NAME, world:N).
PATH_LIKE_STRINGS = ("model", "data", "finetuned", "image_model", "world_model", "judge")


def _resolve_relative(value: Any, param: Any, base: Path) -> Any:
    """A config file's relative path, made relative to the file's folder ``base``."""
    if not isinstance(value, str) or not value or os.path.isabs(value) or ":" in value:
        return value
    if param.name in PATH_LIKE_STRINGS or _is_path_param(param):
        candidate = base / value
        # a Path option always names a path; a model/data text only when the path exists (else it is an id)
        if _is_path_param(param) or candidate.exists():
            return str(candidate)
    return value


def _is_path_param(param: Any) -> bool:
    descriptor = getattr(param, "type_descriptor", None)  # typer's description of the annotation
    return bool(descriptor is not None and descriptor.is_path)


def command_defaults(
    config: Mapping[str, Any], params: list[Any], source: str, command_path: str, base: Path | None = None
) -> dict[str, Any]:
    """The ``default_map`` of a command from a config mapping: names normalised (option aliases accepted), unknown
    names refused, relative paths made relative to ``base`` (the config file's folder)."""
    usable = [
        p
        for p in params
        if p.name and p.name not in (CONFIG_OPTION, VERBOSE_OPTION) and getattr(p, "expose_value", True)
    ]
    by_name = {name: p for p in usable for name in _config_names(p)}
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
        if base is not None:
            value = (
                [_resolve_relative(v, param, base) for v in value]
                if isinstance(value, list)
                else _resolve_relative(value, param, base)
            )
        defaults[param.name] = value
    if unknown:
        valid = ", ".join(sorted(p.name for p in usable)) or "none"
        raise InputError(f"{source}: unknown option(s) {', '.join(unknown)} for '{command_path}' (valid: {valid})")
    return defaults


def _load_into_context(ctx: Any, param: Any, value: Any) -> None:
    """Eager callback of ``--config``: runs before the other options are resolved, so its ``default_map``
    supplies their values (command line > config file > defaults)."""
    if value is None or ctx.resilient_parsing:
        return
    defaults = command_defaults(
        read_config_file(value),
        list(ctx.command.params),
        str(value),
        ctx.command_path,
        base=Path(os.path.abspath(value)).parent,
    )
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _config_option_prototype() -> Any:
    """The click parameter of ``--config``, built by typer from a one-option command."""

    def prototype(
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                is_eager=True,
                expose_value=False,
                metavar="FILE",
                help="YAML or TOML file of this command's options (names as below, e.g. max_new_tokens: 8); "
                "options given on the command line win. The resolved options are written beside the results.",
            ),
        ] = None,
    ) -> None:
        pass

    one_option = typer.Typer(add_completion=False)
    one_option.command()(prototype)
    command = typer.main.get_command(one_option)
    option = next(p for p in command.params if p.name == CONFIG_OPTION)
    option.callback = _load_into_context  # the raw (ctx, param, value) form, set after typer built it
    return option


def _verbose_option_prototype() -> Any:
    """``--verbose``: the progress bars of every process and every weight load (hidden otherwise)."""

    def prototype(
        verbose: Annotated[
            bool,
            typer.Option(
                "--verbose",
                is_eager=True,
                expose_value=False,
                help="Show every progress bar (per process, per weight load) and the libraries' logs.",
            ),
        ] = False,
    ) -> None:
        pass

    one_option = typer.Typer(add_completion=False)
    one_option.command()(prototype)
    command = typer.main.get_command(one_option)
    option = next(p for p in command.params if p.name == VERBOSE_OPTION)
    option.callback = _set_verbosity
    return option


#: modules whose FutureWarnings a command hides without --verbose (a regular expression on the warning's module)
LIBRARY_MODULES = r"(transformers|trl|peft|accelerate|torch|datasets|huggingface_hub)(\.|$)"


def _set_verbosity(ctx: Any, param: Any, value: Any) -> None:
    """Before any library is imported: without ``--verbose``, transformers' "Loading weights" bar and the hub's
    bars are off (huggingface_hub reads this at import), and in a log (stderr not a terminal) every tqdm bar is off,
    so that nested bars leave no escape codes behind."""
    if ctx.resilient_parsing:
        return
    if value:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0"
        os.environ.pop("TQDM_DISABLE", None)
        os.environ["MMLENS_PROGRESS"] = "always"  # mmlens's own bars (mmlens.progress), in a log too
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # the libraries' deprecation notices (e.g. transformers' `is_gradient_checkpointing` on every TRL step)
        # are for their callers' code, not for someone running a command; --verbose shows them
        warnings.filterwarnings("ignore", category=FutureWarning, module=LIBRARY_MODULES)
        if not sys.stderr.isatty():
            os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # already imported (the CLI called from Python): switch it directly
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if value else hf_logging.disable_progress_bar)()


def stored_path(value: str | os.PathLike[str], config_dir: Path) -> str:
    """How a written config stores a path: relative to the config's folder when both lie inside the folder the
    command ran from (a project tree moves, is copied or committed as a whole, and must not carry the writer's
    folder names: ``/home/me/scratch/...``), else absolute. Either way ``--config`` resolves it (relative paths
    against the file's folder)."""
    absolute = Path(os.path.abspath(value))
    here = Path.cwd()
    if absolute.is_relative_to(here) and config_dir.is_relative_to(here):
        return os.path.relpath(absolute, config_dir)
    return str(absolute)


def _plain(value: Any, config_dir: Path) -> Any:
    """A YAML-safe form of a resolved option value; paths as :func:`stored_path` (the config repeats the run from
    any folder)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value, config_dir)
    if isinstance(value, os.PathLike):
        return stored_path(value, config_dir)
    if isinstance(value, (list, tuple)):
        return [_plain(v, config_dir) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, config_dir) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _path_text(name: str, value: Any, config_dir: Path) -> Any:
    """A model or data text that names an existing local path, stored as a path (ids such as zoo:NAME stay)."""
    if name in PATH_LIKE_STRINGS and isinstance(value, str) and value and ":" not in value and Path(value).exists():
        return stored_path(value, config_dir)
    if name in PATH_LIKE_STRINGS and isinstance(value, (list, tuple)):
        return [_path_text(name, v, config_dir) for v in value]
    return value


#: Commands that share their OUT folder with ``influence detect`` (the fit in OUT/fit is reused) write their resolved
#: config under their own name, so that detect's ``mmlens-config.yaml`` is kept.
SHARED_FOLDER_CONFIGS = {
    "influence trace": "mmlens-config.trace.yaml",
    "influence remove": "mmlens-config.remove.yaml",
}


def resolved_config_path(options: Mapping[str, Any], command_path: str = "") -> Path | None:
    """Where the resolved config of a run with these options goes (``None``: the command has no output path)."""
    out = next((options[name] for name in OUTPUT_PARAMETERS if options.get(name) is not None), None)
    if out is None:
        return None
    out = Path(out)
    if out.is_dir():
        return out / SHARED_FOLDER_CONFIGS.get(command_path.removeprefix("mmlens ").strip(), FOLDER_CONFIG_NAME)
    return out.with_name(out.name + FILE_CONFIG_SUFFIX)


def write_resolved_config(command_path: str, options: Mapping[str, Any]) -> Path | None:
    """Write every option value of a finished run beside its output (atomically); returns the path."""
    path = resolved_config_path(options, command_path)
    if path is None:
        return None
    config_dir = Path(os.path.abspath(path.parent))
    body = yaml.safe_dump(
        {k: _plain(_path_text(k, v, config_dir), config_dir) for k, v in options.items()},
        sort_keys=False,
        allow_unicode=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = Path(os.path.abspath(path))
    shown = shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown
    with atomic_text_file(path) as f:
        f.write(
            f"# {command_path}: the options this run used. Repeat it with:\n#   {command_path} --config {shown}\n{body}"
        )
    return path


def is_main_process() -> bool:
    """False on the other processes of ``accelerate launch`` / ``torchrun``: every process runs the command, one
    writes its config and prints its result (read from the launcher's environment: no torch import)."""
    return int(os.environ.get("RANK", "0") or "0") == 0


class OutputKind(enum.Enum):
    FILE = "file"
    FOLDER = "folder"


#: Parameters that name where a command writes; a folder unless :data:`FILE_OUTPUTS` says file.
OUTPUT_OPTIONS = ("out", "out_dir", "save_to", "report", "save_estimator", "plot")
#: (command path without "mmlens ", parameter) -> the output is one file.
FILE_OUTPUTS = {
    ("models generate", "out"),
    ("models embed", "out"),
    ("steer build", "out"),
    ("steer apply", "out"),
    ("shift emi", "save_estimator"),
    ("bench influence-scale", "plot"),
}
#: What a rerun of an interrupted command reuses (commands not listed keep only complete results).
RESUME_NOTES = {
    "influence detect": "the fit in OUT/fit (once finished) is reused",
    "influence value": "the fit in OUT/fit (once finished) is reused",
    "influence trace": "the fit in OUT/fit (once finished) is reused",
    "influence remove": "the fit in OUT/fit (once finished) is reused",
    "audit": "every finished stage in OUT is reused",
    "demo": "the built zoo models and every finished audit stage are reused",
    "zoo build": "every zoo model already built or shipped is reused",
    "bench align": "every finished (arm, seed, setting) run in OUT.runs/ is reused",
}


def output_kind(command_path: str, name: str) -> OutputKind:
    path = command_path.removeprefix("mmlens ").strip()
    if (path, name) in FILE_OUTPUTS or (path.startswith("bench ") and name == "out"):
        return OutputKind.FILE
    return OutputKind.FOLDER


def check_output(path: Path, kind: OutputKind, option: str) -> None:
    """Refuse, before any work, an output location that cannot be written: it exists as the other kind (a file
    where a folder goes, or the reverse), a parent is a file, or the folder it goes in is not writable."""
    if path.exists():
        if kind is OutputKind.FOLDER and not path.is_dir():
            raise InputError(f"{option} {path} is a file, not a folder; choose a folder path (it is created)")
        if kind is OutputKind.FILE and path.is_dir():
            raise InputError(f"{option} {path} is a folder; give a file path")
    folder = path if kind is OutputKind.FOLDER and path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: the folder {folder} is not writable")


def _check_outputs(ctx: Any) -> None:
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in OUTPUT_OPTIONS and value is not None:
            option = next((o for o in getattr(param, "opts", ()) if o.startswith("--")), param.name)
            check_output(Path(value), output_kind(ctx.command_path, param.name), option)


def _interrupted(ctx: Any) -> str:
    """The line printed on Ctrl-C: what is on disk and how to resume."""
    path = ctx.command_path.removeprefix("mmlens ").strip()
    out = next((ctx.params.get(n) for n in OUTPUT_OPTIONS if ctx.params.get(n) is not None), None)
    kept = "nothing partial was written (results are written atomically)"
    if out is not None and Path(out).exists():
        kept = f"{out} holds only complete results (written atomically)"
    note = RESUME_NOTES.get(path)
    resume = f"rerun the same command to resume ({note})" if note else "rerun the same command to start again"
    return f"mmlens: interrupted: {kept}; {resume}"


def _run_command(callback: Callable[..., Any]) -> Callable[..., Any]:
    """A leaf command: outputs checked before any work, the resolved config written after success, one line on
    Ctrl-C, and a file-system refusal (permission, read-only, disk full) as a one-line error."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        from typer._click.globals import get_current_context  # typer vendors click
        from typer.exceptions import Exit

        ctx = get_current_context()
        _check_outputs(ctx)
        try:
            result = callback(*args, **kwargs)
        except KeyboardInterrupt:
            print(f"\n{_interrupted(ctx)}", file=sys.stderr)
            raise Exit(130) from None
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
            raise InputError(f"cannot write {err.filename or 'the output'}: {err.strerror or err}") from None
        except OSError as err:
            if err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise InputError(f"cannot write {err.filename or 'the output'}: {err.strerror}") from None
            raise
        if is_main_process():
            ordered = {p.name: ctx.params[p.name] for p in ctx.command.params if p.name in ctx.params}
            write_resolved_config(ctx.command_path, ordered)
        return result

    return run


def _leaf_commands(command: Any) -> list[Any]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [command]
    return [leaf for sub in subcommands.values() for leaf in _leaf_commands(sub)]


def _takes_floats(param: Any) -> bool:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    return annotation is float or float in typing.get_args(annotation)


def _finite(param: Any) -> None:
    """Make a float option refuse ``nan`` and ``inf`` (they pass range checks silently and poison results),
    checked on the raw text before typer's conversion and range check (whose message would be misleading)."""
    if not _takes_floats(param):
        return
    convert = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        from typer._click.exceptions import BadParameter

        for v in value if isinstance(value, (list, tuple)) else (value,):
            try:
                number = float(v) if isinstance(v, (str, float, int)) and not isinstance(v, bool) else None
            except ValueError:
                continue  # not a number at all: typer's own message says so
            if number is not None and not math.isfinite(number):
                raise BadParameter(f"{v} is not a finite number", ctx=ctx, param=param)
        return convert(ctx, value)

    param.process_value = process_value


def add_config_support(root: Any) -> Any:
    """Give every leaf command of the click command tree ``root`` (built by ``typer.main.get_command``) a
    ``--config FILE`` and a ``--verbose`` option, finite float options, its output checked before the run, the
    resolved config written after a successful run, and one line on Ctrl-C. Returns ``root``."""
    config, verbose = _config_option_prototype(), _verbose_option_prototype()
    for command in _leaf_commands(root):
        if any(p.name == CONFIG_OPTION for p in command.params):
            continue
        for param in command.params:
            _finite(param)
        command.params.append(copy.copy(config))
        command.params.append(copy.copy(verbose))
        if command.callback is not None:
            command.callback = _run_command(command.callback)
    return root


__all__ = [
    "ConfigFormat",
    "OutputKind",
    "check_output",
    "output_kind",
    "FILE_CONFIG_SUFFIX",
    "FOLDER_CONFIG_NAME",
    "add_config_support",
    "command_defaults",
    "read_config_file",
    "resolved_config_path",
    "stored_path",
    "write_resolved_config",
]
