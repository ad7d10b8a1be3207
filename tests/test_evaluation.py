"""Detection mAP: hand-computed cases, properties, input checks, and agreement with a
per-prediction loop written after the official ActivityNet evaluator
(``compute_average_precision_detection`` in ``Evaluation/eval_detection.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mllm4wtal.evaluation import (
    ACTIVITYNET_TIOUS,
    THUMOS14_TIOUS,
    DetectionResult,
    EvaluationInputError,
    evaluate_detection,
    evaluate_files,
    interpolated_ap,
    load_ground_truth,
    load_predictions,
    parse_tiou_range,
    segment_iou,
)
from mllm4wtal.evaluation import detection as detection_module

TIOUS = (0.1, 0.3, 0.5, 0.7)


def gt_of(instances, subset="test", empty_videos=()):
    """ActivityNet ground truth from (video, start, end, label) tuples."""
    db: dict = {v: {"subset": subset, "duration": 100.0, "annotations": []} for v in empty_videos}
    for vid, s, e, lab in instances:
        db.setdefault(vid, {"subset": subset, "duration": 100.0, "annotations": []})
        db[vid]["annotations"].append({"segment": [s, e], "label": lab})
    return {"version": "test", "database": db}


def pred_of(preds):
    """ActivityNet results from (video, start, end, label, score) tuples."""
    res: dict = {}
    for vid, s, e, lab, sc in preds:
        res.setdefault(vid, []).append({"segment": [s, e], "label": lab, "score": sc})
    return {"results": res}


# ---------------------------------------------------------------------------------------
# reference: the official algorithm, one prediction and one threshold at a time


def ref_segment_iou(t, cands):
    """utils.segment_iou of the official evaluator."""
    tt1 = np.maximum(t[0], cands[:, 0])
    tt2 = np.minimum(t[1], cands[:, 1])
    inter = (tt2 - tt1).clip(0)
    union = (cands[:, 1] - cands[:, 0]) + (t[1] - t[0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter.astype(float) / union


def ref_interpolated_ap(prec, rec):
    """utils.interpolated_prec_rec: an explicit backward loop for the envelope."""
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def ref_class_ap(gt, preds, scores, tious):
    """compute_average_precision_detection: gt [(video, start, end)], preds [(video, start,
    end)] in input order, scores an array with the dtype the official's pandas column has."""
    npos = float(len(gt))
    lock = -np.ones((len(tious), len(gt)))
    order = scores.argsort()[::-1]
    tp = np.zeros((len(tious), len(preds)))
    fp = np.zeros((len(tious), len(preds)))
    by_video: dict = {}
    for j, (v, s, e) in enumerate(gt):
        by_video.setdefault(v, []).append((j, s, e))
    for idx, pi in enumerate(order):
        v, s, e = preds[pi]
        if v not in by_video:
            fp[:, idx] = 1
            continue
        this_gt = by_video[v]
        tiou = ref_segment_iou(np.array([s, e], dtype=float),
                               np.array([[gs, ge] for _, gs, ge in this_gt], dtype=float))
        visit = tiou.argsort()[::-1]
        for t, thr in enumerate(tious):
            for k in visit:
                if tiou[k] < thr:
                    fp[t, idx] = 1
                    break
                if lock[t, this_gt[k][0]] >= 0:
                    continue
                tp[t, idx] = 1
                lock[t, this_gt[k][0]] = idx
                break
            if fp[t, idx] == 0 and tp[t, idx] == 0:
                fp[t, idx] = 1
    tpc = np.cumsum(tp, axis=1).astype(float)
    fpc = np.cumsum(fp, axis=1).astype(float)
    rec, prec = tpc / npos, tpc / (tpc + fpc)
    return np.array([ref_interpolated_ap(prec[t], rec[t]) for t in range(len(tious))])


