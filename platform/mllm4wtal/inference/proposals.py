"""From snippet scores to temporal action proposals in seconds.

The recipe of the attention-MIL code bases (W-TALC, CO2-Net, DELU):
1. video-level class scores: softmax over classes of the top-k mean of the CAS
   (k = max(1, T // topk_divisor)); classes scoring >= ``class_threshold`` are localised,
   the arg-max class if none is;
2. for each such class and each threshold in ``act_thresholds``: the contiguous runs of
   snippets whose actionness reaches the threshold;
3. each run is scored by the outer-inner contrast of the class sequence (mean inside minus
   mean of the ``outer_ratio`` margins on both sides) plus ``video_score_weight`` times the
   video-level score of the class;
4. per-class Gaussian soft-NMS removes the duplicates the threshold sweep creates;
5. snippet indices become seconds: t = snippet * frames_per_snippet / fps.

:func:`generate_proposals_many` does this for many videos at once, thresholds x classes x
videos in array operations (runs from the edges of padded masks, soft-NMS batched over
classes and videos), with the results of the per-video loop bit for bit: every float64 sum,
product and comparison is the loop's, in the loop's order (tests/proposals_reference.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mllm4wtal.inference.nms import soft_nms_groups
from mllm4wtal.inference.segments import Proposal


@dataclass(frozen=True)
class ProposalConfig:
    topk_divisor: int = 8
    class_threshold: float = 0.2
    act_thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.1, 0.925, 0.05), 3))
    outer_ratio: float = 0.25
    video_score_weight: float = 0.2
    nms_sigma: float = 0.3
    max_proposals: int = 100  # per video, after soft-NMS


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def video_level_scores(cas: np.ndarray, topk_divisor: int) -> np.ndarray:
    """Softmax over classes of the top-k temporal mean of ``cas`` (T, C) logits -> (C,)."""
    k = max(1, cas.shape[0] // topk_divisor)
    top = -np.sort(-cas, axis=0)[:k]
    return _softmax(top.mean(0))


def select_classes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of classes with score >= threshold, else the arg-max class."""
    chosen = np.nonzero(scores >= threshold)[0]
    return chosen if len(chosen) else np.array([int(np.argmax(scores))])


def find_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) of every run of True in each row of a 2D boolean array, runs
    [start, end) in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=bool)
    padded[:, 1:-1] = mask
    row, start = np.nonzero(padded[:, 1:] > padded[:, :-1])
    _, end = np.nonzero(padded[:, :-1] > padded[:, 1:])
    return row, start, end


