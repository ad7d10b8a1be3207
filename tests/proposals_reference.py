"""The proposal code before vectorisation (issue 15), kept verbatim as the reference the
vectorised ``mllm4wtal.inference`` must match exactly: same proposals, same order, same
float64 scores. For tests and ``jobs/bench/scaling.py --compare-reference`` only.

A Python loop over classes x thresholds x runs, and a per-proposal soft-NMS loop.
"""

from __future__ import annotations

import numpy as np
from mllm4wtal.inference import Proposal, ProposalConfig


def soft_nms(proposals: list[Proposal], sigma: float, min_score: float = -np.inf
             ) -> list[Proposal]:
    """Repeatedly keep the best proposal and decay the others of its class by
    exp(-tIoU^2 / sigma); proposals decayed below ``min_score`` (none by default) are
    dropped."""
    if not proposals:
        return []
    labels = np.array([p.label for p in proposals])
    seg = np.array([[p.start, p.end] for p in proposals], dtype=np.float64)
    score = np.array([p.score for p in proposals], dtype=np.float64)
    kept: list[Proposal] = []
    alive = np.ones(len(proposals), dtype=bool)
    while alive.any():
        i = int(np.flatnonzero(alive)[np.argmax(score[alive])])
        alive[i] = False
        kept.append(Proposal(int(labels[i]), float(seg[i, 0]), float(seg[i, 1]),
                             float(score[i])))
        rest = np.flatnonzero(alive & (labels == labels[i]))
        if not len(rest):
            continue
        inter = (np.minimum(seg[rest, 1], seg[i, 1]) - np.maximum(seg[rest, 0], seg[i, 0]))
        inter = inter.clip(0)
        union = (seg[rest, 1] - seg[rest, 0]) + (seg[i, 1] - seg[i, 0]) - inter
        iou = inter / np.maximum(union, 1e-12)
        score[rest] *= np.exp(-(iou ** 2) / sigma)
        alive[rest[score[rest] < min_score]] = False
    return kept


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


def generate_proposals_many(videos, config: ProposalConfig, frames_per_snippet: int = 16):
    """Not of the old code: the reference in the shape of ``generate_proposals_many`` (one
    ``generate_proposals`` per video), to stand in for it in a whole evaluation pass."""
    for v in videos:
        yield generate_proposals(v.cas, v.actionness, v.fps, config, frames_per_snippet,
                                 v.duration, v.video_scores)
