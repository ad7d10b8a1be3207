"""Value ranges that configs and input files share, checked by one function each: tIoU
thresholds (``eval.tious``, ``evaluate --tiou``, the evaluation API) and temporal segments
(dataset annotations, ground truth and predictions)."""

from __future__ import annotations

import math

TIOU_RANGE = "(0, 1]"


def is_tiou(value: float) -> bool:
    """A tIoU threshold lies in (0, 1]: at 0 a prediction that does not overlap its ground
    truth at all would still match it."""
    return 0.0 < value <= 1.0


def segment_problem(start: float, end: float, *, empty_ok: bool = True) -> str | None:
    """What is wrong with the segment ``[start, end]`` (seconds), or None: both bounds are
    finite, ``0 <= start <= end``, and ``start < end`` unless ``empty_ok``.

    Published ground truth holds empty segments (ActivityNet 1.2 has ten, three in its
    evaluation subset) that the official evaluator keeps, so only predictions refuse them.
    """
    try:
        finite = math.isfinite(start) and math.isfinite(end)
    except OverflowError:  # an integer beyond the float range
        finite = False
    if not finite:
        return "is not finite; write finite times in seconds"
    if start < 0:
        return "starts before 0; write times in seconds from the start of the video"
    if end < start:
        return "ends before it starts; write [start, end]"
    if end == start and not empty_ok:
        return "is empty (start = end); a segment must end after it starts"
    return None
