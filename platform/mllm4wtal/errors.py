"""The one base class of errors a user can cause and fix.

The CLI prints such an error as one line (its message names the file, key or value and the
fix) instead of a traceback; any other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input: a config key, a file, a value. The message says what to change."""


class DivergenceError(RuntimeError):
    """A loss term became NaN or infinite during training."""

    def __init__(self, iteration: int, term: str, value: float) -> None:
        super().__init__(f"training diverged at iteration {iteration}: loss term '{term}' = "
                         f"{value}; lower train.lr or the weight of that term, or check the "
                         "features for extreme values")
        self.iteration, self.term = iteration, term
