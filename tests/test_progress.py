"""mmlens's own progress bars (mmlens.progress): drawn on a terminal, never into a log, always with --verbose."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmlens.progress import PROGRESS_ENV, progress_bar, progress_shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_shown()  # a log: no bar
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert progress_shown() and not progress_shown(enabled=False)
    monkeypatch.setenv(PROGRESS_ENV, "never")
    assert not progress_shown()
    monkeypatch.setenv(PROGRESS_ENV, "always")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_shown()
    monkeypatch.setenv(PROGRESS_ENV, "auto")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert not progress_shown()


def test_a_disabled_bar_has_the_methods_of_a_bar(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "never")
    with progress_bar(total=3, desc="x") as bar:
        bar.update(2)
        bar.set_postfix_str("y")
    assert list(progress_bar(range(3), desc="x")) == [0, 1, 2]


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_a_method_bar_leaves_nothing_in_a_log_unless_asked(mode, monkeypatch, capsys):
    """Batched generation (several batches: its bar is on) writes no carriage return or escape code into a
    redirected stderr; with MMLENS_PROGRESS=always (what --verbose sets) the bar is drawn there."""
    from mmlens.models.tiny import tiny_model

    monkeypatch.setenv(PROGRESS_ENV, mode)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    vlm = tiny_model("llava")
    images = [Image.new("RGB", (24, 24), c) for c in ("red", "blue", "green")]
    vlm.generate(images, ["what is it ?"] * 3, max_new_tokens=2, batch_size=1)
    err = capsys.readouterr().err
    if mode == "auto":
        assert "\r" not in err and "\x1b" not in err and "generate" not in err, err
    else:
        assert "generate" in err


@pytest.mark.parametrize("verbose", [False, True])
def test_library_deprecation_notices_reach_a_log_only_with_verbose(verbose, monkeypatch):
    """A command without --verbose hides the libraries' FutureWarnings (TRL's steps raise one per step under
    transformers 5), keeps ours and every other warning; --verbose shows them."""
    import warnings

    import click

    from mmlens.cli.config import _set_verbosity

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TQDM_DISABLE", PROGRESS_ENV):
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _set_verbosity(click.Context(click.Command("x")), None, verbose)
        warnings.warn_explicit("old", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("old", FutureWarning, "trainer.py", 1, module="trl.trainer")
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="mmlens.align.train")
        warnings.warn_explicit("other", UserWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
    shown = sorted(f"{w.category.__name__}:{w.message}" for w in caught)
    library = ["FutureWarning:old", "FutureWarning:old"] if verbose else []
    assert shown == sorted(["FutureWarning:ours", "UserWarning:other", *library])
