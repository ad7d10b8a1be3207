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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mllm4wtal.inference.nms import soft_nms
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


def contiguous_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1D boolean array."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def outer_inner_score(sequence: np.ndarray, start: int, end: int, outer_ratio: float) -> float:
    """Mean of ``sequence[start:end]`` minus the mean of the margins of
    max(1, int(len * outer_ratio)) snippets on both sides (clipped to the video)."""
    length = end - start
    margin = max(1, int(length * outer_ratio))
    inner = float(sequence[start:end].mean())
    outer = np.concatenate([sequence[max(0, start - margin):start],
                            sequence[end:min(len(sequence), end + margin)]])
    return inner - (float(outer.mean()) if len(outer) else 0.0)


def generate_proposals(cas: np.ndarray, actionness: np.ndarray, fps: float,
                       config: ProposalConfig, frames_per_snippet: int = 16,
                       duration: float | None = None,
                       video_scores: np.ndarray | None = None) -> list[Proposal]:
    """Proposals of one video.

    cas (T, C): class logits (background column excluded); actionness (T,) shared by all
    classes, or (T, C) one sequence per class, in [0, 1]. ``video_scores`` (C,) overrides
    the top-k softmax scores (e.g. sigmoid scores of a multi-label head).
    """
    cas = np.asarray(cas, dtype=np.float64)
    act = np.asarray(actionness, dtype=np.float64)
    if cas.ndim != 2:
        raise ValueError(f"cas must be (T, C), got shape {cas.shape}")
    if act.shape not in ((cas.shape[0],), cas.shape):
        raise ValueError(f"actionness must be (T,) or (T, C) matching cas {cas.shape}, "
                         f"got {act.shape}")
    if not (np.isfinite(cas).all() and np.isfinite(act).all()):
        raise ValueError("cas / actionness contain NaN or inf")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    scores = (video_level_scores(cas, config.topk_divisor) if video_scores is None
              else np.asarray(video_scores, dtype=np.float64))
    probs = np.exp(cas - cas.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    to_sec = frames_per_snippet / fps
    out: list[Proposal] = []
    for c in select_classes(scores, config.class_threshold):
        seq = act if act.ndim == 1 else act[:, c]
        cls_seq = probs[:, c] if act.ndim == 1 else seq
        props = []
        for thr in config.act_thresholds:
            for s, e in contiguous_runs(seq >= thr):
                score = (outer_inner_score(cls_seq, s, e, config.outer_ratio)
                         + config.video_score_weight * scores[c])
                t0, t1 = s * to_sec, e * to_sec
                if duration is not None:
                    t0, t1 = min(t0, duration), min(t1, duration)
                if t1 > t0:
                    props.append(Proposal(int(c), t0, t1, float(score)))
        out.extend(soft_nms(props, config.nms_sigma))
    out.sort(key=lambda p: -p.score)
    return out[: config.max_proposals]


def remove_ambiguous(proposals: list[Proposal], ambiguous: list[tuple[float, float]]
                     ) -> list[Proposal]:
    """Drop proposals that overlap a THUMOS14 ambiguous segment (``Ambiguous_test.txt``)."""
    if not ambiguous:
        return proposals
    amb = np.asarray(ambiguous, dtype=np.float64)
    return [p for p in proposals
            if not np.any((np.minimum(p.end, amb[:, 1]) - np.maximum(p.start, amb[:, 0])) > 0)]


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
