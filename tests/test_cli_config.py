"""Config files for every command: --config (YAML or TOML) mirrors the options, the command line wins, unknown
keys are a one-line error, and the resolved config written beside the results repeats the run exactly."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from cli_helpers import run_error, run_ok
from mmlens.cli import command, main
from mmlens.cli.config import (
    FILE_CONFIG_SUFFIX,
    FOLDER_CONFIG_NAME,
    command_defaults,
    read_config_file,
    resolved_config_path,
)
from mmlens.errors import InputError


def _leaves(cmd, path=()):
    subcommands = getattr(cmd, "commands", None)
    if subcommands is None:
        return [(" ".join(path), cmd)]
    return [leaf for name, sub in subcommands.items() for leaf in _leaves(sub, (*path, name))]


def _run_error(argv, capsys) -> str:
    err = run_error(argv, capsys)
    assert len(err.splitlines()) == 1, err  # config errors come before any work: nothing else is printed
    return err


def test_every_command_accepts_config(capsys):
    leaves = _leaves(command())
    assert len(leaves) >= 20 and "shift generate" in dict(leaves) and "demo" in dict(leaves)
    for path, cmd in leaves:
        assert [p.name for p in cmd.params].count("config") == 1, path
    with pytest.raises(SystemExit):
        main(["shift", "generate", "--help"])
    assert "--config" in capsys.readouterr().out


def test_yaml_config_runs_the_command_and_writes_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export.yaml").write_text("out-dir: world\nn: 3\nsplit: val\nseed: 5\n")
    run_ok(["world", "export", "--config", "export.yaml"])
    records = (tmp_path / "world" / "data.jsonl").read_text().splitlines()
    assert len(records) == 3
    resolved = yaml.safe_load((tmp_path / "world" / FOLDER_CONFIG_NAME).read_text())
    # Every option, including the defaults the file did not give.
    assert resolved["n"] == 3 and resolved["split"] == "val" and resolved["seed"] == 5
    assert {"bias_strength", "hf_dataset", "overwrite", "out_dir"} <= set(resolved)
    assert "config" not in resolved

    # Written inside the folder the command ran from, its paths are relative to the config's folder: no writer's
    # folder names in it (a committed result must not carry them), and it moves with its folder.
    text = (tmp_path / "world" / FOLDER_CONFIG_NAME).read_text()
    assert str(tmp_path) not in text and resolved["out_dir"] == "."
    assert "--config world/mmlens-config.yaml" in text

    # The resolved config is a config file of the same command: the rerun (from another folder, after the results
    # moved) is identical and writes where the config now is.
    (tmp_path / "world").rename(tmp_path / "first")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "first" / "data.jsonl").unlink()
    run_ok(["world", "export", "--config", str(tmp_path / "first" / FOLDER_CONFIG_NAME), "--overwrite"])
    assert (tmp_path / "first" / "data.jsonl").read_text().splitlines() == records
    assert list(elsewhere.iterdir()) == []
    # ... and, written from outside the project (elsewhere), it stores absolute paths
    rewritten = yaml.safe_load((tmp_path / "first" / FOLDER_CONFIG_NAME).read_text())
    assert rewritten["out_dir"] == str(tmp_path / "first")
    assert {k: v for k, v in rewritten.items() if k not in ("out_dir", "overwrite")} == {
        k: v for k, v in resolved.items() if k not in ("out_dir", "overwrite")
    }


def test_toml_config_and_the_command_line_wins(tmp_path):
    out = tmp_path / "w"
    (tmp_path / "export.toml").write_text(f'out_dir = "{out}"\nn = 5\nsplit = "test"\n')
    run_ok(["world", "export", "--config", str(tmp_path / "export.toml"), "--n", "2"])
    assert len((out / "data.jsonl").read_text().splitlines()) == 2
    resolved = yaml.safe_load((out / FOLDER_CONFIG_NAME).read_text())
    assert resolved["n"] == 2 and resolved["split"] == "test"


def test_unknown_keys_and_bad_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: 3\nnumber_of_scenes: 4\n")
    err = _run_error(["world", "export", str(tmp_path / "x"), "--config", str(bad)], capsys)
    assert "number_of_scenes" in err and "n," in err  # names the bad key and lists the valid ones
    assert not (tmp_path / "x").exists()

    broken = tmp_path / "broken.yaml"
    broken.write_text("n: [3\n")
    assert "not valid YAML" in _run_error(["world", "export", str(tmp_path / "x"), "--config", str(broken)], capsys)
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("n = = 3\n")
    assert "not valid TOML" in _run_error(["world", "export", "--config", str(broken_toml)], capsys)
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 3\n- 4\n")
    assert "mapping" in _run_error(["world", "export", "--config", str(a_list)], capsys)
    assert "does not exist" in _run_error(["zoo", "list", "--config", str(tmp_path / "none.yaml")], capsys)
    wrong_suffix = tmp_path / "c.json"
    wrong_suffix.write_text("{}")
    assert ".toml" in _run_error(["zoo", "list", "--config", str(wrong_suffix)], capsys)


def test_list_values_join_for_comma_separated_options(tmp_path):
    shift_generate = dict(_leaves(command()))["shift generate"]
    defaults = command_defaults(
        {"visual": ["fog", "defocus_blur"], "max-new-tokens": 4, "--joint": True},
        shift_generate.params,
        "c.yaml",
        "mmlens shift generate",
    )
    assert defaults == {"visual": "fog,defocus_blur", "max_new_tokens": 4, "joint": True}
    with pytest.raises(InputError, match="unknown option"):
        command_defaults({"config": "other.yaml"}, shift_generate.params, "c.yaml", "mmlens shift generate")
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml") == {}


def test_file_outputs_get_a_sibling_config(tmp_path):
    """A command whose --out is a file (models generate on a saved tiny LLaVA): <out>.config.yaml, and the
    rerun from it writes the same responses."""
    from mmlens.models.tiny import tiny_model

    tiny_model("llava").save_pretrained(tmp_path / "vlm")
    colours = ["red", "blue", "green"]
    lines = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (24, 24), colour).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": f"what colour is object {i} ?"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "gen.yaml").write_text(
        yaml.safe_dump(
            {
                "model": str(tmp_path / "vlm"),
                "data": str(tmp_path / "data.jsonl"),
                "out": str(tmp_path / "r.jsonl"),
                "max_new_tokens": 3,
                "batch_size": 2,
            }
        )
    )
    run_ok(["models", "generate", "--config", str(tmp_path / "gen.yaml")])
    first = (tmp_path / "r.jsonl").read_text()
    assert len(first.splitlines()) == 3
    sibling = tmp_path / ("r.jsonl" + FILE_CONFIG_SUFFIX)
    assert resolved_config_path({"out": tmp_path / "r.jsonl"}) == sibling
    resolved = yaml.safe_load(sibling.read_text())
    assert resolved["max_new_tokens"] == 3 and resolved["batch_size"] == 2 and "prompt" in resolved
    (tmp_path / "r.jsonl").unlink()
    run_ok(["models", "generate", "--config", str(sibling)])
    assert (tmp_path / "r.jsonl").read_text() == first


def test_commands_without_an_output_write_no_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.toml").write_text("")
    run_ok(["zoo", "list", "--config", "empty.toml"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.toml"]


def test_python_dash_m_mmlens_is_the_cli():
    """``python -m mmlens`` (what ``accelerate launch -m mmlens`` runs on every process) is the mmlens command."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mmlens", "zoo", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "build" in done.stdout and "Usage" in done.stdout