def contiguous_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1D boolean array."""
    _, start, end = find_runs(np.asarray(mask, dtype=bool)[None, :])
    return list(zip(start.tolist(), end.tolist(), strict=True))


def window_means(values: np.ndarray, first: np.ndarray, count: np.ndarray,
                 second: np.ndarray | None = None, second_count: np.ndarray | None = None
                 ) -> np.ndarray:
    """Per window r: the mean of ``values[first[r]:first[r] + count[r]]``, followed by
    ``values[second[r]:second[r] + second_count[r]]`` when given (at least one value).

    Summed by numpy in the order ``window.mean()`` sums a 1D array: the windows of one length
    are gathered into a matrix and reduced along its rows, so the float64 results are those
    of the one-window code."""
    total = count if second_count is None else count + second_count
    out = np.empty(len(total), dtype=np.float64)
    order = np.argsort(total, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(total[order])) + 1):
        if not len(rows):
            continue
        col = np.arange(total[rows[0]])
        index = first[rows, None] + col
        if second is not None:
            index = np.where(col < count[rows, None], index,
                             second[rows, None] + col - count[rows, None])
        out[rows] = values[index].mean(axis=1)
    return out


def outer_inner_scores(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, start: np.ndarray,
                       end: np.ndarray, outer_ratio: float) -> np.ndarray:
    """:func:`outer_inner_score` of many runs at once: run r is ``values[start[r]:end[r]]``
    of the sequence ``values[lo[r]:hi[r]]`` (absolute indices into ``values``)."""
    length = end - start
    margin = np.maximum(1, (length * outer_ratio).astype(np.int64))
    left = np.minimum(margin, start - lo)
    right = np.minimum(margin, hi - end)
    inner = window_means(values, start, length)
    outer = np.zeros(len(length))
    has = left + right > 0
    outer[has] = window_means(values, (start - left)[has], left[has], end[has], right[has])
    return inner - outer


def outer_inner_score(sequence: np.ndarray, start: int, end: int, outer_ratio: float) -> float:
    """Mean of ``sequence[start:end]`` minus the mean of the margins of
    max(1, int(len * outer_ratio)) snippets on both sides (clipped to the video)."""
    one = np.array([0])
    return float(outer_inner_scores(np.asarray(sequence), one, one + len(sequence),
                                    one + start, one + end, outer_ratio)[0])


@dataclass(frozen=True)
class SnippetScores:
    """What :func:`generate_proposals` takes of one video (see there)."""

    cas: np.ndarray
    actionness: np.ndarray
    fps: float
    duration: float | None = None
    video_scores: np.ndarray | None = None


def generate_proposals(cas: np.ndarray, actionness: np.ndarray, fps: float,
                       config: ProposalConfig, frames_per_snippet: int = 16,
                       duration: float | None = None,
                       video_scores: np.ndarray | None = None) -> list[Proposal]:
    """Proposals of one video.

    cas (T, C): class logits (background column excluded); actionness (T,) shared by all
    classes, or (T, C) one sequence per class, in [0, 1]. ``video_scores`` (C,) overrides
    the top-k softmax scores (e.g. sigmoid scores of a multi-label head).
    """
    video = SnippetScores(cas, actionness, fps, duration, video_scores)
    return next(generate_proposals_many([video], config, frames_per_snippet))


CHUNK_SNIPPETS = 1 << 20  # class sequences proposed at once, in snippets (bounds memory)


@dataclass(frozen=True)
class VideoProposals:
    """The proposals of one video as arrays, in the order :func:`generate_proposals` lists
    them: class indices (int64), start and end in seconds and scores (float64)."""

    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def to_list(self) -> list[Proposal]:
        return list(map(Proposal, self.label.tolist(), self.start.tolist(), self.end.tolist(),
                        self.score.tolist()))

    def keep(self, which: np.ndarray) -> VideoProposals:
        return VideoProposals(self.label[which], self.start[which], self.end[which],
                              self.score[which])


def generate_proposals_many(videos: Iterable[SnippetScores], config: ProposalConfig,
                            frames_per_snippet: int = 16) -> Iterator[list[Proposal]]:
    """:func:`generate_proposals` of each video, in order (the same proposals): the
    thresholds x selected classes x videos of a chunk of videos in array operations.

    ``videos`` is read lazily, a chunk of about ``CHUNK_SNIPPETS`` snippets of selected
    classes at a time, so it may be a generator (e.g. over the batches of a model)."""
    for video in generate_proposal_arrays(videos, config, frames_per_snippet):
        yield video.to_list()


def generate_proposal_arrays(videos: Iterable[SnippetScores], config: ProposalConfig,
                             frames_per_snippet: int = 16) -> Iterator[VideoProposals]:
    """:func:`generate_proposals_many` as arrays per video (no Proposal objects)."""
    chunk: list[_Prepared] = []
    size = 0
    for video in videos:
        prepared = _prepare(video, config)
        if chunk and size + prepared.snippets > CHUNK_SNIPPETS:
            yield from _propose(chunk, config, frames_per_snippet)
            chunk, size = [], 0
        chunk.append(prepared)
        size += prepared.snippets
    if chunk:
        yield from _propose(chunk, config, frames_per_snippet)


@dataclass(frozen=True)
class _Prepared:
    """One video checked: its selected classes, their threshold sequences and the sequences
    their runs are scored on, one row per class followed by a separator."""

    fps: float
    duration: float | None
    classes: np.ndarray
    weighted_scores: np.ndarray  # video_score_weight * video score, per selected class
    thresholded: np.ndarray  # (classes, T + 1), -inf separator last
    scored: np.ndarray  # (classes, T + 1)

    @property
    def snippets(self) -> int:
        return self.thresholded.size


def _prepare(video: SnippetScores, config: ProposalConfig) -> _Prepared:
    cas = np.asarray(video.cas, dtype=np.float64)
    act = np.asarray(video.actionness, dtype=np.float64)
    fps = video.fps
    if cas.ndim != 2:
        raise ValueError(f"cas must be (T, C), got shape {cas.shape}")
    if act.shape not in ((cas.shape[0],), cas.shape):
        raise ValueError(f"actionness must be (T,) or (T, C) matching cas {cas.shape}, "
                         f"got {act.shape}")
    if not (np.isfinite(cas).all() and np.isfinite(act).all()):
        raise ValueError("cas / actionness contain NaN or inf")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    scores = (video_level_scores(cas, config.topk_divisor) if video.video_scores is None
              else np.asarray(video.video_scores, dtype=np.float64))
    peak = cas.max(1, keepdims=True)
    classes = select_classes(scores, config.class_threshold)
    t = cas.shape[0]
    thresholded = np.full((len(classes), t + 1), -np.inf)
    scored = np.zeros((len(classes), t + 1))
    if act.ndim == 1:
        probs = np.exp(cas - peak)
        probs /= probs.sum(1, keepdims=True)
        thresholded[:, :t] = act
        scored[:, :t] = probs[:, classes].T
    else:
        thresholded[:, :t] = scored[:, :t] = act[:, classes].T
    return _Prepared(fps, video.duration, classes, config.video_score_weight * scores[classes],
                     thresholded, scored)


def _propose(videos: list[_Prepared], config: ProposalConfig, frames_per_snippet: int
             ) -> list[VideoProposals]:
    """Runs of every threshold in every class sequence, scored, in seconds, soft-NMS per
    class, sorted per video: the loop of the one-video recipe, as array operations."""
    # one row per (video, selected class): its sequences laid end to end, separators between
    n_classes = np.array([len(v.classes) for v in videos])
    video_of = np.repeat(np.arange(len(videos)), n_classes)
    label = np.concatenate([v.classes for v in videos])
    weighted = np.concatenate([v.weighted_scores for v in videos])
    lengths = np.concatenate([np.full(len(v.classes), v.thresholded.shape[1] - 1)
                              for v in videos])
    thresholded = np.concatenate([v.thresholded.ravel() for v in videos])
    scored = np.concatenate([v.scored.ravel() for v in videos])
    first = np.cumsum(lengths + 1) - (lengths + 1)
    # runs, ordered as the loop finds them: by class row, threshold, start
    thresholds = np.asarray(config.act_thresholds, dtype=np.float64)
    level, start, end = find_runs(thresholded[None, :] >= thresholds[:, None])
    row = np.searchsorted(first, start, "right") - 1
    order = np.argsort(row * len(thresholds) + level, kind="stable")
    row, start, end = row[order], start[order], end[order]
    score = (outer_inner_scores(scored, first[row], first[row] + lengths[row], start, end,
                                config.outer_ratio) + weighted[row])
    to_sec = np.array([frames_per_snippet / v.fps for v in videos],
                      dtype=np.float64)[video_of[row]]
    t0, t1 = (start - first[row]) * to_sec, (end - first[row]) * to_sec
    duration = np.array([np.nan if v.duration is None else v.duration for v in videos],
                        dtype=np.float64)[video_of[row]]
    # min(t, duration) as Python takes it: t unless duration < t (never for NaN: no duration)
    t0, t1 = np.where(duration < t0, duration, t0), np.where(duration < t1, duration, t1)
    keep = t1 > t0
    row, t0, t1, score = row[keep], t0[keep], t1[keep], score[keep]
    kept, kept_score = soft_nms_groups(t0, t1, score, np.bincount(row, minlength=len(label)),
                                       config.nms_sigma)
    # per video: all its classes' survivors by decreasing score (ties: class, then order kept)
    video = video_of[row[kept]]
    by_score = np.argsort(-kept_score, kind="stable")
    order = by_score[np.argsort(video[by_score], kind="stable")]
    kept, kept_score, video = kept[order], kept_score[order], video[order]
    bounds = np.searchsorted(video, np.arange(len(videos) + 1))
    label, t0, t1 = label[row[kept]], t0[kept], t1[kept]
    out = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        lo, hi, _ = slice(None, config.max_proposals).indices(b - a)
        part = slice(a + lo, a + max(lo, hi))
        out.append(VideoProposals(label[part], t0[part], t1[part], kept_score[part]))
    return out


def remove_ambiguous(proposals: list[Proposal], ambiguous: list[tuple[float, float]]
                     ) -> list[Proposal]:
    """Drop proposals that overlap a THUMOS14 ambiguous segment (``Ambiguous_test.txt``)."""
    if not ambiguous:
        return proposals
    start = np.array([p.start for p in proposals], dtype=np.float64)
    end = np.array([p.end for p in proposals], dtype=np.float64)
    clear = ~overlaps_ambiguous(start, end, ambiguous)
    return [p for p, keep in zip(proposals, clear.tolist(), strict=True) if keep]


def overlaps_ambiguous(start: np.ndarray, end: np.ndarray,
                       ambiguous: list[tuple[float, float]]) -> np.ndarray:
    """Per segment: whether it overlaps (positive intersection) an ambiguous segment."""
    amb = np.asarray(ambiguous, dtype=np.float64).reshape(-1, 2)
    inter = np.minimum(end[:, None], amb[:, 1]) - np.maximum(start[:, None], amb[:, 0])
    return (inter > 0).any(axis=1)


def results_json(per_video: dict[str, list[Proposal]], classes: list[str],
                 version: str = "mllm4wtal") -> dict:
    """ActivityNet results format: {"version", "results": {video: [...]}, "external_data"}."""
    return {
        "version": version,
        "results": {v: [{"label": classes[p.label], "segment": [p.start, p.end],
                         "score": p.score} for p in props]
                    for v, props in per_video.items()},
        "external_data": {},
    }


def results_json_arrays(per_video: dict[str, VideoProposals], classes: list[str],
                        version: str = "mllm4wtal") -> dict:
    """:func:`results_json` of proposals held as arrays (the same dict)."""
    results = {}
    for v, props in per_video.items():
        names = [classes[c] for c in props.label.tolist()]
        results[v] = [{"label": n, "segment": [a, b], "score": s} for n, a, b, s in
                      zip(names, props.start.tolist(), props.end.tolist(),
                          props.score.tolist(), strict=True)]
    return {"version": version, "results": results, "external_data": {}}
