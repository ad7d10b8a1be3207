"""Proposal generation: runs, outer-inner score, soft-NMS, seconds, ambiguous removal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mllm4wtal.inference import (
    Proposal,
    ProposalConfig,
    contiguous_runs,
    generate_proposals,
    outer_inner_score,
    remove_ambiguous,
    results_json,
    select_classes,
    soft_nms,
    video_level_scores,
)


@pytest.mark.parametrize("mask, runs", [
    ([0, 0, 0], []), ([1, 1, 1], [(0, 3)]), ([1, 0, 1], [(0, 1), (2, 3)]),
    ([0, 1, 1, 0, 1], [(1, 3), (4, 5)]),
])
def test_contiguous_runs(mask, runs):
    assert contiguous_runs(np.array(mask, bool)) == runs


def test_outer_inner_score_by_hand():
    seq = np.array([0.0, 0.2, 1.0, 1.0, 1.0, 1.0, 0.4, 0.0])
    # run [2, 6): inner 1.0; margin max(1, int(4 * 0.25)) = 1: outer mean(0.2, 0.4) = 0.3
    assert outer_inner_score(seq, 2, 6, 0.25) == pytest.approx(0.7)
    assert outer_inner_score(seq, 0, 2, 0.25) == pytest.approx(0.1 - 1.0)  # left edge clipped


def test_video_scores_topk_and_argmax_fallback():
    cas = np.array([[4.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    # k = max(1, 4 // 2) = 2: class 0 mean(4, 2) = 3, class 1 mean 0
    s = video_level_scores(cas, 2)
    assert s == pytest.approx(np.exp([3, 0]) / np.exp([3, 0]).sum())
    assert list(select_classes(np.array([0.1, 0.15]), 0.2)) == [1]
    assert list(select_classes(np.array([0.5, 0.3, 0.2]), 0.25)) == [0, 1]


def test_soft_nms_decays_duplicates_only_within_a_class():
    a = Proposal(0, 0.0, 1.0, 1.0)
    out = soft_nms([a, Proposal(0, 0.0, 1.0, 0.8), Proposal(1, 0.0, 1.0, 0.5),
                    Proposal(0, 5.0, 6.0, 0.6)], sigma=0.5)
    scores = {(p.label, p.start, round(p.score, 6)) for p in out}
    assert (0, 0.0, 1.0) in scores
    assert (0, 0.0, round(0.8 * math.exp(-1 / 0.5), 6)) in scores  # tIoU 1 duplicate
    assert (1, 0.0, 0.5) in scores and (0, 5.0, 0.6) in scores  # other class / disjoint


def test_generate_recovers_a_planted_segment_in_seconds():
    t, fps = 40, 25.0
    act = np.zeros(t)
    act[10:20] = 1.0
    cas = np.full((t, 3), -3.0)
    cas[10:20, 1] = 3.0
    props = generate_proposals(cas, act, fps, ProposalConfig(), 16)
    best = props[0]
    assert best.label == 1
    assert (best.start, best.end) == pytest.approx((10 * 16 / fps, 20 * 16 / fps))
    clipped = generate_proposals(cas, act, fps, ProposalConfig(), 16, duration=7.0)
    assert max(p.end for p in clipped) <= 7.0


def test_ambiguous_removal_and_results_json():
    props = [Proposal(0, 1.0, 2.0, 0.9), Proposal(1, 5.0, 6.0, 0.8)]
    kept = remove_ambiguous(props, [(1.5, 1.7)])
    assert kept == [props[1]]
    js = results_json({"v": kept}, ["A", "B"])
    assert js["results"]["v"] == [{"label": "B", "segment": [5.0, 6.0], "score": 0.8}]


@pytest.mark.parametrize("cas, act, words", [
    (np.zeros(5), np.zeros(5), "cas must be"),
    (np.zeros((5, 2)), np.zeros(4), "actionness must be"),
    (np.full((5, 2), np.nan), np.zeros(5), "NaN"),
])
def test_bad_inputs_name_the_argument(cas, act, words):
    with pytest.raises(ValueError, match=words):
        generate_proposals(cas, act, 25.0, ProposalConfig())
