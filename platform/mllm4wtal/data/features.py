"""Per-video feature directories and the packed memory-mapped format.

Per-video layout (BaSNet / UM style)::

    <root>/<split>/rgb/<video>.npy     (T, D_rgb) float
    <root>/<split>/flow/<video>.npy    (T, D_flow) float

with annotations from a W-TALC ``<name>-Annotations`` directory or an ActivityNet-style JSON
ground truth (``{"database": {video: {"subset", "duration"?, "annotations": [...]}}}``).

Packed layout (this project's own; no pickle anywhere)::

    <dir>/features.f16   raw little-endian float16 matrix (sum T_i, D), videos concatenated
    <dir>/index.json     classes, subsets, per-video offset/length/labels/segments, ...
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal import files

from ..config.show import shown
from .packed_index import PACKED_FORMAT, PACKED_VERSION, read_index
from .types import Segment, Video, WTALDataset
from .validate import DataError, label_index, validate_dataset
from .wtal_format import (
    Annotations,
    build_dataset,
    infer_subsets,
    read_annotation_dir,
    read_npy,
)

__all__ = [
    "PACKED_FORMAT",
    "PACKED_VERSION",
    "read_json_gt",
    "load_per_video",
    "pack",
    "load_packed",
]

FEATURES_FILE = "features.f16"
INDEX_FILE = "index.json"
_F16 = np.dtype("<f2")
# rgb and flow streams decoded separately can differ by a snippet or two at the end
_STREAM_LENGTH_SLACK = 2


def read_json_gt(path: str | os.PathLike[str], classes: list[str] | None = None) -> Annotations:
    """Read an ActivityNet-style JSON ground truth.

    Classes come from ``classes``, else the file's ``"class-list"``, else the sorted set of
    labels. Segments may be numbers or numeric strings; ``duration`` may be absent (then it
    is derived from the number of snippets).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: ground-truth JSON not found. Fix: check the annotations path.")
    try:
        gt = json.loads(p.read_text(encoding="utf-8"))
        db: dict[str, Any] = gt["database"] if "database" in gt else gt
        if classes is None:
            classes = list(gt.get("class-list") or sorted(
                {a["label"] for v in db.values() for a in v.get("annotations", [])}))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise DataError(
            f"{p}: not an ActivityNet-style ground truth ({shown(exc)}). Fix: provide "
            '{"database": {video: {"subset": ..., "annotations": [{"segment": [s, e], '
            '"label": ...}]}}}.'
        ) from exc
    if not isinstance(db, dict):
        raise DataError(f"{p}: 'database' must map video -> entry, got {shown(db)}. Fix: "
                        'provide {"database": {video: {"subset": ..., "annotations": [...]}}}.')
    names, subsets, labels, segments, durations = [], [], [], [], []
    for vname, entry in db.items():
        segs = []
        for i, a in enumerate(_annotations(p, vname, entry)):
            try:
                start, end = float(a["segment"][0]), float(a["segment"][1])
                label = a["label"]
            except (KeyError, IndexError, TypeError, ValueError, OverflowError):
                raise DataError(f"{p}: database[{shown(vname)}]['annotations'][{i}] = "
                                f"{shown(a)} needs 'label' and 'segment' [start, end] in "
                                "seconds. Fix: correct that annotation.") from None
            idx = label_index(label, classes, video=vname, source=str(p))
            segs.append(Segment(start, end, idx))
        names.append(vname)
        subsets.append(str(entry.get("subset", "")))
        labels.append(tuple(sorted({s.label for s in segs})))
        segments.append(tuple(segs))
        durations.append(_duration(p, vname, entry.get("duration")))
    return Annotations(str(p), names, subsets, list(classes), labels, segments, durations)


def _annotations(p: Path, video: str, entry: Any) -> list:
    anns = entry.get("annotations", []) if isinstance(entry, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{p}: database[{shown(video)}] must be an object with a list "
                        "'annotations' (empty for a video without actions). Fix: correct it.")
    return anns


