"""Exact evaluation with score ties: the project's mAP against a per-prediction loop written
from the official ActivityNet evaluator (``Evaluation/eval_detection.py``:
``ANETdetection._import_*``, ``wrapper_compute_average_precision``, ``evaluate`` and
``compute_average_precision_detection``), tie order included.

What the official code does and the reference below repeats, step by step:

* ground truth rows in file order (videos of ``database``, then annotations), classes indexed
  by first appearance; prediction rows in file order (videos of ``results``, then their list),
  the score column int64 when every score is an integer, else float64 (pandas' dtype);
* per class, ``groupby('label').get_group`` keeps row order, so a class's predictions are in
  file order when ``prediction['score'].values.argsort()[::-1]`` ranks them (numpy's default
  argsort, not stable);
* each ranked prediction walks its video's ground truth of the class in
  ``tiou.argsort()[::-1]`` order, per threshold: a tIoU below the threshold ends the walk (a
  false positive), a ground truth locked at that threshold is skipped, the first free one is
  taken; a video without ground truth of the class makes a false positive;
* cumsum, precision, recall over the class's ground-truth count, interpolated AP; a class
  without predictions has AP 0; ``ap`` is (T, C) and mAP is ``ap.mean(axis=1)``.

Where the official would raise (a prediction label absent from the ground truth), the
reference drops the prediction, as the project does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mllm4wtal.data.wtal_format import load_annotations_only
from mllm4wtal.evaluation import ACTIVITYNET_TIOUS, THUMOS14_TIOUS, evaluate_detection

THUMOS_ANNOTATIONS = (Path(__file__).parent / "data" / "thumos14reduced"
                      / "Thumos14reduced-Annotations")

Rank = Callable[[np.ndarray], np.ndarray]


def official_rank(scores: np.ndarray) -> np.ndarray:
    """The official ranking: numpy's default (unstable) argsort, reversed."""
    return scores.argsort()[::-1]


def stable_rank(scores: np.ndarray) -> np.ndarray:
    """A plausible but different ranking: descending, ties in file order."""
    return np.argsort(-scores, kind="stable")


# ---------------------------------------------------------------------------------------
# reference: the official algorithm, one prediction and one threshold at a time