def reference_ap(gt_json, pred_json, tious, subset=None):
    """(n_classes, T) AP; classes sorted; a class without predictions has AP 0 and labels
    absent from the ground truth are dropped (where the official would raise)."""
    gt = [(vid, float(a["segment"][0]), float(a["segment"][1]), a["label"])
          for vid, v in gt_json["database"].items() if subset is None or v["subset"] == subset
          for a in v["annotations"]]
    preds = [(vid, float(p["segment"][0]), float(p["segment"][1]), p["label"], p["score"])
             for vid, items in pred_json["results"].items() for p in items]
    all_int = bool(preds) and all(isinstance(p[4], int) for p in preds)
    classes = sorted({lab for *_, lab in gt})
    ap = np.zeros((len(classes), len(tious)))
    for c, name in enumerate(classes):
        p = [x for x in preds if x[3] == name]
        if p:
            scores = np.array([x[4] for x in p], dtype=np.int64 if all_int else np.float64)
            ap[c] = ref_class_ap([(v, s, e) for v, s, e, lab in gt if lab == name],
                                 [(v, s, e) for v, s, e, *_ in p], scores, tious)
    return ap


def run(gt, preds, tious=TIOUS):
    return evaluate_detection(gt_of(gt), pred_of(preds), tious)


def assert_matches_reference(gt_json, pred_json, tious=TIOUS):
    r = evaluate_detection(gt_json, pred_json, tious)
    ref = reference_ap(gt_json, pred_json, np.asarray(tious))
    np.testing.assert_allclose(r.ap, ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(r.map, ref.mean(0), atol=1e-9, rtol=0)
    assert r.average == pytest.approx(ref.mean(), abs=1e-9)


# ---------------------------------------------------------------------------------------
# primitives


def test_segment_iou_matches_the_official_formula():
    iou = segment_iou(np.array([0.0, 10.0]), np.array([[0, 10], [5, 15], [20, 30], [2, 4]]))
    np.testing.assert_allclose(iou, [1.0, 5 / 15, 0.0, 0.2])
    assert np.isnan(segment_iou(np.array([3.0, 3.0]), np.array([[3.0, 3.0]])))[0]


def test_interpolated_ap_uses_the_monotone_envelope():
    # precision [1, .5, 2/3] at recall [.5, .5, 1]: envelope [1, 2/3, 2/3] -> .5 + .5 * 2/3
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == (
        pytest.approx(0.5 + 0.5 * 2 / 3))
    prec, rec = np.random.default_rng(0).random(50), np.sort(np.random.default_rng(1).random(50))
    assert interpolated_ap(prec, rec) == pytest.approx(ref_interpolated_ap(prec, rec), abs=1e-15)


def test_threshold_presets():
    assert THUMOS14_TIOUS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert ACTIVITYNET_TIOUS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


# ---------------------------------------------------------------------------------------
# hand-computed cases


def test_one_correct_prediction():
    r = run([("v1", 10, 20, "A")], [("v1", 10, 20, "A", 0.9)])
    np.testing.assert_array_equal(r.map, 1.0)
    assert r.average == 1.0 and r.classes == ["A"] and r.ap.shape == (1, 4)


def test_duplicate_of_one_ground_truth_is_a_false_positive():
    # TP then FP: precision [1, .5], recall [1, 1] -> AP 1.0
    r = run([("v1", 10, 20, "A")], [("v1", 10, 20, "A", 0.9), ("v1", 10, 20, "A", 0.8)])
    np.testing.assert_array_equal(r.map, 1.0)
    # the duplicate ranked first takes the match: the better-scored one is the TP, so a
    # lower-scored exact copy placed first in the file is still the FP
    r = run([("v1", 10, 20, "A")], [("v1", 10, 20, "A", 0.8), ("v1", 10, 20, "A", 0.9)])
    np.testing.assert_array_equal(r.map, 1.0)
    # FP first, then TP: precision [0, .5], recall [0, 1] -> AP 0.5
    r = run([("v1", 10, 20, "A")], [("v1", 10, 20, "A", 0.5), ("v1", 50, 60, "A", 0.8)])
    np.testing.assert_allclose(r.map, 0.5)


def test_prediction_in_a_video_without_ground_truth_counts_as_false_positive():
    gt = [("v1", 10, 20, "A")]
    preds = [("v9", 10, 20, "A", 0.9), ("v1", 10, 20, "A", 0.5)]
    np.testing.assert_allclose(run(gt, preds).map, 0.5)
    # ... and so does one in a video whose ground truth has only other classes
    preds = [("v2", 10, 20, "A", 0.9), ("v1", 10, 20, "A", 0.5)]
    np.testing.assert_allclose(run(gt + [("v2", 10, 20, "B")], preds).ap[0], 0.5)


def test_class_without_predictions_has_ap_zero():
    r = run([("v1", 10, 20, "A"), ("v2", 0, 5, "B")], [("v1", 10, 20, "A", 0.9)])
    assert r.classes == ["A", "B"]
    np.testing.assert_array_equal(r.ap[0], 1.0)
    np.testing.assert_array_equal(r.ap[1], 0.0)
    np.testing.assert_allclose(r.map, 0.5)


def test_ties_in_score_follow_argsort_reversed():
    # three predictions tied at 0.5 in file order [TP v1, FP v3, TP v2]; argsort of equal
    # values keeps input order (3 elements: insertion sort) and [::-1] reverses it, so the
    # ranking is v2 (TP), v3 (FP), v1 (TP): precision [1, .5, 2/3], recall [.5, .5, 1]
    gt = [("v1", 10, 20, "A"), ("v2", 10, 20, "A")]
    preds = [("v1", 10, 20, "A", 0.5), ("v3", 0, 1, "A", 0.5), ("v2", 10, 20, "A", 0.5)]
    np.testing.assert_allclose(run(gt, preds).map, 0.5 + 0.5 * 2 / 3)
    assert_matches_reference(gt_of(gt), pred_of(preds))


def test_hand_computed_multi_threshold():
    # gt [0, 10] and [20, 30]; prediction [0, 6] has tIoU 0.6: TP at 0.1/0.3/0.5, FP at 0.7
    gt = [("v1", 0, 10, "A"), ("v1", 20, 30, "A")]
    preds = [("v1", 0, 6, "A", 0.9), ("v1", 20, 30, "A", 0.8)]
    r = run(gt, preds)
    # at 0.7: FP then TP -> precision [0, .5], recall [0, .5] -> AP = 0.5 * 0.5 = 0.25
    np.testing.assert_allclose(r.map, [1.0, 1.0, 1.0, 0.25])
    assert r.average == pytest.approx(0.8125)


def test_equal_tiou_visits_the_later_ground_truth_first():
    # p1 [8, 11] (0.9) has tIoU 1/3 with g1 [8, 9] and 2/6 with g2 [5, 10]: a tie.
    # tiou.argsort()[::-1] of two equal values visits g2 first, so p1 takes g2; p2 [9, 12]
    # (0.5) has tIoU 0 with g1 and 1/7 with the locked g2 -> FP at 0.1:
    # precision [1, .5], recall [.5, .5] -> AP .5 (taking g1 instead would give AP 1)
    gt = [("v", 8, 9, "A"), ("v", 5, 10, "A")]
    preds = [("v", 8, 11, "A", 0.9), ("v", 9, 12, "A", 0.5)]
    np.testing.assert_allclose(run(gt, preds, (0.1,)).map, [0.5])
    assert_matches_reference(gt_of(gt), pred_of(preds), (0.1, 0.3))


def test_hand_computed_greedy_matching_at_two_thresholds():
    # gt g1 [0, 10], g2 [8, 18]. p1 [2, 12] (0.9): tIoU 8/12 with g1, 4/16 with g2.
    # p2 [0, 10] (0.8): tIoU 1 with g1, 2/18 with g2.
    # tIoU 0.1: p1 takes g1 (best), p2 then finds g1 locked, g2 at 2/18 >= 0.1 -> TP: AP 1.
    # tIoU 0.5: p1 takes g1, p2 meets g1 locked then g2 below 0.5 -> FP:
    #   precision [1, .5], recall [.5, .5] -> AP .5
    gt = [("v", 0, 10, "A"), ("v", 8, 18, "A")]
    preds = [("v", 2, 12, "A", 0.9), ("v", 0, 10, "A", 0.8)]
    r = run(gt, preds, (0.1, 0.5))
    np.testing.assert_allclose(r.map, [1.0, 0.5])


def test_labels_absent_from_ground_truth_are_counted_and_ignored():
    r = run([("v1", 0, 10, "A")], [("v1", 0, 10, "A", 0.9), ("v1", 0, 10, "Z", 0.99),
                                   ("v2", 0, 10, "Y", 0.1)])
    assert r.n_ignored_predictions == 2 and r.classes == ["A"]
    np.testing.assert_array_equal(r.map, 1.0)


def test_zero_length_ground_truth_is_kept_and_zero_length_predictions_are_refused():
    # published ground truth holds empty segments (ActivityNet 1.2): kept, as the official
    # keeps them; a prediction of positive length has tIoU 0 with them (a false positive)
    gt = [("v", 5, 5, "A"), ("v", 10, 20, "A")]
    preds = [("v", 4, 6, "A", 0.9), ("v", 10, 20, "A", 0.5)]
    assert_matches_reference(gt_of(gt), pred_of(preds))
    np.testing.assert_allclose(run(gt, preds).map, 0.25)
    # an empty prediction would match an empty ground truth through the official's 0/0 NaN
    with pytest.raises(EvaluationInputError,
                       match=r"results\['v'\]\[0\]\['segment'\] = \[7, 7\] is empty"):
        run(gt, [("v", 7, 7, "A", 0.9)])


def test_subset_filter_applies_to_ground_truth_only():
    gt = gt_of([("v1", 0, 10, "A")], subset="test")
    gt["database"]["v2"] = {"subset": "validation",
                            "annotations": [{"segment": [0, 10], "label": "A"}]}
    r = evaluate_detection(gt, pred_of([("v1", 0, 10, "A", 1.0)]), TIOUS, subset="test")
    np.testing.assert_array_equal(r.map, 1.0)
    r = evaluate_detection(gt, pred_of([("v1", 0, 10, "A", 1.0)]), TIOUS)
    np.testing.assert_allclose(r.map, 0.5)  # both videos' ground truth now count
    # a prediction for the other subset's video is a false positive
    r = evaluate_detection(gt, pred_of([("v2", 0, 10, "A", 1.0), ("v1", 0, 10, "A", 0.5)]),
                           TIOUS, subset="test")
    np.testing.assert_allclose(r.map, 0.5)
    with pytest.raises(EvaluationInputError, match="subset 'train'.*test, validation"):
        evaluate_detection(gt, pred_of([]), TIOUS, subset="train")


def test_no_predictions_at_all():
    r = evaluate_detection(gt_of([("v1", 0, 10, "A")]), {"results": {}}, TIOUS)
    np.testing.assert_array_equal(r.map, 0.0)
    assert r.average == 0.0


# ---------------------------------------------------------------------------------------
# agreement with the reference on random inputs

float_segs = st.tuples(st.floats(0, 50, allow_nan=False), st.floats(0.01, 20)).map(
    lambda t: (t[0], t[0] + t[1]))
int_segs = st.tuples(st.integers(0, 20), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1]))
scores = st.sampled_from([0.1, 0.5, 0.5, 0.9]) | st.floats(0, 1)


