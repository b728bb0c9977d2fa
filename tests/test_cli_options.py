"""Options made from config dataclasses (mmlens.cli.options): one source of truth for names, defaults, help and
validation; a field added to a config is an option without a change to the CLI."""

from __future__ import annotations

import dataclasses
import enum
import inspect
from pathlib import Path

import pytest
import typer

from cli_helpers import run_cli
from mmlens.cli.options import FieldOptions, config_options
from mmlens.errors import InputError, check_finite


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 3  # how big
    alphas: tuple[float, ...] = (0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    rate: float = dataclasses.field(default=0.25, metadata={"help": "a share"})
    colour: Colour = Colour.RED
    where: Path | None = None
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)

    def __post_init__(self) -> None:
        check_finite(self)
        if not 0 < self.rate < 1:
            raise InputError(f"rate must be in (0, 1), got {self.rate}")


def _run(argv):
    from typer.main import get_command

    seen = {}
    app = typer.Typer()

    @app.command()
    @config_options(config=FieldOptions(Outer, aliases={"rate": ("--r",)}))
    def cmd(config: Outer, extra: int = 1) -> None:
        seen["config"], seen["extra"] = config, extra

    command = get_command(app)
    try:
        command.main(args=argv, standalone_mode=False)
    except InputError as err:
        return err
    return seen


def test_every_field_is_an_option_with_its_type_default_and_help():
    from typer.main import get_command

    app = typer.Typer()

    @app.command()
    @config_options(config=FieldOptions(Outer))
    def cmd(config: Outer) -> None:
        pass

    opts = {o for p in get_command(app).params for o in p.opts}
    assert {"--name", "--rate", "--colour", "--where", "--flag", "--inner-size", "--inner-alphas"} <= opts
    assert _run(["--name", "x"])["config"] == Outer("x")
    got = _run(
        [
            "--name",
            "x",
            "--r",
            "0.5",
            "--colour",
            "blue",
            "--where",
            "a/b",
            "--flag",
            "--inner-size",
            "7",
            "--inner-alphas",
            "1,2,4",
            "--extra",
            "3",
        ]
    )
    assert got["config"] == Outer("x", 0.5, Colour.BLUE, Path("a/b"), True, Inner(7, (1.0, 2.0, 4.0)))
    assert got["extra"] == 3


def test_the_dataclass_validates_what_the_command_line_gives():
    assert "rate must be in (0, 1)" in str(_run(["--name", "x", "--rate", "1.5"]))
    assert "finite" in str(_run(["--name", "x", "--rate", "nan"]))


def test_a_field_added_to_a_config_is_an_option_without_a_change_to_the_cli():
    """The audit's options follow its stage configs: every field of every stage is an option."""
    from mmlens.audit.config import AuditConfig
    from mmlens.cli.audit import AUDIT_OPTIONS
    from mmlens.cli.options import field_parameters

    paths = {".".join(g.path) for g in field_parameters(AUDIT_OPTIONS)}
    expected = set()
    for f in dataclasses.fields(AuditConfig):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            expected |= {f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)}
        else:
            expected.add(f.name)
    assert paths == expected

    extended = dataclasses.make_dataclass("Extended", [("max_widgets", int, 5)], bases=(Inner,), frozen=True)
    names = {g.param.name for g in field_parameters(FieldOptions(extended))}
    assert names == {"size", "alphas", "max_widgets"}


def test_audit_and_dpo_refuse_what_their_configs_refuse(capsys):
    for argv, words in (
        (["audit", "-m", "zoo:x", "--data", "world", "--out", "o", "--influence-val-fraction", "0"], "val_fraction"),
        (["align", "dpo", "-m", "zoo:x", "--out", "o", "--beta", "0"], "beta"),
        (["align", "bdhs", "-m", "zoo:x", "--out", "o", "--rho", "2"], "rho"),
    ):
        assert run_cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mmlens: error:") and words in err and len(err.splitlines()) == 1, err


def test_check_finite_names_the_field():
    with pytest.raises(InputError, match="rate must be a finite number"):
        Outer("x", rate=float("inf"))


@pytest.mark.parametrize(
    ("words", "specs"),
    [
        ("world export", "mmlens.cli.world:WORLD_OPTIONS"),
        ("influence detect", "mmlens.cli.influence:FIT_GROUPS"),
        ("influence value", "mmlens.cli.influence:FIT_GROUPS"),
        ("influence trace", "mmlens.cli.influence:FIT_GROUPS"),
        ("influence remove", "mmlens.cli.influence:FIT_GROUPS"),
        ("steer build", "mmlens.cli.steer:BUILD_GENERATION"),
        ("steer apply", "mmlens.cli.steer:APPLY_GENERATION"),
        ("steer eval", "mmlens.cli.steer:EVAL_GENERATION"),
        ("shift generate", "mmlens.cli.shift:GENERATE_OPTIONS"),
        ("shift emi", "mmlens.cli.shift:SHIFT_OPTIONS"),
    ],
)
def test_world_steer_shift_and_influence_options_come_from_their_configs(words, specs):
    """Every field of the command's config dataclasses is one of its options, with the field's default."""
    import importlib

    from mmlens.cli import load_subcommand
    from mmlens.cli.options import field_parameters

    module, name = specs.split(":")
    found = getattr(importlib.import_module(module), name)
    groups = list(found.values()) if isinstance(found, dict) else [found]
    group, leaf = words.split()
    params = {p.name: p for p in load_subcommand(group).commands[leaf].params}
    for spec in groups:
        for generated in field_parameters(spec):
            assert generated.param.name in params, (words, generated.param.name)
            default = generated.param.default
            option = params[generated.param.name]
            if default is inspect.Parameter.empty:  # a field without default: a required option
                assert option.required, (words, generated.param.name)
            elif not isinstance(default, (tuple, enum.Enum)) and generated.convert is None:
                assert option.default == default, (words, generated.param.name)


def test_the_apis_refuse_what_the_command_lines_refuse():
    """The settings dataclasses behind the options validate the Python API the same way."""
    from mmlens.shift.settings import EstimatorConfig, GenerateConfig, ShiftConfig
    from mmlens.steer.settings import EvalSettings, GenerationSettings, SteerConfig
    from mmlens.world.core import WorldConfig

    for make, words in (
        (lambda: EvalSettings(alphas=(1.0, float("nan"))), "finite"),
        (lambda: EvalSettings(alphas=()), "empty"),
        (lambda: EvalSettings(max_drop=2.0), "max_drop"),
        (lambda: GenerationSettings(batch_size=0), "batch_size"),
        (lambda: SteerConfig(alpha=float("inf")), "finite"),
        (lambda: GenerateConfig(max_new_tokens=0, scenarios=()), "max_new_tokens"),
        (lambda: ShiftConfig(h_hat=float("nan")), "finite"),
        (lambda: EstimatorConfig(lr=float("inf")), "finite"),
        (lambda: WorldConfig(grid_size=5), "grid_size"),
    ):
        with pytest.raises(InputError, match=words):
            make()
