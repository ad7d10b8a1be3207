"""The W-TALC / CO2-Net dataset layout.

::

    <root>/<name>-I3D-JOINTFeatures.npy        object array, one (T_i, D) array per video
    <root>/<name>-Annotations/videoname.npy    |S names, same order as the features
                               subset.npy       |S subset of each video
                               classlist.npy    |S class names
                               segments.npy     object: per video a list of [start, end] s
                               labels.npy       object: per video the label of each segment
                               labels_all.npy   object: per video its video-level labels
                               duration.npy     float seconds, (N,) or (N, 1)
                               Ambiguous_test.txt  optional, "video start end" lines

Everything is read with :func:`~mllm4wtal.data.unpickle.load_npy` (no arbitrary pickles).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mllm4wtal import files

from .types import Segment, Video, WTALDataset
from .unpickle import decode_strings, load_npy
from .validate import (
    DataError,
    check_count,
    label_index,
    require_files,
    validate_dataset,
)

__all__ = [
    "ANNOTATION_FILES",
    "Annotations",
    "read_annotation_dir",
    "read_ambiguous",
    "infer_subsets",
    "build_dataset",
    "load_wtal",
    "save_wtal",
]

ANNOTATION_FILES = (
    "videoname.npy",
    "subset.npy",
    "classlist.npy",
    "segments.npy",
    "labels.npy",
    "labels_all.npy",
    "duration.npy",
)
AMBIGUOUS_FILE = "Ambiguous_test.txt"

# (train, test) subset names of the known benchmarks, tried in order
_KNOWN_SPLITS = (
    ("validation", "test"),  # THUMOS14: train on validation, test on test
    ("training", "validation"),  # ActivityNet: test on validation
    ("train", "test"),
    ("training", "testing"),
)


@dataclass
class Annotations:
    """Per-video annotations in file order, label *names* already mapped to indices."""

    source: str
    names: list[str]
    subsets: list[str]
    classes: list[str]
    labels: list[tuple[int, ...]]
    segments: list[tuple[Segment, ...]]
    durations: list[float | None]  # None: unknown, derived from the features
    ambiguous: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _as_list(item: object) -> list:
    """Per-video entries of object arrays: list, tuple, ndarray or a lone scalar."""
    if item is None:
        return []
    if isinstance(item, np.ndarray):
        return item.tolist()
    if isinstance(item, list | tuple):
        return list(item)
    return [item]


def _as_str(item: object) -> str:
    return bytes(item).decode("utf-8") if isinstance(item, bytes | np.bytes_) else str(item)


def read_ambiguous(path: str | os.PathLike[str]) -> dict[str, list[tuple[float, float]]]:
    """Parse ``Ambiguous_test.txt`` ("video start end" per line, whitespace separated)."""
    out: dict[str, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                name, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                raise DataError(
                    f"{path}:{lineno}: expected 'video start end', got {line.strip()!r}. "
                    "Fix: correct or remove the line."
                ) from None
            out.setdefault(name, []).append((start, end))
    return out


def read_npy(path: Path) -> np.ndarray:
    """:func:`~mllm4wtal.data.unpickle.load_npy`, a file cut short (a copy that did not
    finish) reported as such."""
    try:
        return load_npy(path)
    except DataError:
        raise
    except ValueError as e:  # numpy: "Failed to read all data for array ..."
        raise DataError(f"{path}: cannot be read as a numpy array ({str(e).splitlines()[0]}). "
                        "Fix: the file is truncated or damaged; copy or save it again.") from None


def _pairs(items: list, path: Path, video: str) -> list[tuple[float, float]]:
    """Per-video segments as ``(start, end)`` floats; anything else names the video."""
    try:
        return [(float(start), float(end)) for start, end in items]
    except (TypeError, ValueError):
        raise DataError(f"{path}: video '{video}' has segments {str(items)[:80]}, not [start, "
                        "end] pairs in seconds. Fix: store one [start, end] per segment.") from None


def read_annotation_dir(ann_dir: str | os.PathLike[str]) -> Annotations:
    """Read a ``<name>-Annotations`` directory (see module docstring)."""
    d = Path(ann_dir)
    require_files(d, ANNOTATION_FILES, what=f"annotations {d}")
    arrays = {f: read_npy(d / f) for f in ANNOTATION_FILES}
    names = decode_strings(arrays["videoname.npy"])
    subsets = decode_strings(arrays["subset.npy"])
    classes = decode_strings(arrays["classlist.npy"])
    try:
        durations = np.asarray(arrays["duration.npy"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{d / 'duration.npy'}: holds {arrays['duration.npy'].dtype} values, "
                        "not durations in seconds. Fix: save one float per video.") from None
    n = len(names)
    for f in ("subset.npy", "segments.npy", "labels.npy", "labels_all.npy", "duration.npy"):
        got = len(subsets) if f == "subset.npy" else (
            len(durations) if f == "duration.npy" else len(arrays[f])
        )
        if got != n:
            raise DataError(
                f"{d / f}: has {got} entries but {d / 'videoname.npy'} lists {n} videos. "
                "Fix: all annotation files must come from the same dataset version."
            )
    labels: list[tuple[int, ...]] = []
    segments: list[tuple[Segment, ...]] = []
    for i, name in enumerate(names):
        seg_list = _as_list(arrays["segments.npy"][i])
        seg_labels = [_as_str(x) for x in _as_list(arrays["labels.npy"][i])]
        if len(seg_list) != len(seg_labels):
            raise DataError(
                f"{d / 'labels.npy'}: video '{name}' has {len(seg_labels)} segment labels but "
                f"{d / 'segments.npy'} has {len(seg_list)} segments. Fix: one label per segment."
            )
        segs = []
        for (start, end), lab in zip(_pairs(seg_list, d / "segments.npy", name), seg_labels,
                                     strict=True):
            idx = label_index(lab, classes, video=name, source=str(d / "labels.npy"))
            segs.append(Segment(start, end, idx))
        # video labels are labels_all as published (CO2-Net trains on them), even where
        # they differ from the segment labels
        vid_labels = {
            label_index(_as_str(x), classes, video=name, source=str(d / "labels_all.npy"))
            for x in _as_list(arrays["labels_all.npy"][i])
        }
        labels.append(tuple(sorted(vid_labels)))
        segments.append(tuple(segs))
    amb_path = d / AMBIGUOUS_FILE
    ambiguous = read_ambiguous(amb_path) if amb_path.is_file() else {}
    return Annotations(
        source=str(d),
        names=names,
        subsets=subsets,
        classes=classes,
        labels=labels,
        segments=segments,
        durations=[float(x) for x in durations],
        ambiguous=ambiguous,
    )


def infer_subsets(
    subsets: Sequence[str],
    train_subset: str | None = None,
    test_subset: str | None = None,
    *,
    source: str = "annotations",
) -> tuple[str, str]:
    """The (train, test) subset names, inferred from the names present unless given.

    Matching is case-insensitive (ActionFormer JSONs write "Validation"); the returned
    names are spelled as in the data.
    """
    present = {s.lower(): s for s in subsets}
    if train_subset is not None and test_subset is not None:
        return train_subset, test_subset
    for tr, te in _KNOWN_SPLITS:
        if tr in present and te in present:
            return (train_subset or present[tr], test_subset or present[te])
    raise DataError(
        f"{source}: cannot infer train/test subsets from {sorted(set(subsets))}. "
        "Fix: pass train_subset= and test_subset=."
    )


def build_dataset(
    ann: Annotations,
    features: Sequence[np.ndarray],
    *,
    name: str,
    feature_source: str,
    fps: float,
    frames_per_snippet: int,
    rgb_dim: int | None,
    expected_dim: int | None,
    train_subset: str | None,
    test_subset: str | None,
    finite: bool = True,
    strict_segments: bool = False,
) -> WTALDataset:
    """Combine annotations and per-video features (same order) into a validated dataset."""
    src = Path(ann.source)
    check_count(len(features), len(ann.names), feature_file=feature_source,
                annotation_file=str(src / "videoname.npy") if src.is_dir() else ann.source)
    train, test = infer_subsets(ann.subsets, train_subset, test_subset, source=ann.source)
    videos = []
    for i, vname in enumerate(ann.names):
        feats = features[i]
        if feats.dtype != np.float32 and not isinstance(feats, np.memmap):
            feats = np.asarray(feats, dtype=np.float32)
        dur = ann.durations[i]
        if dur is None:  # unknown duration: the span the snippets cover
            dur = feats.shape[0] * frames_per_snippet / fps
        videos.append(
            Video(
                name=vname,
                subset=ann.subsets[i],
                features=feats,
                labels=ann.labels[i],
                segments=ann.segments[i],
                duration=float(dur),
                fps=float(fps),
            )
        )
    dim = int(videos[0].features.shape[1]) if videos and videos[0].features.ndim == 2 else 0
    ds = WTALDataset(
        name=name,
        classes=list(ann.classes),
        videos=videos,
        train_subset=train,
        test_subset=test,
        rgb_dim=int(rgb_dim) if rgb_dim is not None else dim // 2,
        frames_per_snippet=frames_per_snippet,
        ambiguous=dict(ann.ambiguous),
    )
    return validate_dataset(ds, source=feature_source, expected_dim=expected_dim, finite=finite,
                            strict_segments=strict_segments)


def feature_file(root: str | os.PathLike[str], name: str) -> Path:
    """``<root>/<name>-I3D-JOINTFeatures.npy``."""
    return Path(root) / f"{name}-I3D-JOINTFeatures.npy"


def annotation_dir(root: str | os.PathLike[str], name: str) -> Path:
    """``<root>/<name>-Annotations``."""
    return Path(root) / f"{name}-Annotations"


def load_wtal(
    root: str | os.PathLike[str],
    name: str,
    *,
    fps: float = 25.0,
    frames_per_snippet: int = 16,
    rgb_dim: int | None = None,
    expected_dim: int | None = None,
    train_subset: str | None = None,
    test_subset: str | None = None,
    strict_segments: bool = False,
) -> WTALDataset:
    """Load ``<root>/<name>-I3D-JOINTFeatures.npy`` + ``<root>/<name>-Annotations/``.

    Args:
        root: directory holding the feature file and the annotation directory.
        name: dataset prefix, e.g. ``"Thumos14reduced"`` or ``"ActivityNet1.2"``.
        fps: frame rate the features were extracted at (snippet -> seconds).
        frames_per_snippet: frames per feature snippet (16 for I3D).
        rgb_dim: width of the RGB block; default half the feature width.
        expected_dim: if given, every video's feature width must equal it.
        train_subset, test_subset: subset names; inferred (validation/test for THUMOS,
            training/validation for ActivityNet) when omitted.
        strict_segments: make segments starting after the video end an error instead of a
            :class:`~mllm4wtal.data.validate.DataWarning`.

    Raises:
        DataError: missing/malformed files (see :mod:`mllm4wtal.data.validate`).
    """
    feat_path = feature_file(root, name)
    ann_path = annotation_dir(root, name)
    if not feat_path.is_file() or not ann_path.is_dir():
        raise DataError(
            f"WTAL dataset '{name}' in {root}: expected {feat_path} and directory {ann_path}/ "
            f"with {', '.join(ANNOTATION_FILES)} (+ optional {AMBIGUOUS_FILE}); missing "
            f"{feat_path if not feat_path.is_file() else ann_path}. Fix: check root and name."
        )
    ann = read_annotation_dir(ann_path)
    raw = read_npy(feat_path)
    if raw.dtype == object:
        features = list(raw.reshape(-1))
    elif raw.ndim == 3:  # equal-length videos stored as one (N, T, D) array
        features = list(raw)
    else:
        raise DataError(
            f"{feat_path}: expected an object array of (T, D) arrays, got dtype {raw.dtype} "
            f"shape {raw.shape}. Fix: save one array per video (see save_wtal)."
        )
    for i, f in enumerate(features):
        if not isinstance(f, np.ndarray) or f.ndim != 2:
            vname = ann.names[i] if i < len(ann.names) else f"#{i}"
            shape = getattr(f, "shape", type(f).__name__)
            raise DataError(
                f"{feat_path}: entry {i} (video '{vname}') is {shape}, not a (snippets, width) "
                "array. Fix: store one 2-D array per video."
            )
    return build_dataset(
        ann,
        features,
        name=name,
        feature_source=str(feat_path),
        fps=fps,
        frames_per_snippet=frames_per_snippet,
        rgb_dim=rgb_dim,
        expected_dim=expected_dim,
        train_subset=train_subset,
        test_subset=test_subset,
        strict_segments=strict_segments,
    )


def _bytes_array(strings: Sequence[str]) -> np.ndarray:
    encoded = [s.encode("utf-8") for s in strings]
    return np.array(encoded, dtype=f"S{max((len(b) for b in encoded), default=1) or 1}")


def _object_array(items: Sequence[object]) -> np.ndarray:
    # filled element-wise: np.array(list_of_lists) would build a 2-D array instead
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


def save_wtal(dataset: WTALDataset, root: str | os.PathLike[str], name: str, *,
              force: bool = True) -> Path:
    """Write ``dataset`` in the W-TALC layout under ``root`` (see module docstring).

    Features are written as an object array (np.save pickles it; our reader restricts what
    the pickle may reference). The vocabulary is not part of this format and is dropped.
    Written through ``mllm4wtal.files.replacing_dir`` (a temporary folder renamed into
    place), so a crash leaves no half-written dataset. A ``root`` holding files is refused
    unless ``force`` (``data export --force``; then the feature file and annotation folder
    of ``name`` are replaced, other files kept). Returns the feature file path.
    """
    with files.replacing_dir(root, force=force) as tmp:
        _save_wtal_into(dataset, tmp, name)
    return feature_file(root, name)


def _save_wtal_into(dataset: WTALDataset, root: Path, name: str) -> None:
    ann = annotation_dir(root, name)
    ann.mkdir(parents=True, exist_ok=True)
    vids = dataset.videos
    cls = dataset.classes
    np.save(feature_file(root, name),
            _object_array([np.asarray(v.features, dtype=np.float32) for v in vids]))
    np.save(ann / "videoname.npy", _bytes_array([v.name for v in vids]))
    np.save(ann / "subset.npy", _bytes_array([v.subset for v in vids]))
    np.save(ann / "classlist.npy", _bytes_array(cls))
    np.save(ann / "segments.npy", _object_array([[[s.start, s.end] for s in v.segments]
                                                 for v in vids]))
    np.save(ann / "labels.npy", _object_array([[cls[s.label] for s in v.segments]
                                               for v in vids]))
    np.save(ann / "labels_all.npy", _object_array([[cls[i] for i in v.labels] for v in vids]))
    np.save(ann / "duration.npy", np.array([v.duration for v in vids], dtype=np.float64))
    if dataset.ambiguous:
        with open(ann / AMBIGUOUS_FILE, "w", encoding="utf-8") as fh:
            for vname, spans in dataset.ambiguous.items():
                for start, end in spans:
                    fh.write(f"{vname} {start!r} {end!r}\n")


def load_annotations_only(
    ann_dir: str | os.PathLike[str],
    name: str,
    *,
    train_subset: str | None = None,
    test_subset: str | None = None,
    fps: float = 25.0,
) -> WTALDataset:
    """The dataset of a ``<name>-Annotations`` directory without its features: names,
    subsets, labels, segments and durations; each video's features are an empty (0, 0)
    array. For jobs that need the labels only (``mllm4wtal describe``): THUMOS14's features
    are gigabytes. Not a dataset to train on (no features, so not feature-validated)."""
    ann = read_annotation_dir(ann_dir)
    train, test = infer_subsets(ann.subsets, train_subset, test_subset, source=ann.source)
    empty = np.zeros((0, 0), dtype=np.float32)
    videos = [
        Video(name=n, subset=s, features=empty, labels=lab, segments=seg,
              duration=float(d or 0.0), fps=float(fps))
        for n, s, lab, seg, d in zip(ann.names, ann.subsets, ann.labels, ann.segments,
                                     ann.durations, strict=True)
    ]
    return WTALDataset(name=name, classes=list(ann.classes), videos=videos, train_subset=train,
                       test_subset=test, rgb_dim=0, ambiguous=dict(ann.ambiguous))
