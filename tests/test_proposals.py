"""Proposal generation: runs, outer-inner score, soft-NMS, seconds, ambiguous removal; the
vectorised code against the loop it replaced (``proposals_reference``): the same proposals,
in the same order, with the same float64 scores (compared with ==, not approximately)."""

from __future__ import annotations

import gc
import math

import numpy as np
import proposals_reference as reference
import pytest
import torch
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st
from mllm4wtal.config import load_config, with_overrides
from mllm4wtal.data.batching import TrainBatchSampler, pad_batch
from mllm4wtal.data.load import load_from_config
from mllm4wtal.data.synthetic import actionness as true_actionness
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
from mllm4wtal.inference import evaluate as evaluate_module
from mllm4wtal.inference import proposals as proposals_module
from mllm4wtal.inference.evaluate import evaluate_model, snippet_scores
from mllm4wtal.inference.nms import soft_nms_groups
from mllm4wtal.inference.proposals import SnippetScores, generate_proposals_many
from mllm4wtal.text.bundle import build_text_bundle
from mllm4wtal.train.dpid import DPID
from mllm4wtal.train.loop import build_model, make_batch, seed_everything


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


# --- the vectorised code gives what the loop gave ---------------------------------------

FPS = (25.0, 30.0, 10.0, 7.5, 29.97)


def random_video(rng: np.random.Generator) -> SnippetScores:
    """Scores of one video, drawn to hit the corners: single snippets, runs at the ends,
    values on the thresholds and equal scores (ties), no run at all, clipped durations."""
    t = int(rng.choice([1, 2, 3, rng.integers(4, 40), rng.integers(40, 250)]))
    c = int(rng.integers(1, 6))
    shape = (t,) if rng.random() < 0.5 else (t, c)
    kind = rng.integers(5)
    if kind == 0:  # on the thresholds: ties between runs, and runs equal at many levels
        act = rng.integers(0, 5, shape) / 4
    elif kind == 1:  # smooth bumps, like a trained model's
        walk = np.cumsum(rng.normal(size=(t + 8,) + shape[1:]), axis=0)
        act = 1 / (1 + np.exp(-(walk[8:] - walk[:-8])))
    elif kind == 2:
        act = rng.random(shape)
    elif kind == 3:  # below every threshold: no run
        act = rng.random(shape) * 0.09
    else:  # a few levels, float32 like a model's output
        act = rng.choice([0.05, 0.3, 0.3, 0.95], shape).astype(np.float32)
    cas = (np.zeros((t, c)) if rng.random() < 0.3  # equal class probabilities: equal scores
           else rng.normal(size=(t, c)) * rng.choice([0.5, 3.0]))
    scores = None if rng.random() < 0.5 else rng.choice([rng.random(c), np.full(c, 0.25)])
    fps = float(rng.choice(FPS))
    duration = (None if rng.random() < 0.4
                else float(rng.uniform(0.0, 1.2) * t * 16 / fps))
    return SnippetScores(cas, act, fps, duration, scores)


def random_config(rng: np.random.Generator) -> ProposalConfig:
    if rng.random() < 0.4:
        return ProposalConfig()
    levels = list(ProposalConfig().act_thresholds)
    thresholds = rng.choice(levels, size=int(rng.integers(1, 20)))  # shuffled, repeats
    return ProposalConfig(
        topk_divisor=int(rng.integers(1, 10)),
        class_threshold=float(rng.choice([0.0, 0.2, 0.5, 1.0])),
        act_thresholds=tuple(float(x) for x in thresholds),
        outer_ratio=float(rng.choice([0.0, 0.1, 0.25, 0.5, 1.0])),
        video_score_weight=float(rng.choice([0.0, 0.2, 1.0])),
        nms_sigma=float(rng.choice([0.01, 0.3, 2.0])),
        max_proposals=int(rng.choice([100, 7, 1, 0, -2])))


def reference_of(video: SnippetScores, config: ProposalConfig, fps_frames: int = 16):
    return reference.generate_proposals(video.cas, video.actionness, video.fps, config,
                                        fps_frames, video.duration, video.video_scores)


def new_of(video: SnippetScores, config: ProposalConfig, fps_frames: int = 16):
    return generate_proposals(video.cas, video.actionness, video.fps, config, fps_frames,
                              video.duration, video.video_scores)


@pytest.mark.parametrize("seed", range(6))
def test_random_videos_give_the_reference_proposals(seed):
    rng = np.random.default_rng(seed)
    config = random_config(rng)
    videos = [random_video(rng) for _ in range(40)]
    expected = [reference_of(v, config) for v in videos]
    assert sum(map(len, expected)) > 0
    assert [new_of(v, config) for v in videos] == expected
    assert list(generate_proposals_many(videos, config)) == expected


