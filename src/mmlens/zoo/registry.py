"""The zoo's registry: names, where built models live, building, listing, re-evaluating."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mmlens.errors import InputError, ModelLoadError
from mmlens.io import atomic_folder
from mmlens.zoo.common import METRICS_FILE, mmlens_home, read_record, zoo_dir
from mmlens.zoo.shipping import shipped_dir, shipped_models, verify_shipped

#: Names of the zoo models, in dependency order.
ZOO_MODELS: tuple[str, ...] = (
    "digits-clip",
    "mini-clip",
    "mini-clip-noisy-random",
    "mini-clip-noisy-confusable",
    "mini-llava",
    "mini-llava-colour",
    "mini-llava-swap",
    "mini-llava-prior",
)

#: Zoo models built only when named (``mmlens zoo build mini-llava-prior``): not part of a build of the whole zoo,
#: ``mmlens bench zoo`` or the demo. ``mini-llava-prior`` is the language-prior recipe (run H1 of docs/zoo.md),
#: measured on one seed only.
OPT_IN_MODELS: tuple[str, ...] = ("mini-llava-prior",)

#: name -> names it needs to be built first.
DEPENDENCIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "digits-clip": (),
        "mini-clip": (),
        "mini-clip-noisy-random": ("mini-clip",),  # its clean test accuracy is the comparison of the noise diagnostic
        "mini-clip-noisy-confusable": ("mini-clip",),
        "mini-llava": ("mini-clip",),
        "mini-llava-colour": ("mini-llava",),
        "mini-llava-swap": ("mini-llava",),
        "mini-llava-prior": ("mini-clip",),
    }
)

__all__ = [
    "ZOO_MODELS",
    "OPT_IN_MODELS",
    "DEPENDENCIES",
    "mmlens_home",
    "zoo_dir",
    "model_dir",
    "resolve_model",
    "world_of",
    "is_built",
    "is_shipped",
    "is_available",
    "source_of",
    "ZooEntry",
    "zoo_status",
    "build",
    "list_zoo",
    "evaluate",
    "default_configs",
    "smoke_configs",
]


def _check(name: str) -> str:
    if name not in ZOO_MODELS:
        raise ModelLoadError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO_MODELS)}")
    return name


def model_dir(name: str) -> Path:
    """Where zoo model ``name`` is built locally, ``$MMLENS_HOME/zoo/NAME`` (whether built or not). What a model
    spec loads is :func:`resolve_model` (a local build, else the shipped copy)."""
    return zoo_dir() / _check(name)


def is_shipped(name: str) -> bool:
    """True if ``name`` is listed in the shipped zoo's manifest (its files are verified when it is resolved)."""
    return name in shipped_models()  # an unknown name is refused by is_built / model_dir


def is_available(name: str) -> bool:
    """True if ``name`` is built locally or shipped."""
    return is_built(name) or is_shipped(name)


def source_of(name: str) -> str | None:
    """Where :func:`resolve_model` finds ``name``: ``"local"`` (built in ``$MMLENS_HOME/zoo``, which overrides a
    shipped copy), ``"shipped"`` (with the package), or ``None`` (neither)."""
    if is_built(name):
        return "local"
    return "shipped" if is_shipped(name) else None


def resolve_model(name: str) -> Path:
    """The directory zoo model ``name`` is loaded from: what ``load_model("zoo:NAME")`` loads (registered as the
    ``zoo`` model source in the package's entry points). Lookup order: a local build in ``$MMLENS_HOME/zoo``, then
    the model shipped with the package, whose files are first checked against the shipped manifest (a corrupt
    file is a one-line :class:`ModelLoadError`)."""
    source = source_of(name)
    if source == "local":
        return model_dir(name)
    if source == "shipped":
        return verify_shipped(name)
    raise ModelLoadError(f"zoo model {name} is not built: run `mmlens zoo build {name}`")


def world_of(model: str | os.PathLike[str]):
    """The :class:`mmlens.world.World` a model was trained on: a ``zoo:NAME`` spec or a model folder with the
    zoo's ``metrics.json`` (its recorded world config and world seed). An :class:`InputError` for a model that was
    not trained on the world."""
    from mmlens.models.loading import resolve_spec
    from mmlens.world import World, WorldConfig
    from mmlens.zoo.common import read_record

    record = read_record(Path(resolve_spec(model)))
    if not record.get("world_config"):
        raise InputError(f"{model} was not trained on the miniature world (no world_config in its metrics.json)")
    return World(WorldConfig.from_dict(record["world_config"]), seed=int(record["config"].get("world_seed", 0)))


