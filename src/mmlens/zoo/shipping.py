"""The shipped zoo: built models that come with the package, so that a first ``mmlens demo`` does not train.

Where: ``mmlens/zoo/shipped/`` inside the installed package (package data, listed in pyproject.toml), or the folder
named by ``MMLENS_SHIPPED_ZOO`` (``none``: no shipped zoo; the tests and ``mmlens bench zoo``'s rebuild use it).
Layout: ``manifest.json`` and one folder per model, the model's folder as built minus :data:`SHIP_EXCLUDE`
(mini-llava-colour's ``checkpoints/``, which only the concepts benchmark reads).

Lookup (``zoo.resolve_model``): a model built locally in ``$MMLENS_HOME/zoo`` first, then the shipped one, so
``mmlens zoo build --force NAME`` overrides a shipped model without touching the package.

Integrity: the manifest holds every shipped file's size and sha256; a shipped model is checked against it each time
it is resolved (a few MB of hashing, milliseconds), and a mismatch is a one-line :class:`ModelLoadError`.

The shipped folder is written by :func:`ship` (``mmlens zoo ship``) only: it copies built models from a zoo home
after checking their records (each was built with the recipe it is shipped as, and after its dependencies), and
replaces the whole shipped folder at once, so what ships is always one consistent set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mmlens.errors import InputError, ModelLoadError

#: Environment variable naming the shipped zoo's folder instead of the package's (``none``: no shipped zoo).
SHIPPED_ENV = "MMLENS_SHIPPED_ZOO"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
#: Top-level entries of a model folder that are not shipped (what reads them needs a local build).
SHIP_EXCLUDE: Mapping[str, tuple[str, ...]] = MappingProxyType({"mini-llava-colour": ("checkpoints",)})
#: Recipe sets a ship can be checked against: the full-budget recipes, or the tiny smoke budget (tests only).
RECIPE_SETS = ("default", "smoke")

__all__ = [
    "SHIPPED_ENV",
    "MANIFEST_FILE",
    "SHIP_EXCLUDE",
    "RECIPE_SETS",
    "shipped_dir",
    "read_manifest",
    "shipped_models",
    "verify_shipped",
    "ship",
]


def shipped_dir() -> Path | None:
    """The shipped zoo's folder: ``$MMLENS_SHIPPED_ZOO`` if set (``none`` for no shipped zoo), else the package's
    ``mmlens/zoo/shipped``. The folder may not exist (nothing shipped)."""
    env = os.environ.get(SHIPPED_ENV, "").strip()
    if env.lower() == "none":
        return None
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "shipped"


def _fix_hint() -> str:
    return (
        "reinstall mmlens, or build the model locally with `mmlens zoo build --force NAME` "
        "(a local build overrides the shipped one)"
    )


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped zoo in ``folder`` (default :func:`shipped_dir`); ``{}`` when nothing is shipped
    there. A manifest that cannot be read is a one-line :class:`ModelLoadError`."""
    folder = shipped_dir() if folder is None else Path(folder)
    if folder is None:
        return {}
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"the shipped zoo's manifest {path} is corrupt ({e}); {_fix_hint()}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), dict):
        raise ModelLoadError(
            f"the shipped zoo's manifest {path} is not a format-{MANIFEST_FORMAT} manifest; {_fix_hint()}"
        )
    return data


