"""Export round trips (JSONL + PNG, datasets) and user errors of load_pairs_jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmlens.errors import InputError
from mmlens.world import Scene, World, WorldConfig
from mmlens.world.export import export_world, load_pairs_jsonl, load_world_meta, to_hf_dataset


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(), seed=3)


def test_export_roundtrip(tmp_path: Path, world: World) -> None:
    out = export_world(tmp_path / "ds", world, 12, split="val")
    lines = (out / "data.jsonl").read_text().splitlines()
    assert len(lines) == 12
    scenes = world.sample_scenes(12, "val")
    for line, sc in zip(lines, scenes):
        rec = json.loads(line)
        assert Scene.from_dict(rec["scene"]) == sc
        assert rec["objects"] == sorted(sc.object_classes)
        assert set(rec["captions"]) == {"objects", "count", "detailed", "colour"}
        assert rec["vqa"] and all(set(q) >= {"question", "answer", "answer_type"} for q in rec["vqa"])
        assert {p["kind"] for p in rec["pope"]} == {"random", "popular", "adversarial"}
        for p in rec["pope"]:
            assert (p["label"] == "yes") == (p["object_class"] in sc.object_classes)
        png = np.asarray(__import__("PIL.Image").Image.open(out / rec["image"]).convert("RGB"))
        assert np.array_equal(png, np.asarray(world.render(sc)))  # PNG is lossless
    pairs = load_pairs_jsonl(out / "data.jsonl")
    assert [p["caption"] for p in pairs] == [json.loads(x)["caption"] for x in lines]
    assert pairs[0]["image"].size == (32, 32)
    w2, meta = load_world_meta(out)
    assert w2.cfg == world.cfg and w2.seed == world.seed and meta["n"] == 12
    # deterministic: a second export is byte-identical
    out2 = export_world(tmp_path / "ds2", world, 12, split="val")
    assert (out2 / "data.jsonl").read_bytes() == (out / "data.jsonl").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_export_refuses_non_empty_target(tmp_path: Path, world: World) -> None:
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        export_world(target, world, 2)
    assert (target / "keep.txt").exists()
    export_world(target, world, 2, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "data.jsonl").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    export_world(empty, world, 1)  # an empty folder is fine
    with pytest.raises(InputError):
        export_world(tmp_path / "zero", world, 0)


def test_hf_dataset(tmp_path: Path, world: World) -> None:
    from datasets import Image as HFImage

    ds = to_hf_dataset(world, n=6, split="test")
    assert len(ds) == 6 and isinstance(ds.features["image"], HFImage)
    row = ds[0]
    sc = world.sample_scenes(1, "test")[0]
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(world.render(sc)))
    assert Scene.from_dict(json.loads(row["scene"])) == sc
    assert row["objects"] == sorted(sc.object_classes)
    assert row["pope"] and set(row["pope"][0]) == {"object_class", "question", "label", "kind"}
    out = export_world(tmp_path / "ds", world, 6, split="test")
    ds2 = to_hf_dataset(out)
    assert ds2["caption"] == ds["caption"] and ds2["scene_id"] == ds["scene_id"]


def test_load_pairs_errors(tmp_path: Path, world: World) -> None:
    with pytest.raises(InputError, match="not found"):
        load_pairs_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        load_pairs_jsonl(empty)
    world.render(world.sample_scenes(1)[0]).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"image": "ok.png", "caption": "a red circle"})
        + "\n"
        + json.dumps({"image": "bad.png", "caption": "a blue square"})
        + "\n"
    )
    with pytest.raises(InputError, match=r"data.jsonl:2: cannot read image .*bad.png"):
        load_pairs_jsonl(data)
    assert len(load_pairs_jsonl(data, load_images=False)) == 2
    data.write_text(json.dumps({"image": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(InputError, match=r":1: image .*nope.png not found"):
        load_pairs_jsonl(data)
    data.write_text(json.dumps({"image": "ok.png"}) + "\n")
    with pytest.raises(InputError, match="missing key 'caption'"):
        load_pairs_jsonl(data)
    loose = load_pairs_jsonl(data, require_caption=False)  # e.g. images + prompts for generation
    assert loose[0]["caption"] is None and loose[0]["image"].size == (32, 32)
    data.write_text("{not json\n")
    with pytest.raises(InputError, match=":1: not valid JSON"):
        load_pairs_jsonl(data)
    # truncated PNG: valid header, missing data
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    data.write_text(json.dumps({"image": "trunc.png", "caption": "x"}) + "\n")
    with pytest.raises(InputError, match="trunc.png"):
        load_pairs_jsonl(data)