def test_chunks_change_nothing(monkeypatch):
    rng = np.random.default_rng(11)
    videos = [random_video(rng) for _ in range(60)]
    expected = [reference_of(v, ProposalConfig(), 8) for v in videos]
    for chunk in (1, 50, 700):
        monkeypatch.setattr(proposals_module, "CHUNK_SNIPPETS", chunk)
        assert list(generate_proposals_many(iter(videos), ProposalConfig(), 8)) == expected


def test_ties_keep_the_loops_order():
    # every run scores the same: soft-NMS and the final sort must break ties as the loop did
    act = np.array([0.5, 0.5, 0.0, 0.5, 0.0, 0.5, 0.5, 0.5, 0.0, 0.5])
    video = SnippetScores(np.zeros((10, 3)), np.stack([act, act[::-1], act], 1), 25.0)
    config = ProposalConfig(video_score_weight=0.0, outer_ratio=0.0)
    expected = reference_of(video, config)
    assert len({p.score for p in expected}) < len(expected)  # the tie is there
    assert new_of(video, config) == expected


def test_single_snippet_and_empty_videos():
    config = ProposalConfig()
    for video in (SnippetScores(np.ones((1, 2)), np.ones(1), 25.0),
                  SnippetScores(np.ones((1, 2)), np.ones((1, 2)), 25.0, duration=0.1),
                  SnippetScores(np.ones((4, 2)), np.zeros(4), 25.0),
                  SnippetScores(np.ones((4, 2)), np.ones(4), 25.0, duration=0.0)):
        assert new_of(video, config) == reference_of(video, config)
    assert new_of(SnippetScores(np.ones((1, 2)), np.ones(1), 25.0), config)
    assert new_of(SnippetScores(np.ones((4, 2)), np.ones(4), 25.0, duration=0.0), config) == []


def test_duration_clips_and_drops_like_the_loop():
    act = np.zeros(40)
    act[5:15] = act[30:40] = 0.8
    cas = np.random.default_rng(0).normal(size=(40, 2))
    for duration in (None, 100.0, 20.48, 20.0, 19.2, 10.0, 3.2, 0.5, 0.0):
        video = SnippetScores(cas, act, 25.0, duration)
        got = new_of(video, ProposalConfig())
        assert got == reference_of(video, ProposalConfig())
        if duration is not None:
            assert all(p.end <= duration for p in got)


quarters = st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), t=st.integers(1, 30), c=st.integers(1, 4), per_class=st.booleans(),
       duration=st.one_of(st.none(), st.floats(0.0, 25.0)))
