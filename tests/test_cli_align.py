"""`mmlens align` (cli/align.py): help, and bdhs -> dpo -> eval on a tiny model with one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmlens.models.tiny import tiny_model


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("args", [["align", "bdhs"], ["align", "dpo"], ["align", "eval"], ["bench", "align"]])
def test_cli_help(args, capsys):
    from mmlens.cli import main

    with pytest.raises(SystemExit) as e:
        main([*args, "--help"])
    assert e.value.code in (0, None)
    assert "Usage" in capsys.readouterr().out


def test_cli_bdhs_dpo_eval_on_a_tiny_model(tmp_path, capsys):
    from mmlens.cli import main

    tiny_model("llava").save_pretrained(tmp_path / "vlm")
    for i, im in enumerate(_images(4)):
        im.save(tmp_path / f"{i}.png")
    rows = [
        {
            "image": f"{i}.png",
            "prompt": "is there a star ?",
            "answer": "yes" if i % 2 else "no",
            "objects": ["star"] if i % 2 else ["circle"],
        }
        for i in range(4)
    ]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pope.jsonl").write_text(
        "".join(
            json.dumps({"image": f"{i}.png", "question": "is there a star ?", "label": "yes" if i % 2 else "no"}) + "\n"
            for i in range(4)
        )
    )
    model = str(tmp_path / "vlm")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "align",
                "bdhs",
                "-m",
                model,
                "--data",
                str(tmp_path / "sft.jsonl"),
                "--out",
                str(tmp_path / "pairs"),
                "--max-tries",
                "2",
                "--max-new-tokens",
                "4",
            ]
        )
    assert e.value.code in (0, None)
    assert (tmp_path / "pairs" / "pairs.jsonl").is_file() and (tmp_path / "pairs" / "report" / "index.html").is_file()
    with pytest.raises(SystemExit) as e:
        main(
            [
                "align",
                "dpo",
                "-m",
                model,
                "--pairs",
                str(tmp_path / "pairs"),
                "--out",
                str(tmp_path / "aligned"),
                "--steps",
                "1",
                "--batch-size",
                "2",
            ]
        )
    assert e.value.code in (0, None)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "align",
                "eval",
                "-m",
                f"sft={model}",
                "-m",
                f"dpo={tmp_path / 'aligned'}",
                "--pope",
                str(tmp_path / "pope.jsonl"),
                "--out",
                str(tmp_path / "report"),
            ]
        )
    assert e.value.code in (0, None)
    data = json.loads((tmp_path / "report" / "data.json").read_text())
    assert set(data["results"]) == {"sft", "dpo"} and "pope_all_acc" in data["results"]["dpo"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["align", "bdhs", "-m", model, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["align", "dpo", "-m", model, "--out", str(tmp_path / "y"), "--mode", "sideways"])
    assert e.value.code == 2
