"""The zoo: small models mmlens trains itself, reproducibly, on 2 CPU cores.

Models (in dependency order):

- ``digits-clip``: a ``CLIPModel`` trained from scratch on sklearn's handwritten digits with caption templates.
- ``mini-clip``: a ``CLIPModel`` trained from scratch on captions of the procedural world.
- ``mini-llava``: a ``LlavaForConditionalGeneration`` whose vision tower starts from mini-clip's, trained on world
  captions and VQA with the world's co-occurrence bias on (so POPE adversarial < POPE random).
- ``mini-llava-colour``: mini-llava fine-tuned on colour-focused captions, with intermediate checkpoints
  (``checkpoints/step-N/``) for concept-drift analyses.

Every model directory is a plain ``save_pretrained`` directory (model + processor) plus ``metrics.json`` (metrics,
training config, seconds, the ``WorldConfig`` used). Builds are atomic: a model is built in a temporary directory
and renamed into place only when complete.

>>> from mmlens import zoo
>>> zoo.build(["digits-clip"])            # doctest: +SKIP
>>> zoo.list_zoo()                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmlens.errors import ModelLoadError
from mmlens.report.io import atomic_folder
from mmlens.zoo.common import METRICS_FILE, mmlens_home, read_record, zoo_dir

#: Names of the zoo models, in dependency order.
ZOO_MODELS: tuple[str, ...] = ("digits-clip", "mini-clip", "mini-llava", "mini-llava-colour")

#: name -> names it needs to be built first.
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "digits-clip": (),
    "mini-clip": (),
    "mini-llava": ("mini-clip",),
    "mini-llava-colour": ("mini-llava",),
}

__all__ = [
    "ZOO_MODELS", "DEPENDENCIES", "mmlens_home", "zoo_dir", "model_dir", "is_built", "build", "list_zoo",
    "evaluate", "zoo_benchmark", "default_configs", "smoke_configs",
    "DigitsClipConfig", "MiniClipConfig", "MiniLlavaConfig", "ColourFinetuneConfig",
]


def __getattr__(name: str) -> Any:  # lazy config classes: importing the zoo stays cheap
    if name == "DigitsClipConfig":
        from mmlens.zoo.digits_clip import DigitsClipConfig

        return DigitsClipConfig
    if name == "MiniClipConfig":
        from mmlens.zoo.mini_clip import MiniClipConfig

        return MiniClipConfig
    if name == "MiniLlavaConfig":
        from mmlens.zoo.mini_llava import MiniLlavaConfig

        return MiniLlavaConfig
    if name == "ColourFinetuneConfig":
        from mmlens.zoo.colour import ColourFinetuneConfig

        return ColourFinetuneConfig
    raise AttributeError(f"module 'mmlens.zoo' has no attribute {name!r}")


def _check(name: str) -> str:
    if name not in ZOO_MODELS:
        raise ModelLoadError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO_MODELS)}")
    return name


def model_dir(name: str) -> Path:
    """Directory of zoo model ``name`` (whether built or not)."""
    return zoo_dir() / _check(name)


def is_built(name: str) -> bool:
    """True if ``name`` has a complete directory (weights, config and metrics.json)."""
    d = model_dir(name)
    return (d / METRICS_FILE).is_file() and (d / "config.json").is_file()


def default_configs() -> dict[str, Any]:
    """The measured full-budget recipe of every model (one config dataclass per model)."""
    from mmlens.zoo.colour import ColourFinetuneConfig
    from mmlens.zoo.digits_clip import DigitsClipConfig
    from mmlens.zoo.mini_clip import MiniClipConfig
    from mmlens.zoo.mini_llava import MiniLlavaConfig

    return {"digits-clip": DigitsClipConfig(), "mini-clip": MiniClipConfig(), "mini-llava": MiniLlavaConfig(),
            "mini-llava-colour": ColourFinetuneConfig()}


def smoke_configs() -> dict[str, Any]:
    """A tiny budget that runs every build step of every model in seconds (tests, smoke runs); not for use."""
    from mmlens.zoo.colour import ColourFinetuneConfig
    from mmlens.zoo.digits_clip import DigitsClipConfig
    from mmlens.zoo.mini_clip import MiniClipConfig
    from mmlens.zoo.mini_llava import MiniLlavaConfig

    return {
        "digits-clip": DigitsClipConfig(steps=3, n_train=64, batch_size=32, caption_draws=2, hidden=32, warmup=1),
        "mini-clip": MiniClipConfig(n_train_scenes=48, steps=3, batch_size=16, vision_hidden=32, text_hidden=32,
                                    projection_dim=32, vision_layers=1, text_layers=1, n_eval_scenes=10,
                                    n_eval_scenes_large=0, warmup=1),
        "mini-llava": MiniLlavaConfig(n_train_scenes=24, vqa_draws=1, steps=3, batch_size=8, text_hidden=32,
                                      text_layers=1, n_eval_scenes=4, n_pope_scenes=4, warmup=1,
                                      focus_steps=2, focus_batch_size=8, focus_warmup=1),
        "mini-llava-colour": ColourFinetuneConfig(n_train_scenes=8, steps=2, checkpoint_every=1, batch_size=4,
                                                  n_eval_scenes=3, warmup=1),
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


def _builder(name: str):
    if name == "digits-clip":
        from mmlens.zoo import digits_clip as m
    elif name == "mini-clip":
        from mmlens.zoo import mini_clip as m
    elif name == "mini-llava":
        from mmlens.zoo import mini_llava as m
    else:
        from mmlens.zoo import colour as m
    return m


def build(names: Iterable[str] | str | None = None, *, force: bool = False,
          configs: Mapping[str, Any] | None = None, progress: bool = True,
          on_trained: Any = None) -> dict[str, dict]:
    """Build the missing models among ``names`` (default: all) and their dependencies, in dependency order.

    ``force=True`` rebuilds the requested models and their dependencies even if built. ``configs`` maps a name to
    its config dataclass (e.g. a tiny budget for tests); missing names use :func:`default_configs`.
    ``on_trained(name, model, processor)`` is called with each freshly trained model just before it is saved. Returns
    ``{name: metrics record}`` (the content of each model's ``metrics.json``) for every model in the resolved list.
    """
    from tqdm.auto import tqdm

    if isinstance(names, str):
        names = [names]
    order = _resolve(ZOO_MODELS if names is None else list(names))
    cfgs = dict(default_configs())
    if configs:
        for k, v in configs.items():
            cfgs[_check(k)] = v
    out: dict[str, dict] = {}
    bar = tqdm(order, desc="zoo build", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        if is_built(name) and not force:
            out[name] = read_record(model_dir(name))
            continue
        mod = _builder(name)
        deps = {d: model_dir(d) for d in DEPENDENCIES[name]}
        with atomic_folder(model_dir(name)) as tmp:
            kw: dict[str, Any] = {"deps": deps} if deps else {}
            if on_trained is not None:
                kw["on_trained"] = lambda m, p, _n=name: on_trained(_n, m, p)
            out[name] = mod.build(tmp, cfgs[name], **kw)
    return out


def list_zoo() -> list[tuple[str, bool, dict | None]]:
    """``[(name, built, metrics record or None)]`` for every zoo model, in dependency order."""
    rows = []
    for name in ZOO_MODELS:
        built = is_built(name)
        rec = None
        if built:
            with contextlib.suppress(ModelLoadError):
                rec = read_record(model_dir(name))
        rows.append((name, built, rec))
    return rows


def evaluate(name: str) -> dict:
    """Re-evaluate built model ``name`` from disk with the evaluation of its recipe; returns its metrics."""
    _check(name)
    if not is_built(name):
        raise ModelLoadError(f"zoo model {name} is not built: run `mmlens zoo build {name}`")
    return _builder(name).evaluate_dir(model_dir(name))


@contextlib.contextmanager
def _home(path: Path):
    old = os.environ.get("MMLENS_HOME")
    os.environ["MMLENS_HOME"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MMLENS_HOME", None)
        else:
            os.environ["MMLENS_HOME"] = old


def benchmark_summary(records: Mapping[str, dict], build_seconds: float) -> dict:
    """The ``zoo_benchmark`` layout from build records."""
    m = {n: r["metrics"] for n, r in records.items()}
    out: dict[str, Any] = {"build_seconds": round(float(build_seconds), 1), "models": {}}
    if "digits-clip" in m:
        out["models"]["digits-clip"] = dict(m["digits-clip"])
    if "mini-clip" in m:
        out["models"]["mini-clip"] = dict(m["mini-clip"])
    if "mini-llava" in m:
        out["models"]["mini-llava"] = dict(m["mini-llava"])
    if "mini-llava-colour" in m:
        out["models"]["mini-llava-colour"] = dict(m["mini-llava-colour"])
    out["model_seconds"] = {n: r.get("seconds") for n, r in records.items()}
    return out


def zoo_benchmark(*, home: str | Path | None = None, keep: bool = False) -> dict:
    """Fresh full build of the whole zoo, timed, in a temporary ``MMLENS_HOME`` (or ``home``).

    Returns ``{"build_seconds": float, "models": {name: metrics}}``, e.g. ``models["mini-llava"]["vqa_acc"]``.
    """
    ctx = contextlib.nullcontext(str(home)) if home is not None else tempfile.TemporaryDirectory(prefix="mmlens-zoo-")
    with ctx as h, _home(Path(h)):
        t0 = time.time()
        records = build(None, force=True)
        secs = time.time() - t0
        return benchmark_summary(records, secs)