def test_hypothesis_sequences_give_the_reference_proposals(data, t, c, per_class, duration):
    act = np.array(data.draw(st.lists(quarters, min_size=t * c, max_size=t * c)))
    act = act.reshape(t, c) if per_class else act[:t]
    cas = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 2.0]), min_size=t * c,
                                      max_size=t * c))).reshape(t, c)
    video = SnippetScores(cas, act, 25.0, duration)
    assert new_of(video, ProposalConfig()) == reference_of(video, ProposalConfig())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny synthetic benchmark and its full model after a few DPID steps."""
    cfg = load_config("synthetic", TINY + [f"text.cache_dir={tmp_path_factory.mktemp('c')}"])
    data = load_from_config(cfg.data)
    seed_everything(0)
    text = build_text_bundle(cfg, data)
    model = build_model(cfg, data, text)
    dpid = DPID(model, cfg)
    sampler = TrainBatchSampler.from_dataset(data, batch_size=cfg.data.batch_size,
                                             max_seqlen=cfg.data.max_seqlen, n_similar=1, seed=0)
    rng = np.random.default_rng(0)
    for it in range(4):
        dpid.step(make_batch(cfg, data, sampler, text, rng), it)
    return cfg, data, model.eval()


@pytest.mark.parametrize("source", ["loc_head", "cas"])
def test_synthetic_model_outputs_give_the_reference_proposals(trained, source):
    cfg, data, model = trained
    videos = data.test
    features, mask = pad_batch([v.features for v in videos])
    scored = snippet_scores(model, features, mask, source, cfg.inference.topk_divisor)
    inputs = [SnippetScores(cas, act, v.fps, v.duration, scores)
              for v, (cas, act, scores) in zip(videos, scored, strict=True)]
    # and the benchmark's true actionness, noised: long equal runs at every threshold
    rng = np.random.default_rng(0)
    inputs += [SnippetScores(cas, np.clip(true_actionness(v) + rng.normal(0, 0.1, len(cas)),
                                          0, 1), v.fps, v.duration)
               for v, (cas, _, _) in zip(videos, scored, strict=True)]
    config = evaluate_module.proposal_config(cfg)
    expected = [reference_of(v, config, data.frames_per_snippet) for v in inputs]
    assert sum(map(len, expected)) > len(inputs)
    assert list(generate_proposals_many(inputs, config, data.frames_per_snippet)) == expected


@pytest.mark.parametrize("source", ["loc_head", "cas"])
def test_evaluation_pass_is_unchanged(trained, source):
    """mAP and predictions of a whole pass equal the pass before issue 15 (batches of 16 in
    the dataset's order, the whole video branch, the proposal loop)."""
    cfg, data, model = trained
    cfg = with_overrides(cfg, {"inference.source": source})
    result, predictions = evaluate_model(model, data, cfg, torch.device("cpu"))
    ref_result, ref_predictions = reference.evaluate_model(model, data, cfg, torch.device("cpu"))
    assert list(predictions["results"]) == [v.name for v in data.test]
    assert predictions == ref_predictions
    assert result.flat_metrics() == ref_result.flat_metrics()


@pytest.mark.parametrize("batch_size", [3, 7])  # 7: a last batch of one, filled
@pytest.mark.parametrize("source", ["loc_head", "cas"])
def test_pass_does_not_depend_on_how_videos_are_batched(trained, source, batch_size):
    """Batches of other sizes and members (the pass sorts videos by length) give the
    reference's predictions and mAP, bit for bit, in the dataset's order."""
    cfg, data, model = trained
    cfg = with_overrides(cfg, {"inference.source": source})
    assert len({v.num_snippets for v in data.test}) > 1  # the sort does reorder
    result, predictions = evaluate_model(model, data, cfg, torch.device("cpu"),
                                         batch_size=batch_size)
    ref_result, ref_predictions = reference.evaluate_model(model, data, cfg, torch.device("cpu"))
    assert list(predictions["results"]) == [v.name for v in data.test]
    assert predictions == ref_predictions
    assert result.flat_metrics() == ref_result.flat_metrics()


# --- the pieces -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_runs_and_outer_inner_scores_match_the_loop(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        t = int(rng.integers(1, 60))
        mask = rng.random(t) < rng.random()
        runs = contiguous_runs(mask)
        assert runs == reference.contiguous_runs(mask)
        table = rng.random((t, 3)).astype(rng.choice([np.float32, np.float64]))
        sequence = table[:, 1]  # a strided column, as the loop scored
        ratio = float(rng.choice([0.0, 0.25, 0.5, 1.0]))
        for s, e in runs:
            assert (outer_inner_score(sequence, s, e, ratio)
                    == reference.outer_inner_score(sequence, s, e, ratio))


@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n = int(rng.integers(0, 60))
        start = rng.integers(0, 20, n) / 2
        props = [Proposal(int(lab), float(s), float(s + d), float(sc)) for lab, s, d, sc in zip(
            rng.integers(0, 4, n), start, rng.integers(1, 8, n) / 2,
            rng.choice([rng.normal(), 0.5, -0.25, 1.0], n), strict=True)]
        for min_score in (-np.inf, 0.1, 0.6):
            assert (soft_nms(props, 0.3, min_score)
                    == reference.soft_nms(props, 0.3, min_score))


def test_soft_nms_groups_are_independent():
    rng = np.random.default_rng(5)
    start = rng.integers(0, 10, 30) / 1.0
    end, score = start + rng.integers(1, 5, 30), rng.random(30)
    sizes = np.array([0, 12, 1, 0, 17])
    kept, kept_score = soft_nms_groups(start, end, score, sizes, 0.3)
    first = np.cumsum(sizes) - sizes
    expected = []
    for f, n in zip(first, sizes, strict=True):
        group = [Proposal(0, start[i], end[i], score[i]) for i in range(f, f + n)]
        expected += [(p.start, p.end, p.score) for p in reference.soft_nms(group, 0.3)]
    assert [(start[i], end[i], s) for i, s in zip(kept, kept_score, strict=True)] == expected


def test_pass_leaves_the_garbage_collector_as_it_was(trained, monkeypatch):
    """The pass pauses the cyclic GC; it is back on afterwards, after a failure too, and
    stays off for a caller that had turned it off."""
    cfg, data, model = trained
    evaluate_model(model, data, cfg, torch.device("cpu"))
    assert gc.isenabled()

    def broken(*args, **kwargs):
        assert not gc.isenabled()
        raise RuntimeError("model failed")

    monkeypatch.setattr(evaluate_module, "snippet_scores", broken)
    with pytest.raises(RuntimeError, match="model failed"):
        evaluate_model(model, data, cfg, torch.device("cpu"))
    assert gc.isenabled() and model.training is False
    gc.disable()
    try:
        with pytest.raises(RuntimeError):
            evaluate_model(model, data, cfg, torch.device("cpu"))
        assert not gc.isenabled()
    finally:
        gc.enable()
