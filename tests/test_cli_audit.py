"""`mmlens audit` (cli/audit.py): the site and the resolved config, a config file, a repeat from the resolved config."""

from __future__ import annotations

import json

import pytest

from test_audit import _audit_json


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random CLIP saved as a folder and 24 exported world scenes (all these commands need)."""
    from mmlens.models.tiny import tiny_model
    from mmlens.world import World, WorldConfig, export_world

    root = tmp_path_factory.mktemp("audit-assets")
    tiny_model("clip").save_pretrained(root / "clip")
    export_world(root / "data", World(WorldConfig(), seed=0), 24, split="test")
    return root


def test_cli_audit_writes_site_and_resolved_config(assets, tmp_path, capsys):
    from mmlens.cli import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "audit",
                "--model",
                str(assets / "clip"),
                "--data",
                str(assets / "data"),
                "--out",
                str(out),
                "--inject-swaps",
                "0.25",
                "--stages",
                "influence",
            ]
        )
    assert exit_info.value.code in (0, None)
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"]["influence"] == "done" and printed["stages"]["shift"] == "skipped"
    resolved = out / "mmlens-config.yaml"
    assert resolved.is_file() and "influence_inject_swap_rate: 0.25" in resolved.read_text()
    with pytest.raises(SystemExit) as exit_info:  # bad input: one line, exit 2
        main(["audit", "--model", str(assets / "clip"), "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmlens: error:") and "\n" not in err


def test_cli_config_file_and_repeat_from_the_resolved_config(assets, tmp_path):
    from mmlens.cli import main

    out = tmp_path / "from-config"
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: {assets / 'clip'}\ndata: {assets / 'data'}\nout: {out}\nstages: [influence]\ninject-swaps: 0.25\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--config", str(config)])
    assert exit_info.value.code in (0, None)
    first = _audit_json(out)["stages"]["influence"]
    assert first["status"] == "done" and first["summary"]["injected_swap_rate"] == 0.25
    with pytest.raises(SystemExit) as exit_info:  # the resolved config repeats the run: nothing to recompute
        main(["audit", "--config", str(out / "mmlens-config.yaml")])
    assert exit_info.value.code in (0, None)
    again = _audit_json(out)["stages"]["influence"]
    assert again["status"] == "cached" and again["computed_at"] == first["computed_at"]
