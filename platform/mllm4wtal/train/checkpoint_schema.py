"""What a checkpoint file must hold, checked once when it is read (``checkpoint.
load_checkpoint``): each key's type, every failure one :class:`UserError` naming the file,
the key and the fix. The values of ``config`` are checked later, as any config is
(``config.from_flat``)."""

from __future__ import annotations

import math
import numbers
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mllm4wtal.config.show import shown
from mllm4wtal.errors import UserError

_FIX = "pass a run's best.pt or last.pt, written by `mllm4wtal train`"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _number(v: Any) -> bool:
    # best is -inf until a run's first evaluation
    return (isinstance(v, numbers.Real) and not isinstance(v, bool)
            and not (isinstance(v, float) and math.isnan(v)))


def _int(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _str_keys(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _tensors(v: Any) -> bool:
    return _str_keys(v) and all(isinstance(t, torch.Tensor) for t in v.values())


def _classes(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) for c in v)


def _rng(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)
            and v["torch"].dtype == torch.uint8 and isinstance(v.get("numpy"), dict))


# key -> (check, what it must be); every checkpoint `train` writes holds all of them
REQUIRED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "config": (_str_keys, "the run's flat config (dotted key -> value)"),
    "model": (_tensors, "the model's state dict (name -> tensor)"),
    "classes": (_classes, "the class names of the dataset"),
    "iteration": (_int(0), "an integer >= 0"),
    "best": (_number, "a number"),
    "best_iteration": (_int(-1), "an integer >= -1"),
    "opt_ksm": (_str_keys, "an optimiser state dict"),
    "opt_csr": (lambda v: v is None or _str_keys(v), "an optimiser state dict or null"),
    "rng": (_rng, "{'torch': uint8 tensor, 'numpy': generator state}"),
}
OPTIONAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "metrics": (lambda v: _str_keys(v) and all(_number(x) for x in v.values()),
                "metric name -> number"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "run_id": (lambda v: isinstance(v, str), "a string"),
}


def check_state(path: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint dict that lacks a key or holds a value of the wrong type."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise UserError(f"checkpoint '{path}' lacks {', '.join(repr(k) for k in missing)}, "
                        f"so it was not written by mllm4wtal train (or is damaged); {_FIX}")
    for key, (ok, want) in {**REQUIRED, **OPTIONAL}.items():
        if key in state and not ok(state[key]):
            raise UserError(f"checkpoint '{path}': '{key}' must be {want}, got "
                            f"{shown(state[key])}; the file is damaged or not a checkpoint of "
                            f"this version; {_FIX}")


def read_error(path: Path, e: Exception) -> UserError:
    """The one line for a file ``torch.load(weights_only=True)`` could not read."""
    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        why = "it holds Python objects besides tensors and plain data, which are not loaded"
    else:
        first = _ANSI.sub("", str(e)).strip().splitlines()
        why = f"{type(e).__name__}: {first[0][:120] if first else 'no message'}"
    return UserError(f"checkpoint '{path}' cannot be read ({why}); it may be truncated or not "
                     f"an mllm4wtal checkpoint; {_FIX}")
