"""Checks every loader runs, each failing with one :class:`DataError` that names the file
and the fix.

The checks are split into small functions so loaders can call them at the point where the
offending file is known (e.g. a label string is checked while it is being mapped to an
index), plus :func:`validate_dataset` for the checks that need the built dataset.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..config.ranges import segment_problem
from ..errors import UserError
from .types import WTALDataset

__all__ = [
    "DataError",
    "DataWarning",
    "SEGMENT_TOLERANCE_S",
    "require_files",
    "check_count",
    "check_width",
    "check_finite",
    "label_index",
    "check_segments",
    "validate_dataset",
]

# Published annotations put some starts a little past the (rounded) video duration.
SEGMENT_TOLERANCE_S = 1.0


class DataError(UserError):
    """A dataset file is missing or malformed; the message names the file and the fix."""


class DataWarning(UserWarning):
    """Suspicious but usable data (e.g. published segments past the video end)."""


def require_files(directory: str | os.PathLike[str], names: Iterable[str], *, what: str) -> None:
    """Raise if any of ``names`` is missing under ``directory``, listing all expected files."""
    d = Path(directory)
    names = list(names)
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise DataError(
            f"{what}: missing file(s) {', '.join(str(d / n) for n in missing)}. "
            f"Expected in {d}: {', '.join(names)}. Fix: point the loader at the directory "
            "that holds them (dataset root / name)."
        )


def check_count(n_features: int, n_videos: int, *, feature_file: str, annotation_file: str) -> None:
    """Feature arrays and annotated videos must correspond one to one."""
    if n_features != n_videos:
        raise DataError(
            f"{feature_file}: holds {n_features} feature arrays but {annotation_file} lists "
            f"{n_videos} videos. Fix: use the feature file that matches these annotations "
            "(same dataset version and video order)."
        )


def check_width(
    width: int, expected: int | None, *, video: str, source: str, reference: str = "expected"
) -> None:
    """Feature width must equal ``expected`` (when given)."""
    if expected is not None and width != expected:
        raise DataError(
            f"{source}: video '{video}' has feature width {width}, {reference} {expected}. "
            "Fix: use features of the configured width (e.g. 2048 for I3D RGB+flow) or set "
            "expected_dim / the model's feature_dim to match."
        )


def check_finite(features: np.ndarray, *, video: str, source: str) -> None:
    """No NaN/inf snippets; the message names the video and the first bad snippet."""
    ok = np.isfinite(features)
    if not ok.all():
        bad_rows = np.flatnonzero(~ok.all(axis=1)) if ok.ndim == 2 else np.array([0])
        kind = "NaN" if np.isnan(features).any() else "inf"
        raise DataError(
            f"{source}: video '{video}' has {kind} features at snippet {int(bad_rows[0])} "
            f"({len(bad_rows)} bad snippet(s) in total). Fix: re-extract the features of this "
            "video or drop it from the annotations."
        )


def label_index(label: str, classes: Sequence[str], *, video: str, source: str) -> int:
    """Index of ``label`` in ``classes``; a label outside the class list is an error."""
    try:
        return classes.index(label) if isinstance(classes, list) else list(classes).index(label)
    except ValueError:
        raise DataError(
            f"{source}: video '{video}' has label '{label}', which is not in the class list "
            f"({len(classes)} classes). Fix: add it to the class list or correct the "
            "annotation."
        ) from None


def check_segments(
    segments: Iterable[tuple[float, float]],
    duration: float,
    *,
    video: str,
    source: str,
    tolerance: float = SEGMENT_TOLERANCE_S,
    strict: bool = True,
) -> list[tuple[float, float]]:
    """Each segment must lie in the video: ``config.ranges.segment_problem`` (finite,
    0 <= start <= end), and start <= duration + tolerance.

    A negative start, an end before the start or a non-finite bound always raises. A start
    past the end raises when ``strict``; otherwise such segments are returned so the caller
    can warn (the published THUMOS14-reduced annotations have 29 in 5 videos; published mAPs keep
    them as ground truth).
    """
    beyond: list[tuple[float, float]] = []
    for start, end in segments:
        problem = segment_problem(start, end, empty_ok=True)
        if problem is None and start > duration + tolerance:
            if not strict:
                beyond.append((start, end))
                continue
            problem = (f"starts after the video ends (duration {duration:.3f}s); correct the "
                       "segment or the video duration")
        if problem:
            raise DataError(f"{source}: video '{video}' segment [{start}, {end}] of the "
                            f"annotations {problem}.")
    return beyond


def validate_dataset(
    ds: WTALDataset,
    *,
    source: str,
    expected_dim: int | None = None,
    finite: bool = True,
    tolerance: float = SEGMENT_TOLERANCE_S,
    strict_segments: bool = False,
) -> WTALDataset:
    """Run the per-video checks on a built dataset and return it.

    ``finite=False`` skips the NaN/inf scan (the packed loader does, since :func:`pack`
    scanned before writing and a full scan would defeat memory mapping).
    Segments starting after their video ends raise with ``strict_segments``, else they are
    kept and summarised in one :class:`DataWarning`.
    """
    if not ds.videos:
        raise DataError(f"{source}: no videos. Fix: check the annotation files.")
    width = expected_dim if expected_dim is not None else ds.feature_dim
    reference = "expected" if expected_dim is not None else "but the first video has"
    beyond: dict[str, list[tuple[float, float]]] = {}
    for v in ds.videos:
        if v.features.ndim != 2:
            raise DataError(
                f"{source}: video '{v.name}' features have shape {v.features.shape}, expected "
                "(snippets, width). Fix: store one 2-D array per video."
            )
        check_width(int(v.features.shape[1]), width, video=v.name, source=source,
                    reference=reference)
        if finite:
            check_finite(v.features, video=v.name, source=source)
        for lab in list(v.labels) + [s.label for s in v.segments]:
            if not 0 <= lab < ds.num_classes:
                raise DataError(
                    f"{source}: video '{v.name}' has label index {lab}, not in the class list "
                    f"({ds.num_classes} classes). Fix: correct the labels or the class list."
                )
        late = check_segments(((s.start, s.end) for s in v.segments), v.duration,
                              video=v.name, source=source, tolerance=tolerance,
                              strict=strict_segments)
        if late:
            beyond[v.name] = late
    if not 0 < ds.rgb_dim <= ds.feature_dim:
        raise DataError(
            f"{source}: rgb_dim {ds.rgb_dim} does not fit feature width {ds.feature_dim}. "
            "Fix: pass rgb_dim (the width of the RGB block)."
        )
    if beyond:
        n = sum(len(x) for x in beyond.values())
        warnings.warn(
            f"{source}: {n} segment(s) in {len(beyond)} video(s) start after the video ends "
            f"(kept as ground truth): {', '.join(sorted(beyond))}. Pass strict_segments=True "
            "to make this an error.",
            DataWarning,
            stacklevel=2,
        )
    return ds
