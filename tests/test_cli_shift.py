"""`mmlens shift` (cli/shift.py): emi trains, saves and reuses its estimator; generate -> emi on tiny models."""

from __future__ import annotations

import json

import pytest

from mmlens.shift.data import load_split
from test_shift import _toy_text_splits


def test_cli_shift_emi_trains_saves_and_reuses_estimator(tmp_path, capsys):
    from mmlens.cli import main

    folder = _toy_text_splits(tmp_path)
    common = [
        "shift",
        "emi",
        "--id",
        str(folder / "a_clean.jsonl"),
        "--ood",
        str(folder / "b_shift_0.jsonl"),
        "--ood",
        str(folder / "b_shift_1.jsonl"),
        "--text-embedder",
        "hashing:64",
        "--permutations",
        "5",
        "--bootstrap",
        "5",
    ]
    with pytest.raises(SystemExit) as e:
        main([*common, "--out", str(tmp_path / "r1"), "--save-estimator", str(tmp_path / "est.pt")])
    assert e.value.code in (0, None)
    with pytest.raises(SystemExit) as e:
        main([*common, "--out", str(tmp_path / "r2"), "--estimator-file", str(tmp_path / "est.pt")])
    assert e.value.code in (0, None)
    r1 = json.loads((tmp_path / "r1" / "data.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "data.json").read_text())
    assert [r["emi"] for r in r1["rows"]] == pytest.approx([r["emi"] for r in r2["rows"]], abs=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(
            [
                "shift",
                "emi",
                "--id",
                str(tmp_path / "missing.jsonl"),
                "--ood",
                str(folder),
                "--out",
                str(tmp_path / "r3"),
                "--text-embedder",
                "hashing",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and "Traceback" not in err


def test_cli_generate_then_emi_with_images_on_tiny_models(tmp_path, capsys):
    from PIL import Image

    from mmlens.cli import main
    from mmlens.models import tiny_model

    tiny_model("llava").save_pretrained(tmp_path / "vlm")
    tiny_model("clip").save_pretrained(tmp_path / "clip")
    data = tmp_path / "eval.jsonl"
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "white", "yellow", "purple"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "prompt": "what colour is the image ?", "reference": colour}))
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "shift",
                "generate",
                "--model",
                str(tmp_path / "vlm"),
                "--data",
                str(data),
                "--out",
                str(out),
                "--visual",
                "fog",
                "--text",
                "keyboard",
                "--severities",
                "2",
                "--max-new-tokens",
                "2",
            ]
        )
    assert e.value.code in (0, None)
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["clean.jsonl", "fog_2.jsonl", "keyboard_2.jsonl"]
    with pytest.raises(SystemExit) as e:
        main(
            [
                "shift",
                "emi",
                "--id",
                str(out / "clean.jsonl"),
                "--ood",
                str(out),
                "--out",
                str(tmp_path / "rep"),
                "--text-embedder",
                "hashing:32",
                "--image-model",
                str(tmp_path / "clip"),
                "--fusion",
                "concat",
                "--permutations",
                "5",
                "--bootstrap",
                "5",
            ]
        )
    assert e.value.code in (0, None)
    result = json.loads((tmp_path / "rep" / "data.json").read_text())
    assert [r["split"] for r in result["rows"]] == ["clean", "fog_2", "keyboard_2"]
    assert result["rows"][1]["terms"]["J_v"]["value"] > 0 and result["rows"][2]["terms"]["J_t"]["value"] > 0
    # the user's own splits (a folder of JSONL files), used as they are
    own = tmp_path / "own"
    own.mkdir()
    for name in ("id", "ood"):
        (own / f"{name}.jsonl").write_text(
            "\n".join(json.dumps({**json.loads(r), "image": f"../{i}.png"}) for i, r in enumerate(rows)) + "\n"
        )
    with pytest.raises(SystemExit) as e:
        main(
            [
                "shift",
                "generate",
                "--model",
                str(tmp_path / "vlm"),
                "--data",
                str(own),
                "--out",
                str(tmp_path / "own-out"),
                "--max-new-tokens",
                "2",
            ]
        )
    assert e.value.code in (0, None)
    assert load_split(tmp_path / "own-out" / "ood.jsonl").meta["family"] == "user"
