"""How a bad value appears in an error message: its repr (shortened when long) and its type."""

from __future__ import annotations

from typing import Any


def short(value: Any, limit: int | None = None) -> str:
    """``repr(value)``, cut to ``limit`` characters (ending in ``...``) when it is longer."""
    text = repr(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe(value: Any, limit: int | None = None) -> str:
    """``short(value, limit)`` followed by the value's type name, e.g. ``'1' (str)``."""
    return f"{short(value, limit)} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool (JSON and Python both let True pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["describe", "is_int", "short"]
