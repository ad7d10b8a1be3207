"""The schema of a packed dataset's ``index.json``: every key's type and range, checked once
when the index is read, each failure one :class:`DataError` naming the file, the key and the
fix (the index is written by ``mllm4wtal data pack``; a hand-edited one is checked as
strictly).

Besides types: rows of ``features.f16`` are owned by one video each (two videos sharing rows
mean the index does not belong to that feature file), video names are unique, labels index
the class list and segments follow ``config.ranges.segment_problem``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..config.ranges import segment_problem
from ..config.show import shown
from .validate import DataError

PACKED_FORMAT = "mllm4wtal-packed"
PACKED_VERSION = 1
_REPACK = "re-run pack (`mllm4wtal data pack`)"


@dataclass(frozen=True)
class PackedVideo:
    name: str
    subset: str
    offset: int  # first row in features.f16
    length: int  # rows (snippets)
    labels: tuple[int, ...]
    segments: tuple[tuple[float, float, int], ...]  # (start s, end s, class index)
    duration: float
    fps: float


@dataclass(frozen=True)
class PackedIndex:
    name: str
    rows: int
    dim: int
    rgb_dim: int
    frames_per_snippet: int
    classes: list[str]
    train_subset: str
    test_subset: str
    ambiguous: dict[str, list[tuple[float, float]]]
    vocabulary: dict[str, dict[str, list[str]]]
    videos: list[PackedVideo]


class _Reader:
    """Typed access to one JSON object of the index; errors name the file and the key."""

    def __init__(self, path: str, obj: Any, key: str = "") -> None:
        self.path, self.key = path, key
        if not isinstance(obj, dict):
            self.fail(f"must be an object, got {_kind(obj)}", key or "top level")
        self.obj: dict = obj

    def fail(self, problem: str, key: str | None = None) -> NoReturn:
        where = key if key is not None else self.key
        raise DataError(f"{self.path}: {where + ' ' if where else ''}{problem}; {_REPACK} "
                        "(or correct that key)")

    def at(self, key: str) -> str:
        return f"{self.key}.{key}" if self.key else key

    def get(self, key: str, check: Callable[[Any], bool], want: str, default: Any = ...
            ) -> Any:
        if key not in self.obj:
            if default is not ...:
                return default
            self.fail("is missing", self.at(key))
        value = self.obj[key]
        if not check(value):
            self.fail(f"must be {want}, got {shown(value)}", self.at(key))
        return value

    def int(self, key: str, low: int = 0) -> int:
        return int(self.get(key, lambda v: _is_int(v) and v >= low, f"an integer >= {low}"))

    def number(self, key: str, positive: bool) -> float:
        want = "a finite number > 0" if positive else "a finite number >= 0"
        return float(self.get(key, lambda v: _is_real(v) and (v > 0 if positive else v >= 0),
                              want))

    def text(self, key: str) -> str:
        return str(self.get(key, lambda v: isinstance(v, str), "a string"))


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _span(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_real(x) for x in v)


def _vocabulary(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(words, dict) and all(_str_list(w) for w in words.values())
        for words in v.values())


def read_index(path: str | Path) -> PackedIndex:
    """Read and check ``index.json``; :class:`DataError` on anything it would not load."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes())
    except ValueError as e:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise DataError(f"{p}: invalid JSON ({str(e).splitlines()[0]}); {_REPACK}") from None
    except RecursionError:
        raise DataError(f"{p}: nested too deeply to be an index; {_REPACK}") from None
    except OSError as e:
        raise DataError(f"{p}: cannot be read ({e.strerror}); check its permissions") from None
    return parse_index(data, str(p))


