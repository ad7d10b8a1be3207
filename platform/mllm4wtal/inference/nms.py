"""Gaussian soft-NMS on temporal segments (Bodla et al. 2017), per class."""

from __future__ import annotations

import numpy as np

from mllm4wtal.inference.segments import Proposal


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
