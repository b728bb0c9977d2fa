"""The shipped zoo (mmlens.zoo.shipping): `zoo ship` from a built zoo, the lookup order (a local build overrides the
shipped copy), the manifest checked at every load, `bench zoo`'s reproduction check, and the zoo the package ships.

Built on the session's smoke zoo, shipped into temporary folders with ``recipes="smoke"``; conftest sets
``MMLENS_SHIPPED_ZOO=none`` for every other test.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_error, run_ok
from mmlens import zoo
from mmlens.errors import InputError, ModelLoadError
from mmlens.zoo import registry
from mmlens.zoo.colour import checkpoint_dirs
from mmlens.zoo.shipping import MANIFEST_FILE, SHIPPED_ENV

SMOKE = zoo.smoke_configs()
WHOLE_ZOO = [n for n in zoo.ZOO_MODELS if n not in zoo.OPT_IN_MODELS]


@pytest.fixture(scope="module")
def shipped_once(smoke_zoo_home, tmp_path_factory):
    """The smoke zoo shipped once into a module folder (each test works on its own copy)."""
    dest = tmp_path_factory.mktemp("shipped") / "shipped"
    manifest = zoo.ship(source=smoke_zoo_home, dest=dest, recipes="smoke")
    return dest, manifest


@pytest.fixture
def shipped(shipped_once, tmp_path, monkeypatch):
    """A private copy of the shipped smoke zoo, in the lookup; MMLENS_HOME is an empty folder (conftest)."""
    src, manifest = shipped_once
    dest = tmp_path / "shipped"
    shutil.copytree(src, dest)
    monkeypatch.setenv(SHIPPED_ENV, str(dest))
    return dest


def _no_training(monkeypatch):
    def boom(name):
        raise AssertionError(f"{name} was built, but it is shipped")

    monkeypatch.setattr(registry, "_builder", boom)


def test_ship_copies_the_built_zoo_and_writes_a_manifest_of_every_file(shipped_once, smoke_zoo_home):
    dest, manifest = shipped_once
    assert list(manifest["models"]) == WHOLE_ZOO and manifest["recipes"] == "smoke"
    assert json.loads((dest / MANIFEST_FILE).read_text()) == manifest
    assert sorted(p.name for p in dest.iterdir()) == sorted([*WHOLE_ZOO, MANIFEST_FILE])  # nothing else
    for name, entry in manifest["models"].items():
        files = {p.relative_to(dest / name).as_posix() for p in (dest / name).rglob("*") if p.is_file()}
        assert files == set(entry["files"]), name
        assert {"model.safetensors", "config.json", "metrics.json"} <= files
        for rel in files:
            assert (dest / name / rel).read_bytes() == (smoke_zoo_home / "zoo" / name / rel).read_bytes()
            assert (dest / name / rel).stat().st_mode & 0o777 == 0o644
    # mini-llava-colour ships without its checkpoints (only the concepts benchmark reads them)
    assert manifest["models"]["mini-llava-colour"]["excluded"] == ["checkpoints"]
    assert not (dest / "mini-llava-colour" / "checkpoints").exists()
    assert "noise_flags.json" in manifest["models"]["mini-clip-noisy-random"]["files"]
    assert "change_list.json" in manifest["models"]["mini-llava-swap"]["files"]


def test_shipped_models_load_and_nothing_is_trained(shipped, monkeypatch):
    from mmlens.models import ContrastiveModel, VisionLanguageModel, load_model

    assert all(zoo.source_of(n) == "shipped" for n in WHOLE_ZOO)
    assert zoo.resolve_model("mini-llava") == shipped / "mini-llava"
    assert isinstance(load_model("zoo:digits-clip"), ContrastiveModel)
    assert isinstance(load_model("zoo:mini-llava"), VisionLanguageModel)
    assert zoo.world_of("zoo:mini-llava").cfg == SMOKE["mini-llava"].world
    # what `mmlens demo` and `mmlens zoo build` do first: with everything shipped, nothing is trained
    from mmlens.audit.demo import DEMO_MODELS

    _no_training(monkeypatch)
    records = zoo.build(DEMO_MODELS)
    assert records["mini-llava"] == json.loads((shipped / "mini-llava" / "metrics.json").read_text())
    zoo.build()
    assert not zoo.zoo_dir().exists() or not any(zoo.zoo_dir().iterdir())
    assert [available for _, available, _ in zoo.list_zoo()] == [n in WHOLE_ZOO for n in zoo.ZOO_MODELS]
    with pytest.raises(ModelLoadError, match="mmlens zoo build mini-llava-prior"):
        zoo.resolve_model("mini-llava-prior")  # not shipped, not built


def test_a_local_build_overrides_the_shipped_model(shipped, monkeypatch, capsys):
    from mmlens.models import load_model

    # a distinguishable local build: one more training step than the shipped one
    local_cfg = replace(SMOKE["digits-clip"], steps=SMOKE["digits-clip"].steps + 1)
    zoo.build(["digits-clip"], configs={"digits-clip": local_cfg}, progress=False)
    assert zoo.source_of("digits-clip") == "shipped"  # shipped counts as built: `zoo build` trained nothing
    zoo.build(["digits-clip"], force=True, configs={"digits-clip": local_cfg}, progress=False)
    assert zoo.source_of("digits-clip") == "local" and zoo.is_built("digits-clip")
    local = zoo.model_dir("digits-clip")
    assert zoo.resolve_model("digits-clip") == local
    loaded = load_model("zoo:digits-clip").model.state_dict()
    local_weights = load_file(local / "model.safetensors")
    shipped_weights = load_file(shipped / "digits-clip" / "model.safetensors")
    key = "text_projection.weight"
    assert torch.equal(loaded[key], local_weights[key]) and not torch.equal(loaded[key], shipped_weights[key])
    [entry] = [e for e in zoo.zoo_status() if e.name == "digits-clip"]
    assert entry.overrides_shipped and entry.record["config"]["steps"] == local_cfg.steps
    assert zoo.source_of("mini-clip") == "shipped"  # the others still come from the package
    run_ok(["zoo", "list"])
    out = capsys.readouterr().out
    assert "lookup order: 1. local builds, 2. models shipped with mmlens" in out
    assert str(shipped) in out and str(zoo.zoo_dir()) in out
    [line] = [ln for ln in out.splitlines() if " digits-clip " in ln]
    assert line.split()[0] == "local" and "overrides the shipped copy" in line
    [line] = [ln for ln in out.splitlines() if " mini-clip " in ln]
    assert line.split()[0] == "shipped" and "overrides" not in line


def test_force_rebuilds_the_named_model_on_its_shipped_dependency(shipped):
    """`zoo build --force mini-llava-colour` (the concepts benchmark needs its checkpoints) trains only it."""
    zoo.build(["mini-llava-colour"], force=True, configs=SMOKE, progress=False)
    assert zoo.source_of("mini-llava-colour") == "local" and zoo.source_of("mini-llava") == "shipped"
    step0 = checkpoint_dirs(zoo.model_dir("mini-llava-colour"))[0]
    assert (step0 / "model.safetensors").read_bytes() == (shipped / "mini-llava" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_corrupt_shipped_file_is_a_one_line_error(shipped, damage, capsys):
    weights = shipped / "mini-clip" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        expected = "mini-clip is corrupt: model.safetensors has sha256"
    elif damage == "truncate":
        weights.write_bytes(bytes(data[:-10]))
        expected = f"model.safetensors has {len(data) - 10} bytes, the manifest says {len(data)}"
    else:
        weights.unlink()
        expected = "model.safetensors is missing"
    with pytest.raises(ModelLoadError, match=expected):
        zoo.resolve_model("mini-clip")
    err = run_error(["models", "info", "zoo:mini-clip"], capsys)
    assert expected in err and len(err.splitlines()) == 1
    run_ok(["zoo", "list"])
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if " mini-clip " in ln]
    assert line.split()[0] == "CORRUPT" and expected in line
    # a local build is the way out: it overrides the corrupt copy
    zoo.build(["mini-clip"], force=True, configs=SMOKE, progress=False)
    assert zoo.resolve_model("mini-clip") == zoo.model_dir("mini-clip")


def test_a_corrupt_manifest_is_a_one_line_error(shipped, capsys):
    (shipped / MANIFEST_FILE).write_text('{"format": 1, "models": ')
    with pytest.raises(ModelLoadError, match="manifest .* is corrupt"):
        zoo.resolve_model("mini-clip")
    assert "is corrupt" in run_error(["models", "info", "zoo:mini-clip"], capsys)
    (shipped / MANIFEST_FILE).write_text(json.dumps({"format": 99, "models": {}}))
    with pytest.raises(ModelLoadError, match="not a format-1 manifest"):
        zoo.is_shipped("mini-clip")


def test_ship_checks_the_records_and_writes_nothing_on_a_problem(smoke_zoo_home, tmp_path):
    dest = tmp_path / "shipped"
    # smoke models are not the default recipes
    with pytest.raises(
        InputError, match=r"digits-clip in .* was not built with the default recipe \(batch_size 32 \(expected 128\)"
    ):
        zoo.ship(source=smoke_zoo_home, dest=dest)
    # not built there
    with pytest.raises(InputError, match="mini-llava-prior is not built in"):
        zoo.ship(["mini-llava-prior"], source=smoke_zoo_home, dest=dest, recipes="smoke")
    # a dependency rebuilt after the model that was built on it
    home = tmp_path / "home"
    shutil.copytree(smoke_zoo_home, home)
    later = (home / "zoo" / "mini-llava-colour" / "metrics.json").stat().st_mtime + 60
    os.utime(home / "zoo" / "mini-llava" / "metrics.json", (later, later))
    with pytest.raises(InputError, match="mini-llava-colour .* was built before its dependency mini-llava"):
        zoo.ship(source=home, dest=dest, recipes="smoke")
    # a record that is not the model's
    record = json.loads((home / "zoo" / "mini-clip" / "metrics.json").read_text())
    (home / "zoo" / "mini-clip" / "metrics.json").write_text(json.dumps(record | {"model": "digits-clip"}))
    with pytest.raises(InputError, match="is the record of 'digits-clip', not mini-clip"):
        zoo.ship(["mini-clip"], source=home, dest=dest, recipes="smoke")
    assert not dest.exists()


def test_ship_replaces_the_whole_shipped_folder(shipped, smoke_zoo_home, capsys):
    run_ok(["zoo", "ship", "mini-llava", "--from", str(smoke_zoo_home), "--to", str(shipped), "--recipes", "smoke"])
    out = capsys.readouterr().out
    assert "shipped 2 models" in out and str(shipped) in out
    # the named model and its dependency, nothing left of the previous ship
    assert list(zoo.shipped_models()) == ["mini-clip", "mini-llava"]
    assert sorted(p.name for p in shipped.iterdir()) == ["manifest.json", "mini-clip", "mini-llava"]
    assert zoo.source_of("digits-clip") is None


def test_bench_zoo_rebuilds_without_the_shipped_zoo_and_compares(shipped):
    from mmlens.bench.zoo import zoo_benchmark

    same = zoo_benchmark(names=["digits-clip"], configs=SMOKE)
    rows = same["models"]["digits-clip"]["reproduced"]
    assert rows["zero_shot_acc"]["within"] and rows["zero_shot_acc"]["shipped"] == rows["zero_shot_acc"]["rebuilt"]
    rep = same["reproduction"]
    assert rep["all_within"] and rep["weights_identical"] == {"digits-clip": True}
    assert rep["shipped_zoo"] == str(shipped) and rep["shipped_recipes"] == "smoke" and rep["not_shipped"] == []
    # the rebuild really trained (the shipped copy was out of the lookup) and left the user's zoo alone
    assert same["model_seconds"]["digits-clip"] > 0 and not zoo.is_built("digits-clip")
    # a rebuild that differs from what was shipped is caught
    other = replace(SMOKE["digits-clip"], steps=SMOKE["digits-clip"].steps + 5, lr=SMOKE["digits-clip"].lr * 3)
    changed = zoo_benchmark(names=["digits-clip"], configs={"digits-clip": other})
    assert changed["reproduction"]["weights_identical"] == {"digits-clip": False}
    assert changed["reproduction"]["all_within"] is False
    # what `mmlens bench zoo` prints
    from mmlens.cli.bench import _reproduction_line

    n = len(rows)
    assert _reproduction_line(same) == (
        f"reproduced: {n} of {n} metrics within 0.02 of the shipped models'; weights bit-identical for 1 of 1 models"
    )
    assert "weights bit-identical for 0 of 1 models; outside: digits-clip " in _reproduction_line(changed)


def test_reproduction_applies_the_stated_tolerance():
    from mmlens.bench.zoo import REPRODUCE_TOLERANCE, reproduction

    assert REPRODUCE_TOLERANCE == 0.02
    shipped = {"m": {"acc": 0.90, "vqa": {"yes_no": 0.95, "number": 0.80}, "loss": 2.0, "n": 300, "kind": "x"}}
    rebuilt = {"m": {"acc": 0.915, "vqa": {"yes_no": 0.92, "other": 0.5}, "loss": 2.035, "n": 300, "kind": "y"}}
    rows = reproduction(shipped, rebuilt)["m"]
    assert rows["acc"] == {"shipped": 0.90, "rebuilt": 0.915, "within": True}
    assert not rows["vqa.yes_no"]["within"]  # 0.03 apart
    assert rows["loss"]["within"] and rows["n"]["within"]  # 2 % of 2.0 is 0.04
    assert rows["vqa.number"] == {"shipped": 0.80, "rebuilt": None, "within": False}
    assert rows["vqa.other"]["shipped"] is None and not rows["vqa.other"]["within"]
    assert "kind" not in rows
    assert reproduction({}, rebuilt) == {}


def test_the_concepts_benchmark_asks_for_a_local_colour_build_with_checkpoints(shipped):
    from mmlens.bench.concepts import concepts_benchmark

    with pytest.raises(ModelLoadError, match=r"no checkpoints/ .* `mmlens zoo build --force mini-llava-colour`"):
        concepts_benchmark(log=lambda _: None)


# ---- the zoo this checkout ships (src/mmlens/zoo/shipped, written by `mmlens zoo ship`) ----

PACKAGE_SHIPPED = Path(zoo.__file__).parent / "shipped"


@pytest.mark.skipif(
    not (PACKAGE_SHIPPED / MANIFEST_FILE).is_file(), reason="this checkout ships no zoo (run `mmlens zoo ship`)"
)
def test_the_shipped_zoo_is_the_default_recipes_and_loads(monkeypatch):
    """What `make demo` loads: every shipped model verifies against the manifest, was built with today's default
    recipe (a recipe change without a new `mmlens zoo ship` fails here) and loads."""
    from mmlens.models import load_model
    from mmlens.zoo.shipping import _check_record

    monkeypatch.delenv(SHIPPED_ENV)
    assert zoo.shipped_dir() == PACKAGE_SHIPPED
    manifest = zoo.read_manifest()
    assert manifest["recipes"] == "default"
    assert set(WHOLE_ZOO) <= set(manifest["models"])
    defaults = zoo.default_configs()
    for name in manifest["models"]:
        folder = zoo.verify_shipped(name)
        _check_record(name, folder, defaults[name], "default")
        assert zoo.source_of(name) == "shipped"
        load_model(f"zoo:{name}")
