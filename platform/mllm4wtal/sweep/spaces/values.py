"""Small value helpers of the sweep and study file parsers: type tests that keep ``true`` and
``1`` apart (YAML has both; Python's ``True == 1`` does not tell them apart) and values shown
in messages as YAML writes them."""

from __future__ import annotations

import math
from typing import Any


def is_int(v: Any) -> bool:
    """An integer, not a boolean."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite number, not a boolean."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def same(a: Any, b: Any) -> bool:
    """Equality that keeps ``true`` and ``1`` apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def on_grid(distance: float, step: float) -> bool:
    """Whether ``distance`` is a whole number of ``step`` (up to float rounding)."""
    k = distance / step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def show(v: Any) -> str:
    """A value as YAML would write it: ``true``, ``null``, ``'gru'``, ``[1, 2]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + "}"
    return str(v)


def article(word: str) -> str:
    """``an int``, ``a float``."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def tidy(x: float) -> float | int:
    """``0.8999999999`` -> 0.9, ``14.0`` -> 14: a number as a person would write it."""
    r = round(x, 10)
    return int(r) if float(r).is_integer() else r