def _duration(p: Path, video: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        dur = float(value)
    except (TypeError, ValueError, OverflowError):
        dur = math.nan
    if not (math.isfinite(dur) and dur >= 0):
        raise DataError(f"{p}: database[{shown(video)}]['duration'] = {shown(value)} is not a "
                        "duration in seconds. Fix: correct it or leave it out.")
    return dur


def _read_annotations(annotations: str | os.PathLike[str], classes: list[str] | None
                      ) -> Annotations:
    a = Path(annotations)
    if a.is_dir():
        return read_annotation_dir(a)
    if a.suffix.lower() == ".json":
        return read_json_gt(a, classes)
    raise DataError(
        f"{a}: annotations must be a '<name>-Annotations' directory or a .json ground truth. "
        "Fix: pass annotations=<that path>."
    )


def load_per_video(
    root: str | os.PathLike[str],
    name: str | None = None,
    *,
    annotations: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
    split_dirs: Mapping[str, str] | None = None,
    missing: str = "error",
    fps: float = 25.0,
    frames_per_snippet: int = 16,
    expected_dim: int | None = None,
    train_subset: str | None = None,
    test_subset: str | None = None,
    strict_segments: bool = False,
) -> WTALDataset:
    """Load ``<root>/<split>/{rgb,flow}/<video>.npy`` features with their annotations.

    Args:
        root: feature root.
        name: dataset name (default: the root's directory name).
        annotations: a ``<name>-Annotations`` dir or a JSON ground truth; default
            ``<root>/<name>-Annotations`` then ``<root>/gt.json``.
        classes: class list for a JSON ground truth without ``"class-list"``.
        split_dirs: annotation subset -> directory under root. Default: the subset name
            itself if that directory exists, else ``train`` for the train subset and ``test``
            for the test subset.
        missing: ``"error"`` (default) or ``"skip"`` videos whose feature files are absent
            (full annotation sets list more videos than a reduced feature set has).
        expected_dim: required RGB+flow width, if given.

    rgb_dim is the width of the rgb files. Raises :class:`DataError` on any problem.
    """
    root = Path(root)
    name = name or root.name
    if annotations is None:
        candidates = [root / f"{name}-Annotations", root / "gt.json"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DataError(
                f"per-video dataset {root}: no annotations; expected one of "
                f"{', '.join(map(str, candidates))}. Fix: pass annotations=<path>."
            )
        annotations = found
    ann = _read_annotations(annotations, classes)
    train, test = infer_subsets_for(ann, train_subset, test_subset)

    def split_dir(subset: str) -> Path:
        if split_dirs and subset in split_dirs:
            return root / split_dirs[subset]
        if (root / subset).is_dir():
            return root / subset
        return root / ("train" if subset == train else "test")

    keep: list[int] = []
    feats: list[np.ndarray] = []
    rgb_dim: int | None = None
    for i, (vname, subset) in enumerate(zip(ann.names, ann.subsets, strict=True)):
        d = split_dir(subset)
        rgb_p, flow_p = d / "rgb" / f"{vname}.npy", d / "flow" / f"{vname}.npy"
        if not (rgb_p.is_file() and flow_p.is_file()):
            if missing == "skip":
                continue
            raise DataError(
                f"per-video dataset {root}: missing {rgb_p if not rgb_p.is_file() else flow_p} "
                f"(video '{vname}', subset '{subset}'). Expected {d}/rgb/<video>.npy and "
                f"{d}/flow/<video>.npy for every annotated video. Fix: extract them, pass "
                "split_dirs=, or missing='skip'."
            )
        rgb, flow = read_npy(rgb_p), read_npy(flow_p)
        if rgb.ndim != 2 or flow.ndim != 2:
            raise DataError(
                f"{rgb_p if rgb.ndim != 2 else flow_p}: shape "
                f"{rgb.shape if rgb.ndim != 2 else flow.shape}, expected (snippets, width). "
                "Fix: save one 2-D array per stream."
            )
        if abs(len(rgb) - len(flow)) > _STREAM_LENGTH_SLACK:
            raise DataError(
                f"{flow_p}: {len(flow)} snippets but {rgb_p} has {len(rgb)}. Fix: extract "
                "both streams with the same snippet length and stride."
            )
        t = min(len(rgb), len(flow))
        rgb_dim = rgb_dim if rgb_dim is not None else int(rgb.shape[1])
        feats.append(np.concatenate([rgb[:t], flow[:t]], axis=1).astype(np.float32, copy=False))
        keep.append(i)
    if len(keep) != len(ann.names):
        ann = Annotations(
            ann.source,
            [ann.names[i] for i in keep],
            [ann.subsets[i] for i in keep],
            ann.classes,
            [ann.labels[i] for i in keep],
            [ann.segments[i] for i in keep],
            [ann.durations[i] for i in keep],
            {k: v for k, v in ann.ambiguous.items() if k in {ann.names[i] for i in keep}},
        )
    if not keep:
        raise DataError(f"per-video dataset {root}: no video has both rgb and flow features.")
    return build_dataset(
        ann,
        feats,
        name=name,
        feature_source=str(root),
        fps=fps,
        frames_per_snippet=frames_per_snippet,
        rgb_dim=rgb_dim,
        expected_dim=expected_dim,
        train_subset=train,
        test_subset=test,
        strict_segments=strict_segments,
    )


def infer_subsets_for(ann: Annotations, train: str | None, test: str | None) -> tuple[str, str]:
    """:func:`~mllm4wtal.data.wtal_format.infer_subsets` on an :class:`Annotations`."""
    return infer_subsets(ann.subsets, train, test, source=ann.source)


# --------------------------------------------------------------------------- packed format


def pack(dataset: WTALDataset, out_dir: str | os.PathLike[str], *, force: bool = True) -> Path:
    """Write ``dataset`` as ``features.f16`` + ``index.json`` under ``out_dir``.

    The dataset is validated first (including the NaN/inf scan, which the loader skips);
    values outside the float16 range are refused rather than silently turned into inf.
    Written through ``mllm4wtal.files.replacing_dir`` (a temporary folder renamed into
    place), so a crash leaves no half-written dataset. An ``out_dir`` holding files is
    refused unless ``force`` (``data pack --force``; then its two files are replaced, others
    kept). Returns ``out_dir``.
    """
    validate_dataset(dataset, source=f"dataset '{dataset.name}'")
    out = Path(out_dir)
    with files.replacing_dir(out, force=force) as tmp:
        _pack_into(dataset, tmp)
    return out


def _pack_into(dataset: WTALDataset, out: Path) -> None:
    dim = dataset.feature_dim
    rows = sum(v.num_snippets for v in dataset.videos)
    tmp_feat, tmp_index = out / (FEATURES_FILE + ".tmp"), out / (INDEX_FILE + ".tmp")
    videos_meta = []
    offset = 0
    if rows:
        mm = np.memmap(tmp_feat, dtype=_F16, mode="w+", shape=(rows, dim))
        for v in dataset.videos:
            t = v.num_snippets
            with np.errstate(over="ignore"):  # overflow is reported below, as a DataError
                block = np.asarray(v.features, dtype=np.float32).astype(_F16)
            if not np.isfinite(block).all():
                raise DataError(
                    f"dataset '{dataset.name}': video '{v.name}' has features outside the "
                    "float16 range (|x| > 65504). Fix: normalise the features before packing."
                )
            mm[offset:offset + t] = block
            videos_meta.append(_video_meta(v, offset))
            offset += t
        mm.flush()
        del mm
    else:
        tmp_feat.write_bytes(b"")
        videos_meta = [_video_meta(v, 0) for v in dataset.videos]
    index = {
        "format": PACKED_FORMAT,
        "version": PACKED_VERSION,
        "name": dataset.name,
        "dtype": "float16",
        "byteorder": "little",
        "rows": rows,
        "dim": dim,
        "rgb_dim": dataset.rgb_dim,
        "frames_per_snippet": dataset.frames_per_snippet,
        "classes": list(dataset.classes),
        "train_subset": dataset.train_subset,
        "test_subset": dataset.test_subset,
        "subsets": sorted({v.subset for v in dataset.videos}),
        "ambiguous": {k: [list(s) for s in v] for k, v in dataset.ambiguous.items()},
        "vocabulary": dataset.vocabulary,
        "videos": videos_meta,
    }
    tmp_index.write_text(json.dumps(index), encoding="utf-8")
    os.replace(tmp_feat, out / FEATURES_FILE)
    os.replace(tmp_index, out / INDEX_FILE)


def _video_meta(v: Video, offset: int) -> dict[str, Any]:
    return {
        "name": v.name,
        "subset": v.subset,
        "offset": offset,
        "length": v.num_snippets,
        "labels": list(v.labels),
        "segments": [[s.start, s.end, s.label] for s in v.segments],
        "duration": v.duration,
        "fps": v.fps,
    }


def load_packed(
    path: str | os.PathLike[str],
    *,
    check_finite: bool = False,
    expected_dim: int | None = None,
    strict_segments: bool = False,
) -> WTALDataset:
    """Load a packed dataset; ``Video.features`` are read-only float16 memmap views.

    Nothing is copied or scanned by default, so loading takes milliseconds;
    ``check_finite=True`` re-runs the NaN/inf scan (reads every feature).
    """
    d = Path(path)
    idx_p, feat_p = d / INDEX_FILE, d / FEATURES_FILE
    missing = [p for p in (idx_p, feat_p) if not p.is_file()]
    if missing:
        raise DataError(
            f"packed dataset {d}: missing {', '.join(map(str, missing))}. Expected "
            f"{FEATURES_FILE} and {INDEX_FILE} (written by mllm4wtal.data.pack). Fix: check "
            "the path or re-run pack."
        )
    index = read_index(idx_p)  # every key checked: the schema is in packed_index
    rows, dim = index.rows, index.dim
    size = feat_p.stat().st_size
    if size != rows * dim * _F16.itemsize:
        raise DataError(
            f"{feat_p}: {size} bytes, expected {rows} x {dim} float16 = "
            f"{rows * dim * _F16.itemsize} bytes per {idx_p}. Fix: the two files are from "
            "different packs or truncated; re-run pack."
        )
    mm = (np.memmap(feat_p, dtype=_F16, mode="r", shape=(rows, dim)) if rows
          else np.zeros((0, dim), dtype=_F16))
    videos = [Video(name=m.name, subset=m.subset, features=mm[m.offset:m.offset + m.length],
                    labels=m.labels, segments=tuple(Segment(*s) for s in m.segments),
                    duration=m.duration, fps=m.fps) for m in index.videos]
    ds = WTALDataset(
        name=index.name,
        classes=index.classes,
        videos=videos,
        train_subset=index.train_subset,
        test_subset=index.test_subset,
        rgb_dim=index.rgb_dim,
        frames_per_snippet=index.frames_per_snippet,
        ambiguous=index.ambiguous,
        vocabulary=index.vocabulary,
    )
    return validate_dataset(ds, source=str(d), expected_dim=expected_dim, finite=check_finite,
                            strict_segments=strict_segments)
