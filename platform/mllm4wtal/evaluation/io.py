"""Reading and checking ActivityNet-format ground truth and predictions.

Layouts (those of the official ActivityNet evaluator, ``Evaluation/eval_detection.py``):

* ground truth ``{"database": {vid: {"subset": s, "duration": d,
  "annotations": [{"segment": [t0, t1], "label": name}]}}}``
* predictions ``{"results": {vid: [{"label": name, "segment": [t0, t1], "score": s}]}}``

The official evaluator fails with a bare ``KeyError`` on malformed input; here every problem
raises :class:`EvaluationInputError` naming the file (when there is one), the key and the fix.
Segments are finite with ``0 <= start <= end`` (``start < end`` for predictions: published
ground truth holds empty ones) and tIoU thresholds lie in (0, 1], by the rules of
``config.ranges`` that configs and dataset loaders share.
Parsing returns flat numpy arrays in input order, the order the official evaluator builds its
data frames in (that order decides how score ties are ranked).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.config.ranges import TIOU_RANGE, is_tiou, segment_problem
from mllm4wtal.config.show import shown
from mllm4wtal.errors import UserError


class EvaluationInputError(UserError):
    """Malformed ground truth, predictions or tIoU specification (a ``ValueError``)."""


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _is_number(x: Any) -> bool:
    # bools are ints to Python but never a time or a score; float and int first: the ABC
    # check is slow (a third of a 5000-video parse)
    cls = type(x)
    if cls is float or cls is int:
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _video(vid: Any) -> str:
    """A video id as error messages show it (quoted, one line)."""
    return shown(vid, 200)


def _segment(seg: Any, key: str, source: str | None, empty_ok: bool) -> tuple[float, float]:
    """``[start, end]`` checked by the segment rule of the whole project
    (``config.ranges.segment_problem``); ground truth may hold empty segments, predictions
    may not."""
    if (not isinstance(seg, (list, tuple, np.ndarray)) or len(seg) != 2
            or not all(_is_number(x) for x in seg)):
        raise EvaluationInputError(f"{_where(source)}{key}['segment'] must be two numbers "
                                   f"[start, end] in seconds, got {shown(seg)}")
    problem = segment_problem(seg[0], seg[1], empty_ok=empty_ok)
    if problem:
        raise EvaluationInputError(f"{_where(source)}{key}['segment'] = {shown(seg)} {problem}")
    return float(seg[0]), float(seg[1])


def _label(item: dict, key: str, source: str | None) -> str:
    label = item["label"]
    if not isinstance(label, str):
        raise EvaluationInputError(f"{_where(source)}{key}['label'] must be a class name "
                                   f"(a string), got {shown(label)}")
    return label


@dataclass
class GroundTruthArrays:
    """Ground-truth instances in input order (videos, then their annotations)."""

    videos: list[str]  # video ids of the (filtered) database, in input order
    video: np.ndarray  # (N,) int64 index into ``videos``
    segment: np.ndarray  # (N, 2) float64 seconds
    label: list[str]  # (N,) class names


@dataclass
class PredictionArrays:
    """Predictions in input order (videos of ``results``, then their list)."""

    video: list[str]  # (P,) video ids
    segment: np.ndarray  # (P, 2) float64 seconds
    label: list[str]  # (P,) class names
    score: np.ndarray  # (P,) int64 when every score is an integer, else float64


def parse_ground_truth(data: Any, subset: str | None = None, source: str | None = None
                       ) -> GroundTruthArrays:
    """Check ``data`` and flatten its instances; ``subset`` keeps only videos of that subset.

    Raises EvaluationInputError naming ``source`` (a file name, if any) and the key.
    """
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise EvaluationInputError(f"{_where(source)}ground truth needs a 'database' mapping "
                                   "video id -> {subset, duration, annotations} (ActivityNet "
                                   "format)")
    videos: list[str] = []
    vidx: list[int] = []
    segs: list[tuple[float, float]] = []
    labels: list[str] = []
    subsets: set[str] = set()
    for vid, entry in data["database"].items():
        where = f"database[{_video(vid)}]"
        if not isinstance(entry, dict):
            raise EvaluationInputError(f"{_where(source)}{where} must be a mapping with "
                                       "'subset' and 'annotations'")
        if subset is not None:
            if "subset" not in entry:
                raise EvaluationInputError(f"{_where(source)}{where} has no 'subset' key, "
                                           f"needed to keep subset '{subset}'; add it or "
                                           "evaluate without a subset")
            name = entry["subset"]
            subsets.add(name if isinstance(name, str) and name.isprintable() else shown(name))
            if entry["subset"] != subset:
                continue
        anns = entry.get("annotations")
        if not isinstance(anns, list):
            raise EvaluationInputError(f"{_where(source)}{where}['annotations'] must be a list "
                                       "of {segment, label} (empty for a video without "
                                       f"actions), got {shown(anns)}")
        n = len(videos)
        videos.append(str(vid))
        for i, ann in enumerate(anns):
            key = f"{where}['annotations'][{i}]"
            if not isinstance(ann, dict) or "label" not in ann or "segment" not in ann:
                raise EvaluationInputError(f"{_where(source)}{key} needs 'segment' and 'label'")
            segs.append(_segment(ann["segment"], key, source, empty_ok=True))
            labels.append(_label(ann, key, source))
            vidx.append(n)
    if subset is not None and subset not in subsets:
        names = ", ".join(sorted(subsets)) or "none"
        raise EvaluationInputError(f"{_where(source)}no video has subset '{subset}'; "
                                   f"subsets present: {names}")
    return GroundTruthArrays(videos=videos, video=np.asarray(vidx, dtype=np.int64),
                             segment=np.asarray(segs, dtype=np.float64).reshape(-1, 2),
                             label=labels)


def parse_predictions(data: Any, source: str | None = None) -> PredictionArrays:
    """Check ``data`` and flatten its predictions in input order.

    Raises EvaluationInputError naming ``source`` (a file name, if any) and the key.
    """
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise EvaluationInputError(f"{_where(source)}predictions need a 'results' mapping "
                                   "video id -> [{label, segment, score}] (ActivityNet format)")
    vids: list[str] = []
    segs: list[Any] = []
    labels: list[Any] = []
    scores: list[Any] = []
    for vid, items in data["results"].items():
        if not isinstance(items, list):
            raise EvaluationInputError(f"{_where(source)}results[{_video(vid)}] must be a list "
                                       "of {label, segment, score}")
        for i, p in enumerate(items):
            try:
                segs.append(p["segment"])
                labels.append(p["label"])
                scores.append(p["score"])
            except (KeyError, TypeError, IndexError):
                raise EvaluationInputError(f"{_where(source)}results[{_video(vid)}][{i}] needs "
                                           "'label', 'segment' and 'score'") from None
        vids.extend([str(vid)] * len(items))

    # bulk checks for the plain JSON case (one pass in C per list); anything else goes
    # through the per-item checks, which also name the offending item
    score_types = set(map(type, scores))
    plain = (score_types <= {float, int} and set(map(type, labels)) <= {str}
             and set(map(type, segs)) <= {list, tuple} and set(map(len, segs)) <= {2}
             and set(map(type, chain.from_iterable(segs))) <= {float, int})
    if plain:
        try:
            seg_arr = np.asarray(segs, dtype=np.float64).reshape(-1, 2)
            score_f = np.asarray(scores, dtype=np.float64)
        except OverflowError:  # an integer beyond the float range: named below
            plain = False
        else:
            plain = predictions_valid(seg_arr, score_f)
    if not plain:
        for k, key in enumerate(_prediction_keys(data["results"])):
            score = scores[k]
            if not _is_number(score) or not _finite(score):
                raise EvaluationInputError(f"{_where(source)}{key}['score'] = {shown(score)} is "
                                           "not a finite number")
            segs[k] = _segment(segs[k], key, source, empty_ok=False)
            if not isinstance(labels[k], str):
                _label({"label": labels[k]}, key, source)
        seg_arr = np.asarray(segs, dtype=np.float64).reshape(-1, 2)
        score_f = np.asarray([float(x) for x in scores], dtype=np.float64)
    score_arr = score_f
    # the official reads scores into a pandas column: int64 when all are integers, and the
    # dtype decides how np.argsort orders score ties
    all_int = score_types <= {int} if plain else all(
        isinstance(x, numbers.Integral) for x in scores)
    if scores and all_int:
        try:
            score_arr = np.asarray(scores, dtype=np.int64)
        except OverflowError:  # beyond int64 pandas would not make an int64 column either
            pass
    return PredictionArrays(video=vids, segment=seg_arr, label=labels, score=score_arr)


def predictions_valid(segment: np.ndarray, score: np.ndarray) -> bool:
    """Whether float64 prediction segments (P, 2) and scores pass every check of
    :func:`parse_predictions`: finite, 0 <= start < end."""
    return bool(np.isfinite(segment).all() and (segment[:, 0] >= 0).all()
                and (segment[:, 1] > segment[:, 0]).all() and np.isfinite(score).all())


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer beyond the float range
        return False


def _prediction_keys(results: dict) -> Iterator[str]:
    for vid, items in results.items():
        for i in range(len(items)):
            yield f"results[{_video(vid)}][{i}]"


def _load_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if p.is_dir():
        raise EvaluationInputError(f"{p}: is a directory, not a {what} file; pass the JSON "
                                   "file itself")
    if not p.is_file():
        raise EvaluationInputError(f"{p}: {what} file does not exist")
    try:
        return json.loads(p.read_bytes())
    except ValueError as e:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise EvaluationInputError(f"{p}: {what} file is not valid JSON "
                                   f"({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise EvaluationInputError(f"{p}: {what} file is nested too deeply") from None
    except OSError as e:
        raise EvaluationInputError(f"{p}: {what} file cannot be read ({e.strerror})") from None


def load_ground_truth(path: str | Path) -> dict:
    """Read and check an ActivityNet ground-truth JSON file (errors name ``path``)."""
    data = _load_json(path, "ground-truth")
    parse_ground_truth(data, source=str(path))
    return data


def load_predictions(path: str | Path) -> dict:
    """Read and check an ActivityNet results JSON file (errors name ``path``)."""
    data = _load_json(path, "predictions")
    parse_predictions(data, source=str(path))
    return data


MAX_TIOUS = 1000  # a spec such as 0:1:1e-12 would otherwise build a list of 10^12


def parse_tiou_range(spec: str) -> tuple[float, ...]:
    """tIoU thresholds from ``"0.1:0.7:0.1"`` (start:stop:step, stop included) or a list
    ``"0.5,0.75,0.95"``; values rounded to 6 decimals (no ``0.30000000000000004``)."""
    values: list[float] = []
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step > 0 and stop >= start:
                n = math.floor((stop - start) / step + 1e-9) + 1
                if n > MAX_TIOUS:
                    raise EvaluationInputError(f"tIoU spec {shown(spec)} makes {n} thresholds; "
                                               f"at most {MAX_TIOUS}: take a larger step")
                values = [round(start + i * step, 6) for i in range(n)]
        else:
            values = [round(float(x), 6) for x in spec.split(",")]
    except EvaluationInputError:
        raise
    except (ValueError, OverflowError):
        values = []
    if not values or not all(is_tiou(v) for v in values):
        raise EvaluationInputError(f"tIoU spec {shown(spec)} is invalid; write start:stop:step "
                                   "such as 0.1:0.7:0.1, or a list such as 0.5,0.75,0.95 "
                                   f"(values in {TIOU_RANGE})")
    return tuple(values)


def check_tious(tious: Sequence[float]) -> np.ndarray:
    """Thresholds as a float64 array; raises on an empty list or a value outside (0, 1]."""
    try:
        thr = np.asarray(tious, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        thr = np.array([np.nan])
    if thr.ndim != 1 or len(thr) == 0 or not all(is_tiou(t) for t in thr):
        raise EvaluationInputError(f"tious = {shown(tious)}: give one or more tIoU thresholds "
                                   f"in {TIOU_RANGE}, e.g. (0.1, 0.2, ..., 0.7)")
    return thr