def _segment_iou(target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    tt1 = np.maximum(target[0], candidates[:, 0])
    tt2 = np.minimum(target[1], candidates[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter.astype(float) / union


def _interpolated_ap(prec: np.ndarray, rec: np.ndarray) -> float:
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _class_ap(gt: list[tuple], preds: list[tuple], scores: np.ndarray, tious: np.ndarray,
              rank: Rank) -> np.ndarray:
    """compute_average_precision_detection: gt and preds are (video, start, end) rows of one
    class in file order, ``scores`` the class's score column."""
    n_thr = len(tious)
    lock_gt = -np.ones((n_thr, len(gt)))
    order = rank(scores)
    tp = np.zeros((n_thr, len(preds)))
    fp = np.zeros((n_thr, len(preds)))
    gt_by_video: dict[str, list[int]] = {}  # groupby('video-id'): row order kept
    for j, (vid, _, _) in enumerate(gt):
        gt_by_video.setdefault(vid, []).append(j)
    for idx, k in enumerate(order):
        vid, start, end = preds[k]
        if vid not in gt_by_video:
            fp[:, idx] = 1
            continue
        rows = gt_by_video[vid]
        tiou = _segment_iou(np.array([start, end]), np.array([gt[j][1:] for j in rows]))
        visit = tiou.argsort()[::-1]
        for t, thr in enumerate(tious):
            for jdx in visit:
                if tiou[jdx] < thr:
                    fp[t, idx] = 1
                    break
                if lock_gt[t, rows[jdx]] >= 0:
                    continue
                tp[t, idx] = 1
                lock_gt[t, rows[jdx]] = idx
                break
            if fp[t, idx] == 0 and tp[t, idx] == 0:
                fp[t, idx] = 1
    tp_cum = np.cumsum(tp, axis=1).astype(float)
    fp_cum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_cum / float(len(gt))
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([_interpolated_ap(precision[t], recall[t]) for t in range(n_thr)])


def reference_evaluate(gt_json: dict, pred_json: dict, tious, subset: str | None = None,
                       rank: Rank = official_rank) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes in first-appearance order, ap (T, C), mAP (T,)) as the official computes them."""
    tious = np.asarray(tious, dtype=np.float64)
    index: dict[str, int] = {}
    gt_rows = []
    for vid, entry in gt_json["database"].items():
        if subset is not None and entry["subset"] != subset:
            continue
        for ann in entry["annotations"]:
            c = index.setdefault(ann["label"], len(index))
            gt_rows.append((vid, float(ann["segment"][0]), float(ann["segment"][1]), c))
    items = [(vid, p) for vid, ps in pred_json["results"].items() for p in ps]
    all_int = bool(items) and all(type(p["score"]) is int for _, p in items)
    score_col = np.array([p["score"] for _, p in items], dtype=np.int64 if all_int else float)
    pred_rows = [(vid, float(p["segment"][0]), float(p["segment"][1]), index.get(p["label"], -1))
                 for vid, p in items]
    ap = np.zeros((len(tious), len(index)))
    for c in range(len(index)):
        gt_c = [r[:3] for r in gt_rows if r[3] == c]
        mine = [i for i, r in enumerate(pred_rows) if r[3] == c]
        if mine:
            ap[:, c] = _class_ap(gt_c, [pred_rows[i][:3] for i in mine], score_col[mine], tious,
                                 rank)
    return list(index), ap, ap.mean(axis=1)


def max_difference(gt_json: dict, pred_json: dict, tious, subset: str | None = None
                   ) -> float:
    """Largest |project - official reference| over AP per class and threshold, mAP and the
    average mAP."""
    r = evaluate_detection(gt_json, pred_json, tious, subset=subset)
    classes, ap, m = reference_evaluate(gt_json, pred_json, tious, subset=subset)
    assert sorted(classes) == r.classes
    ap_sorted = ap[:, [classes.index(c) for c in r.classes]].T
    return float(max(np.abs(r.ap - ap_sorted).max(), np.abs(r.map - m).max(),
                     abs(r.average - m.mean())))


def tie_order_effect(gt_json: dict, pred_json: dict, tious, subset: str | None = None
                     ) -> float:
    """How far the mAP moves if ties are ranked in file order instead (the input's
    sensitivity to tie order: what a test on it can detect)."""
    _, _, m = reference_evaluate(gt_json, pred_json, tious, subset=subset)
    _, _, m_stable = reference_evaluate(gt_json, pred_json, tious, subset=subset,
                                        rank=stable_rank)
    return float(np.abs(m - m_stable).max())


# ---------------------------------------------------------------------------------------
# inputs


def heavy_ties(seed: int, n_videos: int = 15, n_classes: int = 6, n_gt: int = 160,
               n_pred: int = 800, scores: str = "float") -> tuple[dict, dict]:
    """Overlapping integer segments (tIoU ties among ground truth), scores from three values
    (``float``; ``int``: the integers 0-2, an int64 score column; ``mixed``: 0, 1 and 0.5, a
    float64 column where 1 ties 1.0), class names in random first-appearance order,
    predictions in videos without ground truth, a class nobody predicts."""
    levels = {"float": [0.1, 0.5, 0.9], "int": [0, 1, 2], "mixed": [0, 1, 0.5, 1.0]}[scores]
    rng = np.random.default_rng(seed)
    names = [f"c{k}" for k in rng.permutation(n_classes)]
    db: dict = {f"v{i}": {"subset": "test", "duration": 60.0, "annotations": []}
                for i in rng.permutation(n_videos)}
    db["v_other"] = {"subset": "val", "duration": 60.0,
                     "annotations": [{"segment": [0, 5], "label": names[0]}]}
    for _ in range(n_gt):
        s = int(rng.integers(0, 40))
        db[f"v{rng.integers(n_videos)}"]["annotations"].append(
            {"segment": [s, s + int(rng.integers(1, 9))],
             "label": names[int(rng.integers(n_classes - 1))]})
    db[f"v{rng.integers(n_videos)}"]["annotations"].append(
        {"segment": [1, 4], "label": names[-1]})  # ground truth only: AP 0
    results: dict = {}
    pred_videos = [f"v{i}" for i in range(n_videos)] + ["v_other", "v_missing"]
    for _ in range(n_pred):
        s = int(rng.integers(0, 40))
        score = levels[int(rng.integers(len(levels)))]
        results.setdefault(pred_videos[rng.integers(len(pred_videos))], []).append(
            {"segment": [s, s + int(rng.integers(1, 9))],
             "label": names[int(rng.integers(n_classes - 1))], "score": score})
    return {"database": db}, {"results": results}


def thumos14_with_tied_predictions(seed: int) -> tuple[dict, dict]:
    """The real THUMOS14 test ground truth (212 videos, 3358 instances, up to 218 of one class
    in one video) and predictions as a WTAL pipeline makes them: segments on the 16-frame
    snippet grid (0.64 s) near the ground truth, scores rounded to 0.1, false positives,
    videos and predictions in shuffled file order."""
    ds = load_annotations_only(THUMOS_ANNOTATIONS, "Thumos14reduced")
    gt = ds.ground_truth(ds.test_subset)
    rng = np.random.default_rng(seed)
    snip = 16 / 25
    per_video: dict[str, list[dict]] = {}
    for vid, entry in gt["database"].items():
        for ann in entry["annotations"]:
            s, e = ann["segment"]
            for _ in range(int(rng.integers(0, 4))):
                a = max(0, round(s / snip) + int(rng.integers(-2, 3)))
                b = max(a + 1, round(e / snip) + int(rng.integers(-2, 3)))
                label = ann["label"] if rng.random() < 0.9 else ds.classes[rng.integers(20)]
                per_video.setdefault(vid, []).append(
                    {"label": label, "segment": [a * snip, b * snip],
                     "score": round(float(rng.random()), 1)})
    for _ in range(1500):  # false positives anywhere, and in a video absent from the truth
        vid = str(rng.choice([*gt["database"], "video_test_missing"]))
        a = int(rng.integers(0, 200))
        per_video.setdefault(vid, []).append(
            {"label": ds.classes[rng.integers(20)], "segment": [a * snip, (a + 5) * snip],
             "score": round(float(rng.random()) * 0.5, 1)})
    results = {}
    for vid in rng.permutation(list(per_video)):
        items = per_video[str(vid)]
        results[str(vid)] = [items[i] for i in rng.permutation(len(items))]
    return gt, {"results": results}


# ---------------------------------------------------------------------------------------
# (a) heavy ties across videos and classes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scores", ["float", "int", "mixed"])
def test_heavy_ties_match_the_official_algorithm(seed, scores):
    gt, pred = heavy_ties(seed, scores=scores)
    assert max_difference(gt, pred, THUMOS14_TIOUS, subset="test") <= 1e-12
    # the input can tell the official tie order from file order: a stable sort would fail
    assert tie_order_effect(gt, pred, THUMOS14_TIOUS, subset="test") > 1e-4


@pytest.mark.parametrize("seed", range(2))
def test_many_tied_predictions_and_ground_truth_per_video(seed):
    # thousands of tied predictions of two classes in three videos, 150+ ground truth per
    # (video, class): numpy's argsort takes its large-array paths for both rankings
    gt, pred = heavy_ties(10 + seed, n_videos=3, n_classes=3, n_gt=900, n_pred=4000)
    assert max_difference(gt, pred, ACTIVITYNET_TIOUS, subset="test") <= 1e-12
    assert tie_order_effect(gt, pred, ACTIVITYNET_TIOUS, subset="test") > 1e-4


def test_map_is_the_officials_class_order_mean_bit_for_bit():
    # the official averages ap (T, C) along its rows with classes in ground-truth
    # first-appearance order; another order or layout changes the last bits of mAP
    for seed in range(5):
        gt, pred = heavy_ties(seed, n_classes=12, n_gt=300)
        r = evaluate_detection(gt, pred, THUMOS14_TIOUS, subset="test")
        classes, ap, m = reference_evaluate(gt, pred, THUMOS14_TIOUS, subset="test")
        np.testing.assert_array_equal(r.ap, ap[:, [classes.index(c) for c in r.classes]].T)
        np.testing.assert_array_equal(r.map, m)
        assert r.average == m.mean()


# ---------------------------------------------------------------------------------------
# (b) the real THUMOS14 ground truth


def test_thumos14_ground_truth_with_tied_scores_matches_the_official_algorithm():
    gt, pred = thumos14_with_tied_predictions(0)
    assert sum(map(len, pred["results"].values())) > 6000
    assert max_difference(gt, pred, THUMOS14_TIOUS) <= 1e-12
    assert tie_order_effect(gt, pred, THUMOS14_TIOUS) > 1e-5


# ---------------------------------------------------------------------------------------
# (c) a hand-computed case where the tie order decides AP


def test_hand_computed_tie_across_videos():
    # one ground truth [0, 10] in v1 and one in v2; file order of the predictions:
    #   0: v1 [20, 30] 0.5 (a false positive)   1: v1 [0, 10] 0.9   2: v2 [0, 10] 0.5
    gt = {"database": {v: {"subset": "test", "duration": 40.0,
                           "annotations": [{"segment": [0, 10], "label": "A"}]}
                       for v in ("v1", "v2")}}
    pred = {"results": {
        "v1": [{"segment": [20, 30], "label": "A", "score": 0.5},
               {"segment": [0, 10], "label": "A", "score": 0.9}],
        "v2": [{"segment": [0, 10], "label": "A", "score": 0.5}]}}
    # what the hand computation rests on: so short an array keeps equal values in order
    assert np.argsort(np.array([0.5, 0.9, 0.5])).tolist() == [0, 2, 1]
    # official: reversed [1, 2, 0]: TP, TP, FP; precision [1, 1, 2/3], recall [.5, 1, 1]
    # -> AP 1.0 at every threshold
    r = evaluate_detection(gt, pred, THUMOS14_TIOUS)
    assert r.map.tolist() == [1.0] * 7 and r.average == 1.0
    _, _, m = reference_evaluate(gt, pred, THUMOS14_TIOUS)
    assert m.tolist() == [1.0] * 7
    # ties in file order rank [1, 0, 2]: TP, FP, TP; precision [1, .5, 2/3], recall
    # [.5, .5, 1], envelope [1, 2/3, 2/3] -> AP .5 + .5 * 2/3: a stable sort fails this test
    _, _, m_stable = reference_evaluate(gt, pred, THUMOS14_TIOUS, rank=stable_rank)
    np.testing.assert_allclose(m_stable, 0.5 + 0.5 * 2 / 3, rtol=0, atol=1e-15)