def non_empty(seg):
    """A prediction's segment: predictions of zero length are refused."""
    return seg if seg[1] > seg[0] else (seg[0], seg[0] + 1)


@st.composite
def problems(draw, max_gt=10, n_videos=5):
    """Random ground truth and predictions: integer segments (tIoU ties, zero-length ground
    truth), tied scores, predictions in videos without ground truth and with unknown
    labels."""
    segs = draw(st.sampled_from([int_segs, float_segs, int_segs | float_segs]))
    labels = draw(st.sampled_from(["A", "AB", "ABC"]))
    n_gt = draw(st.integers(1, max_gt))
    gt = [(f"v{draw(st.integers(0, n_videos - 1))}", *draw(segs), draw(st.sampled_from(labels)))
          for _ in range(n_gt)]
    int_scores = draw(st.booleans()) and draw(st.booleans())
    score = st.integers(0, 3) if int_scores else scores
    preds = [(f"v{draw(st.integers(0, n_videos + 1))}", *draw(segs.map(non_empty)),
              draw(st.sampled_from(labels + "Z")), draw(score))
             for _ in range(draw(st.integers(0, 30)))]
    return gt, preds


@settings(max_examples=200, deadline=None)
@given(problems())
def test_agrees_with_reference_loop(problem):
    gt, preds = problem
    assert_matches_reference(gt_of(gt), pred_of(preds), THUMOS14_TIOUS)