def shipped_models(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{name: manifest entry}`` of the shipped models (``{}`` when nothing is shipped)."""
    return dict(read_manifest(folder).get("models", {}))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_shipped(name: str, folder: Path | None = None) -> Path:
    """The folder of shipped model ``name`` after checking each of its files against the manifest (size, then
    sha256); a missing or altered file is a one-line :class:`ModelLoadError`."""
    folder = shipped_dir() if folder is None else Path(folder)
    entry = shipped_models(folder).get(name) if folder is not None else None
    if folder is None or entry is None:
        raise ModelLoadError(f"zoo model {name} is not shipped with this installation of mmlens")
    model = folder / name
    files = entry.get("files") or {}
    if "metrics.json" not in files or "config.json" not in files:
        raise ModelLoadError(f"shipped zoo model {name}: the manifest lists no metrics.json/config.json; {_fix_hint()}")
    for rel, want in sorted(files.items()):
        path = model / rel
        if not path.is_file():
            raise ModelLoadError(f"shipped zoo model {name} is corrupt: {rel} is missing; {_fix_hint()}")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise ModelLoadError(
                f"shipped zoo model {name} is corrupt: {rel} has {size} bytes, the manifest says {want['bytes']}; "
                f"{_fix_hint()}"
            )
        digest = _sha256(path)
        if digest != want["sha256"]:
            raise ModelLoadError(
                f"shipped zoo model {name} is corrupt: {rel} has sha256 {digest[:12]}..., the manifest says "
                f"{want['sha256'][:12]}...; {_fix_hint()}"
            )
    return model


def _recipe_as_json(config: Any) -> Any:
    """A recipe dataclass as it appears in a metrics.json record (``asdict``, then a JSON round trip)."""
    value = dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else config
    return json.loads(json.dumps(value))


_ABSENT = object()


def _differences(recorded: Any, expected: Any, default: Any, prefix: str = "") -> list[str]:
    """Fields where a recorded recipe differs from the expected one. A field absent from the record (the record
    predates it) counts as its default, the value that keeps the older behaviour."""
    if isinstance(recorded, dict) and isinstance(expected, dict):
        out = []
        defaults = default if isinstance(default, dict) else {}
        for key in sorted(set(recorded) | set(expected)):
            out += _differences(
                recorded.get(key, _ABSENT), expected.get(key), defaults.get(key, _ABSENT), f"{prefix}{key}."
            )
        return out
    if recorded is _ABSENT:
        recorded = default
    return [] if recorded == expected else [f"{prefix.rstrip('.')} {recorded!r} (expected {expected!r})"]


def _check_record(name: str, model: Path, expected_config: Any, recipes: str) -> dict:
    from mmlens.zoo.common import read_record

    record = read_record(model)
    if record.get("model") != name:
        raise InputError(f"{model}/metrics.json is the record of {record.get('model')!r}, not {name}; rebuild it")
    defaults = _recipe_as_json(type(expected_config)())  # every recipe field has a default
    diffs = _differences(record.get("config"), _recipe_as_json(expected_config), defaults)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise InputError(
            f"{name} in {model.parent} was not built with the {recipes} recipe ({shown}); "
            f"rebuild it there with `mmlens zoo build --force {name}`"
        )
    return record


def _copy_model(src: Path, dst: Path, exclude: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Copy a model folder (minus ``exclude`` and hidden entries) with plain file modes; the copies' sizes and
    hashes, by path relative to the folder."""
    skip = set(exclude)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip or any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # contents only: the package's files get ordinary permissions
        target.chmod(0o644)
        files[rel.as_posix()] = {"bytes": target.stat().st_size, "sha256": _sha256(target)}
    return files


def ship(
    names: Iterable[str] | None = None,
    *,
    source: Path | str | None = None,
    dest: Path | str | None = None,
    recipes: str = "default",
) -> dict[str, Any]:
    """Copy built models from the zoo of ``source`` (an ``MMLENS_HOME``; default the current one) into the shipped
    folder ``dest`` (default :func:`shipped_dir`), replacing what was shipped there, and write its manifest.

    ``names`` (default: the whole zoo but the opt-in models) and their dependencies are shipped. Each must be built
    in ``source`` with the recipe of ``recipes`` (``default``: :func:`zoo.default_configs`; ``smoke``: the test
    budget) and after its dependencies; otherwise nothing is written (a one-line :class:`InputError`). Returns the
    manifest."""
    from mmlens.io import atomic_folder, write_json_atomic
    from mmlens.zoo.common import METRICS_FILE
    from mmlens.zoo.registry import DEPENDENCIES, OPT_IN_MODELS, ZOO_MODELS, _resolve, default_configs
    from mmlens.zoo.registry import smoke_configs as smoke

    if recipes not in RECIPE_SETS:
        raise InputError(f"recipes must be one of {', '.join(RECIPE_SETS)}, not {recipes!r}")
    home = Path(source).expanduser() if source is not None else None
    if home is None:
        from mmlens.zoo.common import mmlens_home

        home = mmlens_home()
    zoo_folder = home / "zoo"
    target = Path(dest).expanduser() if dest is not None else shipped_dir()
    if target is None:
        raise InputError(f"{SHIPPED_ENV}=none names no shipped folder; pass a destination")
    order = _resolve([n for n in ZOO_MODELS if n not in OPT_IN_MODELS] if names is None else list(names))
    configs = default_configs() if recipes == "default" else smoke()

    built_at: dict[str, float] = {}
    for name in order:
        model = zoo_folder / name
        if not ((model / METRICS_FILE).is_file() and (model / "config.json").is_file()):
            raise InputError(
                f"{name} is not built in {zoo_folder}: build it first (MMLENS_HOME={home} mmlens zoo build)"
            )
        _check_record(name, model, configs[name], recipes)
        built_at[name] = (model / METRICS_FILE).stat().st_mtime
        for dep in DEPENDENCIES[name]:
            if built_at[dep] > built_at[name]:
                raise InputError(
                    f"{name} in {zoo_folder} was built before its dependency {dep} was rebuilt; "
                    f"rebuild it there with `mmlens zoo build --force {name}`"
                )

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "note": "written by `mmlens zoo ship` (mmlens.zoo.ship); do not edit by hand",
        "source": str(zoo_folder),
        "recipes": recipes,
        "models": {},
    }
    with atomic_folder(target) as tmp:
        for name in order:
            exclude = SHIP_EXCLUDE.get(name, ())
            files = _copy_model(zoo_folder / name, tmp / name, exclude)
            manifest["models"][name] = {
                "files": files,
                "bytes": sum(f["bytes"] for f in files.values()),
                "excluded": list(exclude),
            }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        (tmp / MANIFEST_FILE).chmod(0o644)
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)  # mkdtemp's 0700 would hide the package's data from other users
    return manifest
