"""Command-line options made from the fields of a config dataclass: one source of truth for names, types, defaults
and help (the way TRL's ``HfArgumentParser`` builds its command line from ``DPOConfig``; typer has no dataclass
support and ``HfArgumentParser`` is argparse, so this is a small adapter onto typer's own parameter declarations).

>>> @app.command("dpo")
... @config_options(settings=FieldOptions(DPOSettings, aliases={"learning_rate": ("--lr",)}))
... def dpo_command(model: ..., settings: DPOSettings) -> None: ...

Every field becomes ``--<prefix><field-name>`` (plus its aliases) with the field's type and default; the command
receives the constructed dataclass, so the dataclass's ``__post_init__`` validates the values before any work and
the Python API refuses exactly what the command line refuses. A field added to the dataclass appears on the command
line without a change here. Help text comes from ``field(metadata={"help": ...})``, else from ``FieldOptions.help``,
else from the field's trailing ``# comment`` in the class source.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

#: Scalar types a field may have (optionally ``| None``); tuples of int/float/str become comma-separated values.
_SCALARS = (bool, int, float, str, Path)


@dataclasses.dataclass(frozen=True)
class Converter:
    """A field whose type has no option of its own: given as text, ``parse`` makes the field's value and ``show``
    writes the default (e.g. the audit's shift grid as ``fog:3,fog:5``)."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str]


@dataclasses.dataclass(frozen=True)
class FieldOptions:
    """How the fields of one config dataclass become options of a command."""

    cls: type
    prefix: str = ""  # option names are --<prefix><field-name>, parameter names <prefix_><field_name>
    exclude: tuple[str, ...] = ()  # fields the command sets itself (not options)
    aliases: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # field -> extra option names
    help: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> help (when not in the metadata)
    converters: Mapping[str, Converter] = dataclasses.field(default_factory=dict)
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # command-specific defaults over the class's
    panel: str | None = None  # help section (typer's rich_help_panel)

    def param_name(self, field_name: str) -> str:
        return (self.prefix.replace("-", "_") + field_name) if self.prefix else field_name


def _comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` of the class source: the help of fields without metadata."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE):
        out.setdefault(match.group(1), match.group(2).strip())
    return out


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _tuple_item(annotation: Any) -> type | None:
    """``int``/``float``/``str`` of a ``tuple[T, ...]`` (or ``tuple[T, T, T]``) annotation, else None."""
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0]
        if args and len(set(args)) == 1 and args[0] in (int, float, str):  # fixed length: the dataclass checks it
            return args[0]
    return None


def _comma_converter(item: type, name: str) -> Converter:
    def parse(text: str) -> tuple[Any, ...]:
        from mmlens.errors import InputError

        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            return tuple(item(p) for p in parts)
        except ValueError:
            raise InputError(f"--{name} must be comma-separated {item.__name__} values, got {text!r}") from None

    return Converter(parse=parse, show=lambda value: ",".join(str(v) for v in value))


@dataclasses.dataclass(frozen=True)
class _Generated:
    path: tuple[str, ...]  # field names from the outer dataclass down to this field
    param: inspect.Parameter
    convert: Callable[[Any], Any] | None


def _field_default(spec: FieldOptions, key: str, f: dataclasses.Field) -> Any:
    if key in spec.defaults:
        return spec.defaults[key]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def field_parameters(spec: FieldOptions, cls: type | None = None, path: tuple[str, ...] = ()) -> list[_Generated]:
    """The command parameters of the fields of ``spec.cls``; a field that is itself a dataclass (the stages of an
    audit) gives its own fields as ``--<field>-<name>``. Keys of ``exclude``, ``aliases``, ``help``, ``converters``
    and ``defaults`` are field names, dotted for nested fields (``influence.val_fraction``). TypeError for a field
    type without an option form: give it a :class:`Converter` or exclude it."""
    cls = cls or spec.cls
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = ".".join((*path, f.name))
        if key in spec.exclude or not f.init:
            continue
        annotation, optional = _split_optional(hints[f.name])
        if (
            isinstance(annotation, type)
            and dataclasses.is_dataclass(annotation)
            and not optional
            and key not in spec.converters
        ):
            out.extend(field_parameters(spec, annotation, (*path, f.name)))
            continue
        dashed = "-".join(p.replace("_", "-") for p in (*path, f.name))
        names = [f"--{spec.prefix}{dashed}", *spec.aliases.get(key, ())]
        help_text = f.metadata.get("help") or spec.help.get(key) or comments.get(f.name)
        default = _field_default(spec, key, f)
        convert = None
        converter = spec.converters.get(key)
        item = _tuple_item(annotation)
        if converter is None and item is not None:
            converter = _comma_converter(item, names[0].lstrip("-"))
        if converter is not None:
            option_type: Any = str | None if optional else str
            default = converter.show(default) if default not in (None, inspect.Parameter.empty) else default
            convert = converter.parse
        elif annotation in _SCALARS or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
            option_type = annotation | None if optional else annotation
        else:
            raise TypeError(
                f"{cls.__name__}.{f.name}: no command-line form for {hints[f.name]!r}; give a "
                "Converter or exclude the field"
            )
        if annotation is bool:  # a switch both ways: --flag/--no-flag
            names = [f"{names[0]}/--no-{names[0][2:]}", *names[1:]]
        info = typer.Option(*names, help=help_text, rich_help_panel=spec.panel, show_default=True)
        name = spec.param_name(dashed.replace("-", "_"))
        param = inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[option_type, info], default=default
        )
        out.append(_Generated((*path, f.name), param, convert))
    return out


def _build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with the nested dicts of dataclass fields built first."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if isinstance(value, dict):
            values[name] = _build(hints[name], value)
    return cls(**values)


def config_options(**groups: FieldOptions) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command: its parameter ``NAME`` (for each ``NAME=FieldOptions(...)``) is replaced by one
    option per field of the dataclass, and the command receives ``NAME=cls(**values)``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        missing = set(groups) - set(signature.parameters)
        if missing:
            raise TypeError(f"{func.__name__} has no parameter {sorted(missing)}")
        generated = {name: field_parameters(spec) for name, spec in groups.items()}
        own = {p.name for p in signature.parameters.values() if p.name not in groups}
        params = []  # each group's options where its parameter stands (the help lists them in that order)
        for p in signature.parameters.values():
            if p.name not in groups:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            for item in generated[p.name]:
                if item.param.name in own or item.param.name in {q.name for q in params}:
                    raise TypeError(f"{func.__name__}: option {item.param.name!r} of {p.name} is defined twice")
                params.append(item.param)

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            for name, spec in groups.items():
                values: dict[str, Any] = {}
                for item in generated[name]:
                    value = kwargs.pop(item.param.name)
                    if item.convert is not None and value is not None:
                        value = item.convert(value)
                    level = values
                    for part in item.path[:-1]:
                        level = level.setdefault(part, {})
                    level[item.path[-1]] = value
                kwargs[name] = _build(spec.cls, values)
            return func(**kwargs)

        del command.__wrapped__  # typer reads the signature below, not the decorated function's
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


__all__ = ["Converter", "FieldOptions", "config_options", "field_parameters"]