small_segs = st.tuples(st.integers(0, 12), st.integers(1, 5)).map(lambda t: (t[0], t[0] + t[1]))


@st.composite
def dense_problems(draw, max_gt=8):
    """One class in one or two videos, short integer segments: tIoU ties between ground
    truth that later predictions tell apart, so the visiting order among ties matters."""
    n_videos = draw(st.integers(1, 2))
    gt = [(f"v{draw(st.integers(0, n_videos - 1))}", *draw(small_segs), "A")
          for _ in range(draw(st.integers(1, max_gt)))]
    preds = [(f"v{draw(st.integers(0, n_videos - 1))}", *draw(small_segs), "A",
              draw(st.sampled_from([0.1, 0.5, 0.9])))
             for _ in range(draw(st.integers(1, 3 * max_gt)))]
    return gt, preds


@settings(max_examples=150, deadline=None)
@given(dense_problems())
def test_agrees_with_reference_when_tiou_ties_matter(problem):
    gt, preds = problem
    assert_matches_reference(gt_of(gt), pred_of(preds), (0.1, 0.3, 0.5))


def test_agrees_with_reference_on_many_ground_truth_per_video():
    # 20-60 ground truth per video: beyond 16 elements numpy's argsort (introsort, or SIMD
    # sorting) orders equal values differently, and the official inherits that order
    rng = np.random.default_rng(0)
    for _ in range(12):
        n_gt, n_pred = rng.integers(20, 60), rng.integers(50, 150)
        gt = [(f"v{rng.integers(2)}", int(s), int(s + rng.integers(1, 8)), "A")
              for s in rng.integers(0, 40, n_gt)]
        preds = [(f"v{rng.integers(3)}", int(s), int(s + rng.integers(1, 8)), "A",
                  float(rng.choice([0.2, 0.5, 0.7]))) for s in rng.integers(0, 40, n_pred)]
        assert_matches_reference(gt_of(gt), pred_of(preds), THUMOS14_TIOUS)


