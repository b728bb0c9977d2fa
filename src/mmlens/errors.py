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
