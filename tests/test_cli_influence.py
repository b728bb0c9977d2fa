"""`mmlens influence` (cli/influence.py): help, detect/value/trace/remove, one-line errors, a smoke-zoo model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_helpers import run_cli, run_error
from mmlens.cli import main
from mmlens.influence import (
    PairData,
    inject_noise,
)
from mmlens.models import load_model, tiny_model
from test_influence import _pairs


@pytest.fixture(scope="module")
def clip():
    return tiny_model("clip")


INFLUENCE_COMMANDS = [
    ["influence"],
    ["influence", "detect"],
    ["influence", "value"],
    ["influence", "trace"],
    ["influence", "remove"],
    ["bench", "influence"],
]


@pytest.mark.parametrize("words", INFLUENCE_COMMANDS, ids=" ".join)
def test_help(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0 and "Usage" in capsys.readouterr().out


def _export(folder, data: PairData) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.jsonl", "w") as f:
        for i, (im, cap) in enumerate(zip(data.images, data.captions)):
            im.save(folder / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": cap}) + "\n")
    return str(folder / "data.jsonl")


def test_cli_detect_value_trace_remove(clip, tmp_path, capsys):
    model_dir = tmp_path / "model"
    clip.save_pretrained(model_dir)
    train = _export(tmp_path / "train", _pairs(16))
    val = _export(tmp_path / "val", _pairs(8, seed=2))
    test = _export(tmp_path / "test", _pairs(3, seed=7))
    out = tmp_path / "out"
    common = ["--model", str(model_dir), "--data", train, "--out", str(out), "--batch-size", "8", "--l2", "5"]
    assert run_cli(["influence", "detect", *common, "--val", val, "--top", "4"]) in (0, None)
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["rank"] == 1
    assert rows[0]["delta_val_loss_if_removed"] <= rows[-1]["delta_val_loss_if_removed"]
    assert (out / "report" / "index.html").is_file() and list((out / "report" / "assets").rglob("*.png"))
    capsys.readouterr()
    assert run_cli(["influence", "value", *common, "--val", val, "--format", "csv"]) in (0, None)
    err = capsys.readouterr().err
    assert "reusing the fit" in err  # the second run resumes from the saved fit ...
    assert "resumed: 1 of 1 shards reused" in err  # ... and from detect's score shards (the same settings)
    assert (out / "scores.csv").read_text().count("\n") == 17
    # every pair scored through the sharded path: the same values as the in-memory analyzer would give
    by_index = {r["index"]: r for r in rows}
    csv_rows = (out / "scores.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    assert "self_influence" not in header and "neg_prob" not in header  # only what was asked for
    full_out = tmp_path / "full"  # its own folder: a value scores.jsonl is not a ranking for `remove` below
    full_args = [*common[:5], str(full_out), *common[6:], "--val", val, "--all-forms", "--self-influence"]
    assert run_cli(["influence", "value", *full_args]) in (0, None)
    full = [json.loads(line) for line in (full_out / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in full] == list(range(16))
    assert all(r["self_influence"] > 0 and {"neg_prob", "neg_reciprocal", "neg_exact"} <= set(r) for r in full)
    for r in full:
        assert r["delta_val_loss_if_removed"] == pytest.approx(by_index[r["index"]]["delta_val_loss_if_removed"])
    detect_report = (out / "report" / "index.html").read_bytes()
    assert run_cli(["influence", "trace", *common, "--test", test, "--top", "3"]) in (0, None)
    assert len((out / "trace.jsonl").read_text().splitlines()) == 9
    # trace shares OUT (and the fit) with detect: its report and resolved config are its own, detect's are kept
    assert "reusing the fit" in capsys.readouterr().err
    assert (out / "trace-report" / "index.html").is_file() and (
        out / "report" / "index.html"
    ).read_bytes() == detect_report
    assert (out / "mmlens-config.trace.yaml").read_text().startswith("# mmlens influence trace:")
    assert (out / "mmlens-config.yaml").read_text().startswith("# mmlens influence value:")
    edited = tmp_path / "edited"
    assert run_cli(
        [
            "influence",
            "remove",
            *common,
            "--ranking",
            str(out / "scores.jsonl"),
            "--n-remove",
            "2",
            "--save-to",
            str(edited),
        ]
    ) in (0, None)
    reloaded = load_model(str(edited))
    assert not torch.equal(reloaded.base_model.visual_projection.weight, clip.base_model.visual_projection.weight)


def test_cli_errors_are_one_line(clip, tmp_path, capsys):
    model_dir = tmp_path / "model"
    clip.save_pretrained(model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv in (
        ["--data", str(tmp_path / "nope.jsonl"), "--val", str(empty)],
        ["--data", str(empty), "--val", str(empty)],
        ["--data", _export(tmp_path / "t", _pairs(4)), "--val", str(empty), "--neg-form", "cubic"],
        ["--data", str(tmp_path / "t" / "data.jsonl"), "--val", str(empty), "--format", "xml"],
    ):
        run_error(["influence", "detect", "--model", str(model_dir), "--out", str(tmp_path / "o"), *argv], capsys)


def test_detect_on_a_smoke_zoo_model(smoke_zoo_home, monkeypatch, tmp_path):
    """The zoo path end to end: zoo:digits-clip (smoke budget), digits pairs with injected swaps, CLI detect."""
    from mmlens.world.digits import digits_pairs

    monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))
    digits = digits_pairs("train", seed=1, image_size=16, n=48)
    data = PairData(
        tuple(p.image for p in digits), tuple(p.caption for p in digits), labels=tuple(p.label for p in digits)
    )
    noisy = inject_noise(data, 0.25, "random_swap", seed=0)
    train = _export(tmp_path / "train", noisy.data)
    val = _export(
        tmp_path / "val",
        PairData(
            tuple(p.image for p in digits_pairs("test", n=16, image_size=16)),
            tuple(p.caption for p in digits_pairs("test", n=16, image_size=16)),
        ),
    )
    out = tmp_path / "out"
    assert run_cli(
        [
            "influence",
            "detect",
            "--model",
            "zoo:digits-clip",
            "--data",
            train,
            "--val",
            val,
            "--out",
            str(out),
            "--batch-size",
            "16",
        ]
    ) in (0, None)
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(48))
    assert all(np.isfinite(r["delta_val_loss_if_removed"]) for r in rows)
