"""`mmlens concepts` (cli/concepts.py): help, extract -> learn -> compare, one-line errors."""

from __future__ import annotations

import json

import pytest

from mmlens.cli import main  # noqa: E402
from mmlens.concepts import (  # noqa: E402
    ConceptDictionary,
)
from mmlens.models import tiny_model
from test_concepts import PROMPTS, _images


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.mark.parametrize(
    "words",
    [["concepts"], ["concepts", "extract"], ["concepts", "learn"], ["concepts", "compare"], ["bench", "concepts"]],
)
def test_concepts_commands_have_help(words, capsys):
    code, out, _ = _cli([*words, "--help"], capsys)
    assert code == 0 and "Usage" in out


def test_cli_extract_learn_compare(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    records = []
    for i, image in enumerate(_images(8)):
        image.save(data / f"{i}.png")
        records.append(
            {
                "image": f"{i}.png",
                "prompt": PROMPTS[i % len(PROMPTS)],
                "reference": "a red shape",
                "attributes": {"colour": ["red", "blue"][i % 2]},
            }
        )
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for seed in (0, 1):  # two "checkpoints" of one architecture: same tokenizer, other weights
        tiny_model("llava", seed=seed).save_pretrained(tmp_path / f"model{seed}")
        code, out, err = _cli(
            [
                "concepts",
                "extract",
                "-m",
                str(tmp_path / f"model{seed}"),
                "--out",
                str(tmp_path / f"ex{seed}"),
                "--data",
                str(data / "data.jsonl"),
                "--position",
                "generated_mean",
                "--layers",
                "0,-1",
                "--max-new-tokens",
                "3",
                "--batch-size",
                "4",
            ],
            capsys,
        )
        assert code == 0, err
        assert json.loads(out)["kept"] == 8
    code, out, err = _cli(
        [
            "concepts",
            "learn",
            "--capture",
            str(tmp_path / "ex0"),
            "--out",
            str(tmp_path / "learn"),
            "--n-concepts",
            "2",
            "--top-tokens",
            "10",
            "--keep",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    learnt = json.loads((tmp_path / "learn" / "data.json").read_text())
    assert len(learnt["concepts"]) == 2 and "colour" in learnt["mean_purity"]
    assert (tmp_path / "learn" / "index.html").is_file()
    assert ConceptDictionary.load(tmp_path / "learn" / "dictionary.safetensors").n_concepts == 2
    code, out, err = _cli(
        [
            "concepts",
            "compare",
            "--a",
            str(tmp_path / "ex0"),
            "--b",
            str(tmp_path / "ex1"),
            "--out",
            str(tmp_path / "cmp"),
            "--n-concepts",
            "2",
            "--layer",
            "layer.1",
            "--drift",
            str(tmp_path / "ex1"),
            "--top-tokens",
            "10",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["n_common"] == 8  # the console says how many inputs the numbers rest on
    result = json.loads((tmp_path / "cmp" / "data.json").read_text())
    assert {"baseline_global_gain", "baseline_random_gain", "baseline_permuted_gain"} <= set(result["summary"])
    assert len(result["concepts"]) == 2 and len(result["drift"]["t_overlap"]) == 1
    html = (tmp_path / "cmp" / "index.html").read_text()
    assert "against baselines" in html and "drift" in html


def test_cli_errors_are_one_line(tmp_path, capsys):
    tiny_model("llava").save_pretrained(tmp_path / "model")
    code, _, err = _cli(
        [
            "concepts",
            "extract",
            "-m",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "ex"),
            "--data",
            str(tmp_path / "missing.jsonl"),
        ],
        capsys,
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("mmlens: error:") and "Traceback" not in err
    code, _, err = _cli(
        ["concepts", "learn", "--capture", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "manifest.json" in err
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.jsonl").write_text(json.dumps({"image": "corrupt.png", "prompt": "describe it."}) + "\n")
    code, _, err = _cli(
        [
            "concepts",
            "extract",
            "-m",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "ex2"),
            "--data",
            str(tmp_path / "corrupt.jsonl"),
            "--position",
            "last_prompt",
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err and "cannot read image" in err.strip().splitlines()[-1]
