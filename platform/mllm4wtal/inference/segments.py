"""The proposal: a labelled, scored temporal segment, in seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Proposal:
    label: int
    start: float  # seconds
    end: float
    score: float