def is_built(name: str) -> bool:
    """True if ``name`` is built locally: a complete ``$MMLENS_HOME/zoo/NAME`` (weights, config and metrics.json)."""
    d = model_dir(name)
    return (d / METRICS_FILE).is_file() and (d / "config.json").is_file()


def default_configs() -> dict[str, Any]:
    """The measured full-budget recipe of every model (one config dataclass per model)."""
    from mmlens.zoo.colour import ColourFinetuneConfig
    from mmlens.zoo.concept_swap import ConceptSwapConfig
    from mmlens.zoo.digits_clip import DigitsClipConfig
    from mmlens.zoo.mini_clip import MiniClipConfig
    from mmlens.zoo.mini_llava import PRIOR_RECIPE, MiniLlavaConfig

    return {
        "digits-clip": DigitsClipConfig(),
        "mini-clip": MiniClipConfig(),
        "mini-clip-noisy-random": MiniClipConfig(noise_kind="random", noise_rate=0.2),
        "mini-clip-noisy-confusable": MiniClipConfig(noise_kind="confusable", noise_rate=0.2),
        "mini-llava": MiniLlavaConfig(),
        "mini-llava-colour": ColourFinetuneConfig(),
        "mini-llava-swap": ConceptSwapConfig(),
        "mini-llava-prior": PRIOR_RECIPE,
    }


def smoke_configs() -> dict[str, Any]:
    """A tiny budget that runs every build step of every model in seconds (tests, smoke runs); not for use."""
    from mmlens.zoo.colour import ColourFinetuneConfig
    from mmlens.zoo.concept_swap import ConceptSwapConfig
    from mmlens.zoo.digits_clip import DigitsClipConfig
    from mmlens.zoo.mini_clip import MiniClipConfig
    from mmlens.zoo.mini_llava import PRIOR_FAINT_WORLD, MiniLlavaConfig

    clip = MiniClipConfig(
        n_train_scenes=48,
        steps=3,
        batch_size=16,
        vision_hidden=32,
        text_hidden=32,
        projection_dim=32,
        vision_layers=1,
        text_layers=1,
        n_eval_scenes=10,
        n_eval_scenes_large=0,
        warmup=1,
    )
    llava = MiniLlavaConfig(
        n_train_scenes=24,
        vqa_draws=1,
        steps=3,
        batch_size=8,
        text_hidden=32,
        text_layers=1,
        n_eval_scenes=4,
        n_pope_scenes=4,
        warmup=1,
        focus_steps=2,
        focus_batch_size=8,
        focus_warmup=1,
    )
    return {
        "digits-clip": DigitsClipConfig(steps=3, n_train=64, batch_size=32, caption_draws=2, hidden=32, warmup=1),
        "mini-clip": clip,
        "mini-clip-noisy-random": replace(clip, noise_kind="random", noise_rate=0.25),
        "mini-clip-noisy-confusable": replace(clip, noise_kind="confusable", noise_rate=0.25),
        "mini-llava": llava,
        "mini-llava-colour": ColourFinetuneConfig(
            n_train_scenes=8, steps=2, checkpoint_every=1, batch_size=4, n_eval_scenes=3, warmup=1
        ),
        "mini-llava-swap": ConceptSwapConfig(
            n_train_scenes=8, vqa_draws=1, steps=2, batch_size=4, n_eval_scenes=3, warmup=1
        ),
        "mini-llava-prior": replace(
            llava,
            world=PRIOR_FAINT_WORLD,
            text_steps=2,
            text_n_scenes=40,
            text_batch_size=8,
            text_warmup=1,
            align_steps=2,
            sft_caption_leak=0.3,
            hidden_steps=2,
            hidden_n_scenes=24,
            hidden_warmup=1,
            n_prior_scenes=6,
        ),
    }


def _resolve(names: Iterable[str]) -> list[str]:
    wanted: set[str] = set()

    def add(n: str) -> None:
        _check(n)
        if n not in wanted:
            wanted.add(n)
            for d in DEPENDENCIES[n]:
                add(d)

    for n in names:
        add(n)
    return [n for n in ZOO_MODELS if n in wanted]


#: zoo model -> the module of its recipe (``build``, ``evaluate_dir``), imported on first use.
_RECIPES: Mapping[str, str] = MappingProxyType(
    {
        "digits-clip": "digits_clip",
        "mini-clip": "mini_clip",
        "mini-clip-noisy-random": "mini_clip",
        "mini-clip-noisy-confusable": "mini_clip",
        "mini-llava": "mini_llava",
        "mini-llava-colour": "colour",
        "mini-llava-swap": "concept_swap",
        "mini-llava-prior": "mini_llava",
    }
)


