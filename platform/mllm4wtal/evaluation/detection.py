"""Detection mAP at temporal IoU thresholds, the ActivityNet protocol.

Protocol (``compute_average_precision_detection`` of the official ActivityNet evaluator,
``Evaluation/eval_detection.py``), per class and threshold:

1. the class's predictions, in input order, are ranked by ``np.argsort(scores)[::-1]``;
2. each prediction, in that rank, walks the ground truth of its video and class in the
   order ``tiou.argsort()[::-1]`` and takes the first one that is not yet matched, unless it
   meets a tIoU below the threshold first: then, or when its video has no ground truth of
   the class, it is a false positive;
3. cumulative tp/fp give precision and recall (over the class's ground-truth count), and AP
   is the VOC-2011 interpolated area; mAP is the mean over the classes of the ground truth,
   added in the official's class order (first appearance in the ground truth).

Results agree with the official evaluator bit for bit where it runs; ties are resolved by the
same numpy calls on arrays of the same length and dtype, so the same numpy gives the same
order (numpy's default argsort is not stable, not even for 4 elements with SIMD sorting).
Unlike the official evaluator, predictions with labels absent from the ground truth are
ignored and counted, and a class without predictions has AP 0 instead of an error. As there,
a prediction for a video absent from the ground truth (of the subset evaluated) is a false
positive; such predictions are counted too (``DetectionResult.notes``).

Vectorised: the (class, video) pairs that hold ground truth are independent, so the r-th
ranked prediction of every pair is matched in one numpy step for all thresholds at once; the
Python loop runs over ranks within a pair (tens to hundreds), never over predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mllm4wtal.evaluation.io import (
    EvaluationInputError,
    GroundTruthArrays,
    check_tious,
    load_ground_truth,
    load_predictions,
    parse_ground_truth,
    parse_predictions,
)

THUMOS14_TIOUS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 8))
ACTIVITYNET_TIOUS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# elements of the (thresholds, pairs, ground truth) block matched at once before the pairs
# of one step are split by their ground-truth count (bounds memory for skewed inputs)
_BLOCK = 1 << 22


def segment_iou(target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """tIoU of one segment ``[t0, t1]`` with ``candidates`` (N, 2), as the official
    ``utils.segment_iou``: intersection clipped at 0, union = len(a) + len(b) - inter.

    Two zero-length segments give NaN (0 / 0), as there.
    """
    target = np.asarray(target, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    tt1 = np.maximum(target[0], candidates[:, 0])
    tt2 = np.minimum(target[1], candidates[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated average precision (the official ``interpolated_prec_rec``).

    Precision is padded with 0 at both ends and recall with 0 and 1, precision is replaced by
    its monotone (non-increasing) envelope, and AP sums envelope x recall step where recall
    changes.
    """
    mprec = np.hstack([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mrec = np.hstack([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def tiou_key(t: float) -> str:
    """``0.5`` -> ``"0.5"``, ``0.6000000000000001`` -> ``"0.6"``, ``0.55`` -> ``"0.55"``."""
    return f"{round(float(t), 4):g}"


def average_metric_name(tious: Sequence[float]) -> str:
    """The MLflow name of the mean over ``tious``, e.g. ``map/avg_0.1-0.7``."""
    return f"map/avg_{tiou_key(min(tious))}-{tiou_key(max(tious))}"


@dataclass
class DetectionResult:
    """AP per class and threshold, and their means (the official ``ap``, ``mAP``,
    ``average_mAP``, with ``ap`` transposed)."""

    tious: np.ndarray  # (T,)
    classes: list[str]  # sorted ground-truth labels
    ap: np.ndarray  # (n_classes, T)
    map: np.ndarray  # (T,) mean over classes
    average: float  # mean of ``map`` over the thresholds
    n_ignored_predictions: int = 0  # predictions whose label is no ground-truth class
    # predictions of a ground-truth class for a video without ground truth: false positives
    n_unknown_video_predictions: int = 0

    @classmethod
    def from_ap(cls, tious: np.ndarray, classes: list[str], ap: np.ndarray,
                n_ignored_predictions: int = 0, n_unknown_video_predictions: int = 0,
                mean_order: np.ndarray | None = None) -> DetectionResult:
        """``mean_order``: the rows of ``ap`` in the order the mean adds them (the official's
        class order); the official's (T, C) layout and ``mean(axis=1)`` make it bit for bit."""
        rows = ap if mean_order is None else ap[mean_order]
        m = np.ascontiguousarray(rows.T).mean(axis=1)
        return cls(tious=np.asarray(tious, dtype=np.float64), classes=list(classes), ap=ap,
                   map=m, average=float(m.mean()), n_ignored_predictions=n_ignored_predictions,
                   n_unknown_video_predictions=n_unknown_video_predictions)

    def notes(self) -> list[str]:
        """What a reader of the table should know about the predictions, one line each."""
        out = []
        if self.n_ignored_predictions:
            out.append(f"{self.n_ignored_predictions} predictions had labels absent from the "
                       "ground truth and were ignored")
        if self.n_unknown_video_predictions:
            out.append(f"{self.n_unknown_video_predictions} predictions are for videos absent "
                       "from the ground truth and were counted as false positives (as the "
                       "official ActivityNet evaluator does)")
        return out

    def to_json_dict(self) -> dict:
        """``{"map": {"0.5": ..., "0.55": ...}, "average": ...}``."""
        return {"map": {tiou_key(t): float(m) for t, m in zip(self.tious, self.map, strict=True)},
                "average": float(self.average)}

    def flat_metrics(self) -> dict[str, float]:
        """MLflow-legal names: ``map/0.5`` per threshold and ``map/avg_0.1-0.7``."""
        out = {f"map/{tiou_key(t)}": float(m) for t, m in zip(self.tious, self.map, strict=True)}
        out[average_metric_name(self.tious)] = float(self.average)
        return out

    def table(self) -> str:
        """Two aligned rows: the thresholds, and mAP in % with the average."""
        keys = [tiou_key(t) for t in self.tious]
        vals = [f"{m * 100:.2f}" for m in self.map]
        w = [max(len(k), len(v)) for k, v in zip(keys, vals, strict=True)]
        head = " | ".join(k.rjust(n) for k, n in zip(keys, w, strict=True))
        row = " | ".join(v.rjust(n) for v, n in zip(vals, w, strict=True))
        avg = f"{self.average * 100:.2f}"
        return f"tIoU  | {head} | {'Avg'.rjust(len(avg))}\nmAP % | {row} | {avg}"


def evaluate_detection(ground_truth: dict, predictions: dict, tious: Sequence[float],
                       subset: str | None = None) -> DetectionResult:
    """mAP of ActivityNet-format ``predictions`` against ActivityNet-format ``ground_truth``
    at each threshold in ``tious``; ``subset`` filters the ground truth only (a prediction
    for a video outside it is a false positive). Raises EvaluationInputError on bad input.
    """
    thr = check_tious(tious)
    gt = parse_ground_truth(ground_truth, subset=subset)
    pred = parse_predictions(predictions)
    vidx = {v: i for i, v in enumerate(gt.videos)}
    p_video = np.fromiter((vidx.get(v, -1) for v in pred.video), dtype=np.int64,
                          count=len(pred.video))
    names: dict[str, int] = {}
    p_label = np.fromiter((names.setdefault(lab, len(names)) for lab in pred.label),
                          dtype=np.int64, count=len(pred.label))
    return evaluate_indexed(gt, p_video, p_label, list(names), pred.segment, pred.score, thr,
                            subset)


def evaluate_indexed(gt: GroundTruthArrays, pred_video: np.ndarray, pred_label: np.ndarray,
                     label_names: Sequence[str], pred_segment: np.ndarray,
                     pred_score: np.ndarray, tious: Sequence[float],
                     subset: str | None = None) -> DetectionResult:
    """:func:`evaluate_detection` of parsed ground truth and predictions given as arrays in
    input order: ``pred_video`` indexes ``gt.videos`` (-1: a video without ground truth),
    ``pred_label`` indexes ``label_names``; segments (P, 2) and scores as
    ``parse_predictions`` returns them (checked)."""
    thr = check_tious(tious)
    classes = sorted(set(gt.label))
    if not classes:
        where = f" of subset '{subset}'" if subset is not None else ""
        raise EvaluationInputError(f"ground truth{where} has no annotations: nothing to "
                                   "evaluate against")
    cidx = {c: i for i, c in enumerate(classes)}
    class_of_label = np.array([cidx.get(lab, -1) for lab in label_names] or [-1],
                              dtype=np.int64)
    p_class = class_of_label[pred_label]
    p_video = np.asarray(pred_video, dtype=np.int64)
    keep = p_class >= 0
    n_unknown_video = int(np.count_nonzero(keep & (p_video < 0)))
    g_class = np.fromiter((cidx[lab] for lab in gt.label), dtype=np.int64, count=len(gt.label))
    ap = average_precision_matrix(
        gt.video, g_class, gt.segment, p_video[keep], p_class[keep], pred_segment[keep],
        pred_score[keep], len(classes), len(gt.videos), thr)
    # the official indexes classes by first appearance in the ground truth and averages
    # in that order: another order changes the last bits of mAP
    first_seen = np.array([cidx[lab] for lab in dict.fromkeys(gt.label)], dtype=np.int64)
    return DetectionResult.from_ap(thr, classes, ap,
                                   n_ignored_predictions=int(np.count_nonzero(~keep)),
                                   n_unknown_video_predictions=n_unknown_video,
                                   mean_order=first_seen)


def evaluate_files(gt_path: str | Path, pred_path: str | Path, tious: Sequence[float],
                   subset: str | None = None) -> DetectionResult:
    """:func:`evaluate_detection` on two JSON files; errors name the file."""
    gt = load_ground_truth(gt_path)
    pred = load_predictions(pred_path)
    try:
        return evaluate_detection(gt, pred, tious, subset=subset)
    except EvaluationInputError as e:
        # input is already checked, so what is left concerns the ground truth's subset
        raise EvaluationInputError(f"{gt_path}: {e}") from None


def average_precision_matrix(gt_video: np.ndarray, gt_class: np.ndarray, gt_segment: np.ndarray,
                             pred_video: np.ndarray, pred_class: np.ndarray,
                             pred_segment: np.ndarray, pred_score: np.ndarray, n_classes: int,
                             n_videos: int, tious: np.ndarray) -> np.ndarray:
    """AP (n_classes, T) of the official protocol on flat arrays in input order.

    ``*_video`` index videos (``pred_video`` -1: a video without ground truth), ``*_class``
    index classes, segments are (N, 2); ``pred_score``'s dtype is the one np.argsort sees.
    """
    n_thr = len(tious)
    ap = np.zeros((n_classes, n_thr))
    n_pred = len(pred_class)
    if n_pred == 0 or len(gt_class) == 0:
        return ap

    # official rank of every prediction within its class
    by_class = np.argsort(pred_class, kind="stable")  # input order within a class
    c_count = np.bincount(pred_class, minlength=n_classes)
    c_start = np.cumsum(c_count) - c_count
    class_orders: list[tuple[int, np.ndarray]] = []
    class_rank = np.empty(n_pred, dtype=np.int64)
    for c in np.nonzero(c_count)[0]:
        idx = by_class[c_start[c]:c_start[c] + c_count[c]]
        order = idx[np.argsort(pred_score[idx])[::-1]]
        class_rank[order] = np.arange(len(order))
        class_orders.append((int(c), order))

    # units: (class, video) pairs holding ground truth, with their ground truth in slots
    # 0..g-1 in input order (the official groups by video, keeping that order)
    g_key = gt_class * n_videos + gt_video
    units, g_unit = np.unique(g_key, return_inverse=True)
    g_count = np.bincount(g_unit)
    g_start = np.cumsum(g_count) - g_count
    g_order = np.argsort(g_unit, kind="stable")
    g_slot = np.empty(len(g_key), dtype=np.int64)
    g_slot[g_order] = np.arange(len(g_key)) - np.repeat(g_start, g_count)
    n_units, max_g = len(units), int(g_count.max())
    unit_seg = np.zeros((n_units, max_g, 2))
    unit_seg[g_unit, g_slot] = gt_segment

    p_key = pred_class * n_videos + pred_video
    pos = np.minimum(np.searchsorted(units, p_key), n_units - 1)
    in_unit = np.nonzero((pred_video >= 0) & (units[pos] == p_key))[0]
    p_unit = pos[in_unit]

    # within a unit predictions are matched in class rank order; across units in any order
    seq = np.lexsort((class_rank[in_unit], p_unit))
    u_count = np.bincount(p_unit, minlength=n_units)
    u_start = np.cumsum(u_count) - u_count
    rank_in_unit = np.empty(len(seq), dtype=np.int64)
    rank_in_unit[seq] = np.arange(len(seq)) - np.repeat(u_start, u_count)
    step_order = np.argsort(rank_in_unit, kind="stable")
    step_pred = in_unit[step_order]
    step_unit = p_unit[step_order]
    bounds = np.searchsorted(rank_in_unit[step_order], np.arange(int(u_count.max()) + 1))

    tp = np.zeros((n_thr, n_pred), dtype=bool)
    locked = np.zeros((n_thr, n_units, max_g), dtype=bool)
    for r in range(len(bounds) - 1):
        pi = step_pred[bounds[r]:bounds[r + 1]]
        u = step_unit[bounds[r]:bounds[r + 1]]
        g = g_count[u]
        if len(u) * int(g.max()) * n_thr <= _BLOCK:
            _match_step(pi, u, g, pred_segment, unit_seg, locked, tp, tious)
        else:  # split by ground-truth count so few wide rows do not widen all
            width = np.ceil(np.log2(g)).astype(np.int64)
            for w in np.unique(width):
                sel = width == w
                _match_step(pi[sel], u[sel], g[sel], pred_segment, unit_seg, locked, tp, tious)

    npos = np.bincount(gt_class, minlength=n_classes).astype(np.float64)
    for c, order in class_orders:
        if npos[c] == 0:  # predictions of a class without ground truth: no AP to report
            continue
        tp_c = tp[:, order]
        tp_cum = np.cumsum(tp_c, axis=1, dtype=np.float64)
        fp_cum = np.cumsum(~tp_c, axis=1, dtype=np.float64)
        recall = tp_cum / npos[c]
        precision = tp_cum / (tp_cum + fp_cum)
        ap[c] = [interpolated_ap(precision[t], recall[t]) for t in range(n_thr)]
    return ap


def _match_step(pi: np.ndarray, u: np.ndarray, g: np.ndarray, pred_segment: np.ndarray,
                unit_seg: np.ndarray, locked: np.ndarray, tp: np.ndarray,
                tious: np.ndarray) -> None:
    """Match predictions ``pi`` (one per unit ``u``, with ``g`` ground truth) at every
    threshold; writes ``tp`` and ``locked`` in place."""
    width = int(g.max())
    gs = unit_seg[u, :width]  # (n, G, 2)
    ps = pred_segment[pi]  # (n, 2)
    # same operations in the same order as segment_iou: bitwise equal values
    inter = (np.minimum(ps[:, 1, None], gs[..., 1]) - np.maximum(ps[:, 0, None], gs[..., 0]))
    inter = inter.clip(0)
    union = (gs[..., 1] - gs[..., 0]) + (ps[:, 1] - ps[:, 0])[:, None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    valid = np.arange(width) < g[:, None]
    # NaN (0/0) sorts last, so it is visited first and passes every threshold
    key = np.where(valid, np.where(np.isnan(iou), np.inf, iou), -np.inf)

    # visiting priority: the tIoU itself, unless a tie among ground truth that some
    # threshold reaches makes argsort's order matter; then that order, from the same
    # np.argsort call on a row of the same length as the official
    prio = key
    reach = np.where(key >= tious.min(), key, -np.inf)
    srt = np.sort(reach, axis=1)
    tied = np.nonzero(((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] > -np.inf)).any(axis=1))[0]
    if len(tied):
        prio = key.copy()
        for n in np.unique(g[tied]):
            rows = tied[g[tied] == n]
            visit = np.argsort(iou[rows, :n], axis=1)[:, ::-1]
            block = np.empty((len(rows), n))
            np.put_along_axis(block, visit, np.arange(n, 0, -1, dtype=np.float64)[None], axis=1)
            prio[rows, :n] = block

    cand = (key[None] >= tious[:, None, None]) & ~locked[:, u, :width]  # (T, n, G)
    best = np.where(cand, prio[None], -np.inf).argmax(axis=-1)  # (T, n)
    ok = cand.any(axis=-1)
    tp[:, pi] = ok
    t_i, n_i = np.nonzero(ok)
    locked[t_i, u[n_i], best[t_i, n_i]] = True
