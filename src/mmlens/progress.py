"""Progress bars of mmlens's own long work: one helper, used by every method, so that a bar shows where someone
watches (a terminal, a notebook) and stays out of logs (output redirected to a file or a pipe, where tqdm's
carriage returns and the escape codes of nested bars would pile up).

``MMLENS_PROGRESS`` chooses: ``auto`` (the default: bars on a terminal or in a notebook), ``always`` (also in logs;
what ``--verbose`` sets) or ``never``. ``TQDM_DISABLE=1`` (which the command line sets in logs for the libraries'
bars) also turns them off, except under ``always``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

PROGRESS_ENV = "MMLENS_PROGRESS"
_MODES = ("auto", "always", "never")


def _in_notebook() -> bool:
    """A Jupyter kernel: tqdm.auto draws a widget there (no escape codes), though stderr is not a terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - any failure to ask means: not a notebook
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_shown(enabled: bool = True) -> bool:
    """Whether a bar the caller wants (``enabled``) is drawn here, by ``MMLENS_PROGRESS`` and the output."""
    if not enabled:
        return False
    mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if mode not in _MODES:
        mode = "auto"
    if mode != "auto":
        return mode == "always"
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return False
    stream = sys.stderr
    return _in_notebook() or bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    leave: bool = False,
    unit: str = "it",
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), drawn only where :func:`progress_shown`;
    otherwise a disabled bar with the same methods (``update``, ``set_postfix_str``, ``close``), so callers never
    branch. ``enabled`` is the caller's own switch (``progress=False``, not the main process, one batch only)."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, unit=unit, disable=not progress_shown(enabled))


__all__ = ["PROGRESS_ENV", "progress_bar", "progress_shown"]
