"""`mmlens steer` (cli/steer.py): help, and build -> apply -> eval on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.models import tiny_model
from mmlens.steer import (
    VectorKind,
    VQAExample,
    generate_answers,
    load_vectors,
)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")) for _ in range(n)]


@pytest.mark.parametrize("args", [["steer", "build"], ["steer", "apply"], ["steer", "eval"], ["bench", "steer"]])
def test_cli_help(args, capsys):
    from mmlens.cli import main

    with pytest.raises(SystemExit) as e:
        main([*args, "--help"])
    assert e.value.code in (0, None)
    assert "Usage" in capsys.readouterr().out


def test_cli_build_apply_eval_on_a_tiny_model(tmp_path, capsys):
    from mmlens.cli import main

    vlm = tiny_model("llava", seed=2)  # this seed's random model gives several different answers
    vlm.save_pretrained(tmp_path / "vlm")
    for i, im in enumerate(_images(6)):
        im.save(tmp_path / f"{i}.png")
    questions = [("is there a star ?", "yes", "yes/no"), ("how many stars are there ?", "two", "number")]
    rows = [
        {"image": f"{i}.png", "question": q, "answer": a, "answer_type": t} for i in range(6) for q, a, t in questions
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, data = str(tmp_path / "vlm"), str(tmp_path / "q.jsonl")
    main_args = ["-m", model, "--data", data]
    capsys.readouterr()
    # labels come from the tiny model's own answers: take its two most common answers as source and target
    plain = generate_answers(
        vlm,
        [
            VQAExample(Image.open(tmp_path / r["image"]).convert("RGB"), r["question"], r["answer"], r["answer_type"])
            for r in rows
        ],
        max_new_tokens=2,
    )
    from collections import Counter

    common = [a for a, _ in Counter(plain).most_common(2)]
    assert len(common) == 2
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "build",
                *main_args,
                "--source",
                common[0],
                "--target",
                common[1],
                "--layers",
                "0,1",
                "--no-use-truth",
                "--max-new-tokens",
                "2",
                "--out",
                str(tmp_path / "v.safetensors"),
            ]
        )
    assert e.value.code in (0, None)
    vectors = load_vectors(tmp_path / "v.safetensors")
    assert {v.kind for v in vectors} == {VectorKind.COARSE, VectorKind.SHUFFLED} and len(vectors) == 4
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "apply",
                *main_args,
                "--vectors",
                str(tmp_path / "v.safetensors"),
                "--alpha",
                "2",
                "--out",
                str(tmp_path / "a.jsonl"),
                "--max-new-tokens",
                "2",
            ]
        )
    assert e.value.code in (0, None)
    out = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(out) == len(rows) and {"plain", "steered"} <= set(out[0])
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "eval",
                *main_args,
                "--vectors",
                str(tmp_path / "v.safetensors"),
                "--source",
                common[0],
                "--target",
                common[1],
                "--alphas",
                "0,1",
                "--out",
                str(tmp_path / "report"),
                "--max-new-tokens",
                "2",
            ]
        )
    assert e.value.code in (0, None)
    data_json = json.loads((tmp_path / "report" / "data.json").read_text())
    assert len(data_json["vectors"]) == 2 and "shuffled" in data_json["vectors"][0]["sweep"][0]
    assert (tmp_path / "report" / "index.html").is_file()
    from safetensors.torch import save_file

    save_file({"concepts": torch.randn(3, vlm.lm_head.weight.shape[1])}, str(tmp_path / "dictionary.safetensors"))
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "build",
                *main_args,
                "--dictionary",
                str(tmp_path / "dictionary.safetensors"),
                "--layers",
                "1",
                "--out",
                str(tmp_path / "c.safetensors"),
            ]
        )
    assert e.value.code in (0, None)
    concepts = load_vectors(tmp_path / "c.safetensors")
    assert len(concepts) == 6 and {v.kind for v in concepts} == {VectorKind.CONCEPT} and concepts[0].layer == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "apply",
                *main_args,
                "--vectors",
                str(tmp_path / "missing.safetensors"),
                "--out",
                str(tmp_path / "x.jsonl"),
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "apply",
                *main_args,
                "--vectors",
                str(tmp_path / "v.safetensors"),
                "--positions",
                "sideways",
                "--out",
                str(tmp_path / "x.jsonl"),
            ]
        )
    assert e.value.code == 2
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "steer",
                "build",
                "-m",
                model,
                "--data",
                str(tmp_path / "empty.jsonl"),
                "--source",
                "a",
                "--target",
                "b",
                "--out",
                str(tmp_path / "y.safetensors"),
            ]
        )
    assert e.value.code == 2
    assert "empty" in capsys.readouterr().err