def parse_index(data: Any, path: str) -> PackedIndex:
    """Check a decoded index (``path`` names it in errors) and return it typed."""
    top = _Reader(path, data, "")
    fmt, version = data.get("format"), data.get("version")
    if fmt != PACKED_FORMAT or version != PACKED_VERSION:
        top.fail(f"format {shown(fmt)} version {shown(version)}, expected {PACKED_FORMAT!r} "
                 f"version {PACKED_VERSION}: written by another version of mllm4wtal or not an "
                 "index")
    top.get("dtype", lambda v: v == "float16", "'float16'", default=None)
    top.get("byteorder", lambda v: v == "little", "'little'", default=None)
    rows, dim = top.int("rows"), top.int("dim", low=1)
    classes = top.get("classes", lambda v: _str_list(v) and len(v) > 0, "a list of class names")
    if len(set(classes)) != len(classes):
        top.fail("names a class twice", "classes")
    ambiguous = top.get("ambiguous", lambda v: isinstance(v, dict) and all(
        isinstance(s, list) and all(_span(x) for x in s) for s in v.values()),
        "an object video -> [[start, end], ...]", default={})
    raw_videos = top.get("videos", lambda v: isinstance(v, list), "a list of videos")
    videos = [_video(path, m, i, rows, len(classes)) for i, m in enumerate(raw_videos)]
    _check_rows(top, videos)
    return PackedIndex(
        name=top.text("name"), rows=rows, dim=dim, rgb_dim=top.int("rgb_dim", low=1),
        frames_per_snippet=top.int("frames_per_snippet", low=1), classes=list(classes),
        train_subset=top.text("train_subset"), test_subset=top.text("test_subset"),
        ambiguous={k: [(float(s), float(e)) for s, e in v] for k, v in ambiguous.items()},
        vocabulary=top.get("vocabulary", _vocabulary,
                           "an object class -> {kind: [words]}", default={}),
        videos=videos)


def _video(path: str, m: Any, i: int, rows: int, n_classes: int) -> PackedVideo:
    r = _Reader(path, m, f"videos[{i}]")
    name = r.get("name", lambda v: isinstance(v, str) and v != "", "a non-empty string")
    r.key = f"videos[{i}] ({shown(name)})"
    offset, length = r.int("offset"), r.int("length")
    if offset + length > rows:
        r.fail(f"spans rows {offset}..{offset + length}, beyond the {rows} rows of the index")
    labels = r.get("labels", lambda v: isinstance(v, list) and all(
        _is_int(x) and 0 <= x < n_classes for x in v), f"a list of class indices < {n_classes}")
    segments = r.get("segments", lambda v: isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 3 and _is_real(s[0]) and _is_real(s[1])
        and _is_int(s[2]) and 0 <= s[2] < n_classes for s in v),
        f"a list of [start, end, class index < {n_classes}]")
    for j, (s, e, _) in enumerate(segments):
        problem = segment_problem(s, e)
        if problem:
            r.fail(f"= {shown([s, e])} {problem}", f"{r.key}.segments[{j}]")
    return PackedVideo(
        name=name, subset=r.text("subset"), offset=offset, length=length,
        labels=tuple(int(x) for x in labels),
        segments=tuple((float(s), float(e), int(c)) for s, e, c in segments),
        duration=r.number("duration", positive=False), fps=r.number("fps", positive=True))


def _check_rows(top: _Reader, videos: list[PackedVideo]) -> None:
    """Each row of the feature file belongs to at most one video; names are unique."""
    seen: dict[str, int] = {}
    for i, v in enumerate(videos):
        if v.name in seen:
            top.fail(f"name the same video {shown(v.name)}", f"videos[{seen[v.name]}] and "
                     f"videos[{i}]")
        seen[v.name] = i
    spans = sorted((v.offset, v.offset + v.length, i) for i, v in enumerate(videos) if v.length)
    reach, owner = 0, -1  # the furthest row reached so far, and by which video
    for start, end, i in spans:
        if start < reach:
            a, b = sorted((owner, i))
            top.fail(f"share rows {start}..{min(reach, end)} of the feature file (videos "
                     f"{shown(videos[a].name)} and {shown(videos[b].name)}); each video owns "
                     "its own rows", f"videos[{a}] and videos[{b}]")
        reach, owner = end, i