@settings(max_examples=30, deadline=None)
@given(problems(max_gt=30, n_videos=3))
def test_split_by_ground_truth_count_gives_the_same_result(problem):
    gt, preds = problem
    with pytest.MonkeyPatch.context() as mp:
        # force the memory-bounded path: every step split by ground-truth count
        mp.setattr(detection_module, "_BLOCK", 0)
        assert_matches_reference(gt_of(gt), pred_of(preds), THUMOS14_TIOUS)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_perfect_predictions_and_a_top_false_positive(problem):
    gt, _ = problem
    perfect = [(v, s, e, lab, 0.5) for v, s, e, lab in gt if e > s]
    if len(perfect) < len(gt):  # zero-length ground truth: tIoU NaN, left out here
        gt = [g for g in gt if g[2] > g[1]]
    if not gt:
        return
    r = run(gt, perfect, THUMOS14_TIOUS)
    np.testing.assert_array_equal(r.map, 1.0)
    for lab in sorted({g[3] for g in gt}):
        worse = run(gt, perfect + [("v_none", 0, 3, lab, 1.0)], THUMOS14_TIOUS)
        assert np.all(worse.map <= r.map + 1e-12)
        assert np.any(worse.map < r.map)


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(["v0", "v1", "v_none"]), st.integers(0, 8))
def test_a_false_positive_with_the_top_score_never_raises_map(problem, vid, start):
    gt, preds = problem
    if not preds:
        return
    # distinct scores: with ties the official (unstable) argsort may reorder the tied
    # predictions once the array grows, which is a change of tie order, not of ranking
    preds = [(*p[:4], p[4] + 1e-6 * i) for i, p in enumerate(preds)]
    top = max(p[4] for p in preds) + 1.0
    labels = sorted({g[3] for g in gt})
    base = run(gt, preds, THUMOS14_TIOUS)
    # far from all ground truth (segments end before 80): a false positive at any threshold
    worse = run(gt, preds + [(vid, 100 + start, 110 + start, labels[0], top)], THUMOS14_TIOUS)
    assert np.all(worse.map <= base.map + 1e-12)


# ---------------------------------------------------------------------------------------
# result formatting


