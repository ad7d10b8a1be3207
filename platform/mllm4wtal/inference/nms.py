"""Gaussian soft-NMS on temporal segments (Bodla et al. 2017), per class.

:func:`soft_nms_groups` runs many independent groups (one per video and class) at once: the
groups are padded into rows of a matrix and every greedy step is a handful of array
operations on all rows. Per row it performs the operations of the one-group loop, element
by element in the same order, so kept segments, their order and their float64 scores are
those of that loop (ties: the first maximum, as ``np.argmax``).
"""

from __future__ import annotations

import heapq

import numpy as np

from mllm4wtal.inference.segments import Proposal

BUCKET_SHARE = 0.75  # a padded block holds groups of sizes in (share * width, width]


def soft_nms_groups(start: np.ndarray, end: np.ndarray, score: np.ndarray, sizes: np.ndarray,
                    sigma: float, min_score: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS of consecutive groups of segments: group g is the next ``sizes[g]`` entries
    of ``start``/``end``/``score`` (1D float64). Repeatedly keep the best segment of each
    group and decay the others of the group by exp(-tIoU^2 / sigma); segments decayed below
    ``min_score`` are dropped.

    Returns (kept, kept_score): indices into the inputs, by group and, within a group, in the
    order kept, and the (decayed) scores they were kept with.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    score, sizes = np.asarray(score, np.float64), np.asarray(sizes, np.int64)
    first = np.cumsum(sizes) - sizes
    by_size = np.argsort(-sizes, kind="stable")
    ordered = sizes[by_size]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # group, index, score, step
    lo = 0
    while lo < len(ordered) and ordered[lo] > 0:
        width = int(ordered[lo])
        hi = lo + int(np.searchsorted(-ordered[lo:], -int(width * BUCKET_SHARE), "left"))
        groups = by_size[lo:hi]
        found += _padded_soft_nms(start, end, score, first[groups], sizes[groups], groups,
                                  width, sigma, min_score)
        lo = hi
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    group = np.concatenate([f[0] for f in found])
    kept = np.concatenate([f[1] for f in found])
    kept_score = np.concatenate([f[2] for f in found])
    step = np.concatenate([np.full(len(f[0]), f[3]) for f in found])
    order = np.lexsort((step, group))
    return kept[order], kept_score[order]


def _padded_soft_nms(start: np.ndarray, end: np.ndarray, score: np.ndarray, first: np.ndarray,
                     sizes: np.ndarray, groups: np.ndarray, width: int, sigma: float,
                     min_score: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Groups of sizes <= ``width``, largest first, as rows of (rows, width) matrices."""
    col = np.arange(width)
    valid = col < sizes[:, None]
    index = first[:, None] + np.minimum(col, sizes[:, None] - 1)
    seg_start, seg_end = start[index], end[index]
    length = seg_end - seg_start
    value = np.where(valid, score[index], 0.0)
    alive = valid
    out = []
    for step in range(width):
        rows = int(np.searchsorted(-sizes, -step, "left"))  # groups with more than `step`
        al, sc = alive[:rows], value[:rows]
        r = np.arange(rows)
        i = np.where(al, sc, -np.inf).argmax(1)
        has = al[r, i]
        if not has.any():
            continue
        out.append((groups[:rows][has], index[r, i][has], sc[r, i][has], step))
        al[r, i] = False
        s_i, e_i = seg_start[r, i], seg_end[r, i]
        inter = (np.minimum(seg_end[:rows], e_i[:, None])
                 - np.maximum(seg_start[:rows], s_i[:, None]))
        inter = inter.clip(0)
        union = length[:rows] + (e_i - s_i)[:, None] - inter
        iou = inter / np.maximum(union, 1e-12)
        decayed = sc * np.exp(-(iou ** 2) / sigma)
        value[:rows] = np.where(al, decayed, sc)
        if min_score > -np.inf:
            al &= ~(value[:rows] < min_score)
    return out


def soft_nms(proposals: list[Proposal], sigma: float, min_score: float = -np.inf
             ) -> list[Proposal]:
    """Repeatedly keep the best proposal and decay the others of its class by
    exp(-tIoU^2 / sigma); proposals decayed below ``min_score`` (none by default) are
    dropped. Returned in the order kept, all classes together."""
    if not proposals:
        return []
    labels = np.array([p.label for p in proposals])
    by_label = np.argsort(labels, kind="stable")
    _, sizes = np.unique(labels[by_label], return_counts=True)
    kept, kept_score = soft_nms_groups(
        np.array([proposals[i].start for i in by_label], dtype=np.float64),
        np.array([proposals[i].end for i in by_label], dtype=np.float64),
        np.array([proposals[i].score for i in by_label], dtype=np.float64),
        sizes, sigma, min_score)
    # Classes never interact: the one-loop order takes, at each step, the best next proposal
    # of any class (the lowest input index among equal scores).
    index, neg_score = by_label[kept].tolist(), (-kept_score).tolist()
    group = np.searchsorted(np.cumsum(sizes), kept, "right")
    bounds = np.cumsum(np.bincount(group, minlength=len(sizes))).tolist()
    heads = [(neg_score[b], index[b], b, e) for b, e in zip([0, *bounds[:-1]], bounds,
                                                             strict=True) if b < e]
    heapq.heapify(heads)
    out = []
    while heads:
        neg, i, b, e = heapq.heappop(heads)
        p = proposals[i]
        out.append(Proposal(int(p.label), float(p.start), float(p.end), -neg))
        if b + 1 < e:
            heapq.heappush(heads, (neg_score[b + 1], index[b + 1], b + 1, e))
    return out
