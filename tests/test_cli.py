"""The CLI: help on every command, one-line errors for bad input (no traceback), and the commands that need no zoo."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cli_helpers import run_error, run_ok
from mmlens.cli import main

SUBCOMMANDS = [
    [],
    ["demo"],
    ["zoo"],
    ["zoo", "build"],
    ["zoo", "list"],
    ["zoo", "eval"],
    ["zoo", "ship"],
    ["world"],
    ["world", "export"],
    ["models"],
    ["models", "info"],
    ["models", "generate"],
    ["models", "embed"],
    ["bench"],
    ["bench", "zoo"],
    ["shift"],
    ["shift", "generate"],
    ["shift", "emi"],
    ["bench", "shift"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "mmlens")
def test_every_command_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Usage" in out and ("--help" in out)


def test_unknown_model_id_offline_is_one_line(capsys):
    err = run_error(["models", "info", "no-such-org/no-such-model-xyz"], capsys)
    assert err.startswith("mmlens: error:") and len(err.splitlines()) == 1
    assert "no-such-org/no-such-model-xyz" in err


def test_missing_zoo_model_says_how_to_build_it(capsys):
    err = run_error(["models", "info", "zoo:mini-llava"], capsys)
    assert "mmlens zoo build" in err


def test_unknown_zoo_name_lists_valid_names(capsys):
    err = run_error(["zoo", "eval", "no-such-model"], capsys)
    assert "digits-clip" in err and len(err.splitlines()) == 1


def test_missing_data_file(tmp_path, capsys):
    err = run_error(
        [
            "models",
            "embed",
            "--model",
            "zoo:digits-clip",
            "--data",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "e.safetensors"),
        ],
        capsys,
    )
    assert "nope.jsonl" in err


def test_empty_dataset(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    err = run_error(
        [
            "models",
            "embed",
            "--model",
            "zoo:digits-clip",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "e.safetensors"),
        ],
        capsys,
    )
    assert "empty" in err.lower()


def test_unreadable_image(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        json.dumps({"image": "ok.png", "caption": "a"})
        + "\n"
        + json.dumps({"image": "broken.png", "caption": "b"})
        + "\n"
    )
    err = run_error(
        [
            "models",
            "embed",
            "--model",
            "zoo:digits-clip",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "e.safetensors"),
        ],
        capsys,
    )
    assert "broken.png" in err


def test_world_export_writes_jsonl_and_images(tmp_path, capsys):
    out = tmp_path / "world"
    run_ok(["world", "export", str(out), "--n", "5", "--split", "val"])
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert Image.open(out / row["image"]).size[0] > 0
    # exporting again into the same non-empty folder is refused, and the folder is untouched
    before = sorted(p.name for p in out.iterdir())
    err = run_error(["world", "export", str(out), "--n", "3"], capsys)
    assert "overwrite" in err.lower()
    assert sorted(p.name for p in out.iterdir()) == before


def test_zoo_list_on_empty_home(capsys):
    run_ok(["zoo", "list"])
    out = capsys.readouterr().out
    from mmlens import zoo

    assert out.count("missing") == len(zoo.ZOO_MODELS)


def test_embed_and_info_with_a_local_tiny_clip(tmp_path, capsys):
    from safetensors.torch import load_file

    from mmlens.models import tiny_model

    model_dir = tmp_path / "tiny-clip"
    tiny_model("clip").save_pretrained(model_dir)
    run_ok(["models", "info", str(model_dir)])
    info = json.loads(capsys.readouterr().out)
    assert info["model_class"] == "CLIPModel" and info["parameters"] > 0
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{i}.png")
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"image": f"{i}.png", "caption": c}) + "\n" for i, c in enumerate(["red", "blue", "green"]))
    )
    run_ok(
        ["models", "embed", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "e.safetensors")]
    )
    tensors = load_file(str(tmp_path / "e.safetensors"))
    assert tensors["image_embeds"].shape[0] == 3 and tensors["text_embeds"].shape == tensors["image_embeds"].shape
    assert tensors["pair_similarity"].abs().max() <= 1.0 + 1e-5


def test_the_influence_ranking_says_when_no_pair_stands_out():
    """Clean scores (all within their spread) are not headed 'most harmful'; a planted harmful score stands out."""
    import numpy as np

    from mmlens.influence.report import stand_out

    clean = list(np.random.default_rng(0).normal(0.0, 1e-5, size=200))
    assert stand_out(clean).n_outliers == 0 and "No pair stands out" in stand_out(clean).note
    planted = [*clean, -1e-3]
    result = stand_out(planted)
    assert result.n_outliers == 1 and result.lowest_z < -3.5 and result.low > -1e-3


def test_report_numbers_keep_their_scale():
    from mmlens.html.report import format_number

    assert format_number(-1.234e-5) == "-1.23e-05" and format_number(0.0) == "0"
    assert format_number(0.8766) == "0.877" and format_number(12.345) == "12.35"
    assert format_number(float("nan")) == "n/a" and format_number(3.2e6) == "3.20e+06"


def test_help_imports_no_deep_learning_library():
    """`mmlens --help` and every subcommand's --help import neither torch nor transformers (start-up time: the
    numbers are in benchmarks/results/cli.json, written by `mmlens bench cli`)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from mmlens.cli import SUBCOMMANDS, main\n"
        "from mmlens.cli.startup import leaf_commands\n"
        "for words in [[], *[c.split() for c in leaf_commands()]]:\n"
        "    try:\n"
        "        main([*words, '--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, words\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'sklearn', 'scipy') "
        "if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-500:]


def test_the_listed_help_of_each_group_is_its_own():
    """`mmlens --help` lists the groups without importing them: the listed line must be the group's help."""
    from mmlens.cli import SINGLE_COMMANDS, SUBCOMMANDS, load_subcommand

    for name, (_, _, short) in SUBCOMMANDS.items():
        if name not in SINGLE_COMMANDS:
            assert load_subcommand(name).help == short, name