def test_result_json_flat_metrics_and_table():
    gt = [("v1", 0, 10, "A"), ("v1", 20, 30, "A")]
    preds = [("v1", 0, 6, "A", 0.9), ("v1", 20, 30, "A", 0.8)]
    r = run(gt, preds)
    assert r.to_json_dict() == {"map": {"0.1": 1.0, "0.3": 1.0, "0.5": 1.0, "0.7": 0.25},
                                "average": 0.8125}
    assert r.flat_metrics() == {"map/0.1": 1.0, "map/0.3": 1.0, "map/0.5": 1.0,
                                "map/0.7": 0.25, "map/avg_0.1-0.7": 0.8125}
    lines = r.table().splitlines()
    assert len(lines) == 2 and "0.7" in lines[0] and "Avg" in lines[0]
    assert "25.00" in lines[1] and "81.25" in lines[1]
    json.dumps(r.to_json_dict())  # plain floats


def test_result_keys_for_activitynet_thresholds():
    r = evaluate_detection(gt_of([("v", 0, 10, "A")]), pred_of([("v", 0, 10, "A", 1.0)]),
                           np.linspace(0.5, 0.95, 10))
    keys = list(r.to_json_dict()["map"])
    assert keys == ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    assert "map/avg_0.5-0.95" in r.flat_metrics()
    assert all(set(k) <= set("map/avg_0123456789.-") for k in r.flat_metrics())


def test_from_ap_means():
    r = DetectionResult.from_ap(np.array([0.5, 0.7]), ["A", "B"], np.array([[1.0, 0.5],
                                                                            [0.0, 0.5]]))
    np.testing.assert_allclose(r.map, [0.5, 0.5])
    assert r.average == 0.5 and r.n_ignored_predictions == 0


# ---------------------------------------------------------------------------------------
# malformed input


def ann(**kw):
    return {"database": {"v": {"subset": "test", "annotations": [kw]}}}


@pytest.mark.parametrize("data, words", [
    ({"results": {}}, r"'database'"),
    ({"database": []}, r"'database'"),
    ({"database": {"v": 3}}, r"database\['v'\] must be a mapping"),
    ({"database": {"v": {"subset": "test"}}}, r"database\['v'\]\['annotations'\] must be a"),
    (ann(label="A"), r"\['annotations'\]\[0\] needs 'segment' and 'label'"),
    (ann(label="A", segment=[5, 1]), r"\[0\]\['segment'\] = \[5, 1\] ends before it starts"),
    (ann(label="A", segment=["x", 2]), r"\['segment'\] must be two numbers"),
    (ann(label="A", segment=[1, 2, 3]), r"\['segment'\] must be two numbers"),
    (ann(label="A", segment=[0, float("inf")]), r"\['segment'\] .* is not finite"),
    (ann(label="A", segment=[-1.5, 2]), r"\[0\]\['segment'\] = \[-1.5, 2\] starts before 0"),
    (ann(label=3, segment=[0, 1]), r"\['label'\] must be a class name"),
])
def test_malformed_ground_truth(data, words):
    with pytest.raises(EvaluationInputError, match=words):
        evaluate_detection(data, {"results": {}}, TIOUS)


def test_subset_filter_needs_subset_keys():
    with pytest.raises(EvaluationInputError, match=r"database\['v'\] has no 'subset' key"):
        evaluate_detection({"database": {"v": {"annotations": []}}}, {"results": {}}, TIOUS,
                           subset="test")


def test_ground_truth_without_annotations():
    with pytest.raises(EvaluationInputError, match="no annotations"):
        evaluate_detection(gt_of([], empty_videos=["v"]), {"results": {}}, TIOUS)


def pred(**kw):
    return {"results": {"v1": [kw]}}


