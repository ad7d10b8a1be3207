"""A user's value as one error message shows it: its repr, on one line and short, whatever
it is (a 5000-digit integer has no repr in Python 3.11)."""

from __future__ import annotations

from typing import Any

SHOWN_CHARS = 80


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (repr escapes newlines: one line)."""
    try:
        text = repr(value)
    except ValueError:  # int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
