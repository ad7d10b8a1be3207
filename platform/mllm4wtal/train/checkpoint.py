"""Checkpoints: everything needed to resume a run to the last bit.

A checkpoint holds the model, both optimisers, the RNG states (torch, the numpy generators
of data sampling and masking), the iteration, the best metric so far and the flattened
config. It is written atomically (temporary file + rename) and read with
``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mllm4wtal.errors import UserError

FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint '{p}' does not exist; pass a run's best.pt or last.pt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"checkpoint '{p}' cannot be read ({type(e).__name__}: {e}); it may be "
                        "truncated or not an mllm4wtal checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint '{p}' is not an mllm4wtal checkpoint (format {FORMAT})")
    return state