@pytest.mark.parametrize("data, words", [
    ({"database": {}}, r"'results'"),
    ({"results": {"v1": {}}}, r"results\['v1'\] must be a list"),
    (pred(label="A", segment=[0, 1]), r"results\['v1'\]\[0\] needs 'label', 'segment'"),
    (pred(label="A", segment=[0, 1], score=float("nan")), r"\[0\]\['score'\] = nan is not"),
    (pred(label="A", segment=[0, 1], score="0.5"), r"\['score'\] = '0.5' is not a finite"),
    (pred(label="A", segment=[0, 1], score=True), r"\['score'\] = True is not a finite"),
    (pred(label="A", segment=[3, 1], score=0.5), r"results\['v1'\]\[0\]\['segment'\] = .*ends"),
    (pred(label="A", segment=5, score=0.5), r"\['segment'\] must be two numbers"),
    (pred(label="A", segment=[-2, 1], score=0.5), r"results\['v1'\]\[0\]\['segment'\] = "
                                                   r"\[-2, 1\] starts before 0"),
    (pred(label="A", segment=[1, 1], score=0.5), r"\[0\]\['segment'\] = \[1, 1\] is empty"),
    (pred(label="A", segment=[0, 10**400], score=0.5), r"\['segment'\] = .* is not finite"),
    (pred(label="A", segment=[0, 1], score=10**400), r"\['score'\] = 1000.* is not a finite"),
])
def test_malformed_predictions(data, words):
    with pytest.raises(EvaluationInputError, match=words):
        evaluate_detection(gt_of([("v1", 0, 10, "A")]), data, TIOUS)


@pytest.mark.parametrize("tious", [(), [float("nan")], "abc", (0.0, 0.5), (0.5, 1.5)])
def test_bad_thresholds(tious):
    with pytest.raises(EvaluationInputError, match="tious"):
        evaluate_detection(gt_of([("v1", 0, 10, "A")]), {"results": {}}, tious)


def test_numpy_values_in_dicts_are_accepted():
    preds = {"results": {"v1": [{"label": "A", "segment": np.array([0.0, 10.0]),
                                 "score": np.float32(0.7)}]}}
    r = evaluate_detection(gt_of([("v1", 0, 10, "A")]), preds, TIOUS)
    np.testing.assert_array_equal(r.map, 1.0)


def test_files_are_named_in_errors(tmp_path):
    gt = gt_of([("v1", 0, 10, "A")])
    gpath, ppath = tmp_path / "gt.json", tmp_path / "p.json"
    gpath.write_text(json.dumps(gt))
    ppath.write_text("{not json")
    with pytest.raises(EvaluationInputError, match=r"p\.json: predictions file is not valid"):
        evaluate_files(gpath, ppath, TIOUS)
    with pytest.raises(EvaluationInputError, match=r"missing\.json: ground-truth file does"):
        evaluate_files(tmp_path / "missing.json", ppath, TIOUS)
    ppath.write_text(json.dumps({"results": {"v1": [{"label": "A", "segment": [0, 1]}]}}))
    with pytest.raises(EvaluationInputError, match=r"p\.json: results\['v1'\]\[0\] needs"):
        load_predictions(ppath)
    gpath.write_text(json.dumps({"db": {}}))
    with pytest.raises(EvaluationInputError, match=r"gt\.json: ground truth needs a 'database'"):
        load_ground_truth(gpath)
    gpath.write_text(json.dumps(gt))
    ppath.write_text(json.dumps(pred_of([("v1", 0, 10, "A", 0.3)])))
    with pytest.raises(EvaluationInputError, match=r"gt\.json: no video has subset 'val'"):
        evaluate_files(gpath, ppath, TIOUS, subset="val")
    assert evaluate_files(gpath, ppath, TIOUS, subset="test").average == 1.0
    assert load_ground_truth(gpath) == gt


# ---------------------------------------------------------------------------------------
# threshold specs


def test_parse_tiou_range():
    assert parse_tiou_range("0.1:0.7:0.1") == THUMOS14_TIOUS
    assert parse_tiou_range("0.5:0.95:0.05") == ACTIVITYNET_TIOUS
    assert parse_tiou_range("0.3:0.3:0.1") == (0.3,)
    assert parse_tiou_range("0.5,0.75,0.95") == (0.5, 0.75, 0.95)
    assert parse_tiou_range("0.5") == (0.5,)
    assert parse_tiou_range(" 0.5 , 0.7") == (0.5, 0.7)


@pytest.mark.parametrize("bad", ["0.7:0.1:0.1", "abc", "0:1:0", "0.1:0.5", "1.5", "0.5,,0.7",
                                 "", "0.1:0.7:-0.1", "0,0.5", "nan"])
def test_parse_tiou_range_rejects(bad):
    with pytest.raises(EvaluationInputError, match=f"tIoU spec '{bad}' is invalid"):
        parse_tiou_range(bad)
