"""The one base class of errors a user can cause and fix.

The CLI prints such an error as one line (its message names the file, key or value and the
fix) instead of a traceback; any other exception is a bug and keeps its traceback.

Both classes pickle as class, ``args`` and attributes, without calling ``__init__`` again:
Ray copies a trial's exception to the driver by pickle, and an error whose ``__init__``
takes other arguments than its message (``DivergenceError``) would otherwise arrive as a
``TypeError`` instead of its message.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class _Portable(Exception):
    """Pickles without calling ``__init__`` (see the module docstring)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class UserError(_Portable, ValueError):
    """Bad input: a config key, a file, a value. The message says what to change."""


class DivergenceError(_Portable, RuntimeError):
    """A loss term became NaN or infinite during training."""

    def __init__(self, iteration: int, term: str, value: float) -> None:
        super().__init__(f"training diverged at iteration {iteration}: loss term '{term}' = "
                         f"{value}; lower train.lr or the weight of that term, or check the "
                         "features for extreme values")
        self.iteration, self.term, self.value = iteration, term, value
