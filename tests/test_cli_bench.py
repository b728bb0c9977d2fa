"""`mmlens bench` (cli/bench.py): every result file says which command wrote it, and when."""

from __future__ import annotations

import json
import shlex

import pytest

from cli_helpers import run_cli, run_ok


@pytest.fixture
def fake_zoo_benchmark(monkeypatch):
    """The zoo benchmark without building a zoo: the command's own writing is what is under test."""
    import mmlens.bench.zoo

    calls = []

    def zoo_benchmark(home=None):
        calls.append(home)
        return {"models": {"digits-clip": {"zero_shot_acc": 0.5}}, "command": "stale"}

    monkeypatch.setattr(mmlens.bench.zoo, "zoo_benchmark", zoo_benchmark)
    return calls


def test_a_benchmark_file_names_the_command_that_wrote_it(fake_zoo_benchmark, tmp_path):
    out = tmp_path / "zoo results.json"
    run_ok(["bench", "zoo", "--out", str(out), "--home", str(tmp_path / "home")])
    result = json.loads(out.read_text())
    assert result["command"] == f"mmlens bench zoo --out {shlex.quote(str(out))} --home {tmp_path / 'home'}"
    assert list(result)[:2] == ["command", "written"] and result["written"].endswith("Z")
    assert result["models"] == {"digits-clip": {"zero_shot_acc": 0.5}}  # the benchmark's own keys are kept
    # the recorded command repeats the run: same options reach the benchmark
    run_ok(shlex.split(result["command"])[1:])
    assert fake_zoo_benchmark == [tmp_path / "home"] * 2
    assert json.loads(out.read_text())["command"] == result["command"]


def test_options_left_at_their_defaults_are_not_spelled_out(fake_zoo_benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    run_ok(["bench", "zoo"])
    assert json.loads((tmp_path / "benchmarks" / "results" / "zoo.json").read_text())["command"] == "mmlens bench zoo"


def test_a_failed_benchmark_writes_no_result(monkeypatch, tmp_path):
    import mmlens.bench.zoo
    from mmlens.errors import InputError

    def zoo_benchmark(home=None):
        raise InputError("no room for a zoo")

    monkeypatch.setattr(mmlens.bench.zoo, "zoo_benchmark", zoo_benchmark)
    assert run_cli(["bench", "zoo", "--out", str(tmp_path / "zoo.json")]) == 2
    assert not (tmp_path / "zoo.json").exists()


def test_every_benchmark_command_records_its_command():
    """Each `mmlens bench X` is wrapped (a new benchmark added without the wrapper fails here)."""
    from mmlens.cli.bench import bench_app

    for info in bench_app.registered_commands:
        assert getattr(info.callback, "records_its_command", False), info.name
