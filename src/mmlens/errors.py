"""User-facing errors.

Anything a user can cause (a missing file, an unreadable image, an empty dataset, an unknown model id while
offline, NaNs in data) is raised as an :class:`MMLensError` with a message that says what is wrong and what to do.
The CLI prints such errors on one line, without a traceback; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class MMLensError(Exception):
    """An error caused by the user's input or environment, explained in one line."""


class InputError(MMLensError, ValueError):
    """Bad input data: missing or unreadable file, corrupt image, empty dataset, NaNs."""


class ModelLoadError(MMLensError):
    """A model cannot be loaded: unknown id while offline, unsupported architecture, missing zoo model."""


class ConvergenceError(MMLensError):
    """A fit that a result depends on did not reach its stated tolerance (the result would not be the method's)."""


def check_finite(config: object) -> None:
    """Refuse a config dataclass whose number fields are not finite (``nan`` passes every range check silently and
    ``inf`` overflows later): an :class:`InputError` naming the field. Called from ``__post_init__`` so that the
    Python API and the command line (which builds its options from the same fields) refuse the same values."""
    import dataclasses
    import math

    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{f.name} must be a finite number, got {v}")
