"""The one coercion from a user value (an enum member or its string value) to an enum member."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from mmlens.errors import InputError

E = TypeVar("E", bound=enum.Enum)


def as_enum(enum_cls: type[E], value: Any, what: str) -> E:
    """``enum_cls(value)``, or an :class:`InputError` naming ``what`` and the allowed values (a user-given string must
    not end in a traceback)."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_cls)
        raise InputError(f"unknown {what} {value!r}: use one of {allowed}") from None


__all__ = ["as_enum"]