def _builder(name: str) -> Any:
    return importlib.import_module(f"mmlens.zoo.{_RECIPES[name]}")


def build(
    names: Iterable[str] | str | None = None,
    *,
    force: bool = False,
    configs: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_trained: Any = None,
) -> dict[str, dict]:
    """Build the models among ``names`` (default: all but :data:`OPT_IN_MODELS`, which are built only when named)
    and their dependencies that are neither built locally nor shipped, in dependency order, into
    ``$MMLENS_HOME/zoo``.

    ``force=True`` rebuilds the requested models locally even if built or shipped (a local build overrides the
    shipped copy); their dependencies are built only if unavailable (so a whole-zoo ``force`` rebuilds everything).
    ``configs`` maps a name to its config dataclass (e.g. a tiny budget for tests); missing names use
    :func:`default_configs`. ``on_trained(name, model, processor)`` is called with each freshly trained model just
    before it is saved. Returns ``{name: metrics record}`` (the content of each model's ``metrics.json``, local or
    shipped) for every model in the resolved list.
    """
    from mmlens.progress import progress_bar

    if isinstance(names, str):
        names = [names]
    requested = [n for n in ZOO_MODELS if n not in OPT_IN_MODELS] if names is None else [_check(n) for n in names]
    order = _resolve(requested)
    cfgs = dict(default_configs())
    if configs:
        for k, v in configs.items():
            cfgs[_check(k)] = v
    out: dict[str, dict] = {}
    bar = progress_bar(order, desc="zoo build", enabled=progress, leave=True)
    for name in bar:
        bar.set_postfix_str(name)
        if is_available(name) and not (force and name in requested):
            out[name] = read_record(resolve_model(name))
            continue
        mod = _builder(name)
        deps = {d: resolve_model(d) for d in DEPENDENCIES[name]}
        with (
            atomic_folder(model_dir(name)) as tmp,
            progress_bar(desc=f"  {name}", unit="step", enabled=progress) as steps,
        ):
            kw: dict[str, Any] = {"deps": deps} if deps else {}
            if on_trained is not None:
                kw["on_trained"] = lambda m, p, _n=name: on_trained(_n, m, p)

            def on_step(step: int, loss: float, _bar=steps) -> None:  # every training step of every phase
                _bar.update(1)
                _bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)

            kw["progress"] = on_step
            out[name] = mod.build(tmp, cfgs[name], **kw)
    return out


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model as the lookup sees it."""

    name: str
    source: str | None  # "local", "shipped" or None (see source_of)
    built_locally: bool
    shipped: bool
    opt_in: bool
    path: Path | None  # the folder it loads from (not verified here)
    record: dict | None  # its metrics.json, or None
    problem: str | None = None  # why the record could not be read (one line)

    @property
    def overrides_shipped(self) -> bool:
        """A local build that hides a shipped copy."""
        return self.built_locally and self.shipped


def zoo_status(verify: bool = False) -> list[ZooEntry]:
    """Every zoo model in dependency order: where it loads from, its record; ``verify=True`` also checks each
    shipped model that would be loaded against the manifest (its ``problem`` says what is wrong)."""
    rows = []
    shipped = shipped_models()
    folder = shipped_dir()
    for name in ZOO_MODELS:
        local, ship = is_built(name), name in shipped
        source = "local" if local else ("shipped" if ship else None)
        path = model_dir(name) if local else (folder / name if ship and folder is not None else None)
        record, problem = None, None
        try:
            if source == "shipped" and verify:
                verify_shipped(name)
            if path is not None:
                record = read_record(path)
        except ModelLoadError as e:
            problem = str(e)
        rows.append(ZooEntry(name, source, local, ship, name in OPT_IN_MODELS, path, record, problem))
    return rows


def list_zoo() -> list[tuple[str, bool, dict | None]]:
    """``[(name, available, metrics record or None)]`` for every zoo model, in dependency order; available = built
    locally or shipped, and the record is the one :func:`resolve_model` would load (see :func:`zoo_status`)."""
    return [(e.name, e.source is not None, e.record) for e in zoo_status()]


def evaluate(name: str) -> dict:
    """Re-evaluate built model ``name`` from disk with the evaluation of its recipe; returns its metrics."""
    return _builder(_check(name)).evaluate_dir(resolve_model(name))
