"""Running the ``mmlens`` command in-process from tests: its exit code, success, and the user error (exit 2)."""

from __future__ import annotations

import pytest

from mmlens.cli import main


def run_cli(argv) -> int | None:
    """The exit code of ``mmlens ARGV`` (typer always exits through SystemExit)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def run_ok(argv) -> None:
    assert run_cli(argv) in (0, None)


def run_error(argv, capsys) -> str:
    """Run a command that must fail on bad input: exit code 2, no traceback, and the last stderr line is the
    ``mmlens: error: ...`` line (progress output may come before it). Returns the whole stderr, stripped."""
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("mmlens: error:"), err
    return err
