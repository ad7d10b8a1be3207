"""The evaluation pass before issue 15, kept verbatim as the reference the new one must
match exactly: same proposals, same order, same float64 scores, same mAP. For tests and
``jobs/bench/scaling.py --compare-reference`` only.

A Python loop over classes x thresholds x runs, a per-proposal soft-NMS loop, and the
pass that fed them: batches of 16 videos in the dataset's order, the whole video branch
(KSM included) for every inference source.
"""

from __future__ import annotations

import numpy as np
import torch
from mllm4wtal.data.batching import pad_batch
from mllm4wtal.evaluation import evaluate_detection
from mllm4wtal.inference import Proposal, ProposalConfig, remove_ambiguous, results_json
from mllm4wtal.inference.evaluate import proposal_config
from mllm4wtal.model.losses import topk_mean


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


@torch.no_grad()
def snippet_scores(model, features, mask, source, topk):
    out = model.video(features, mask)
    if source == "loc_head":
        cas = out.loc_logits.float()
        act = torch.sigmoid(cas)
        scores = torch.sigmoid(topk_mean(cas, mask, topk))
    else:
        cas = out.cas.float()[..., : model.num_classes]
        act = out.attention.float()
        scores = torch.softmax(topk_mean(out.cas.float(), mask, topk), -1)[:, : model.num_classes]
    res = []
    for i in range(features.shape[0]):
        n = int(mask[i].sum())
        res.append((cas[i, :n].cpu().numpy(), act[i, :n].cpu().numpy(), scores[i].cpu().numpy()))
    return res


def evaluate_model(model, dataset, cfg, device, batch_size=16):
    was_training = model.training
    model.eval()
    pcfg = proposal_config(cfg)
    videos = dataset.test
    per_video = {}
    for b in range(0, len(videos), batch_size):
        chunk = videos[b:b + batch_size]
        features, mask = pad_batch([v.features for v in chunk])
        scored = snippet_scores(model, features.to(device), mask.to(device),
                                cfg.inference.source, cfg.inference.topk_divisor)
        for v, (cas, act, scores) in zip(chunk, scored, strict=True):
            props = generate_proposals(cas, act, v.fps, pcfg, dataset.frames_per_snippet,
                                       v.duration, video_scores=scores)
            if cfg.inference.remove_ambiguous:
                props = remove_ambiguous(props, dataset.ambiguous.get(v.name, []))
            per_video[v.name] = props
    model.train(was_training)
    predictions = results_json(per_video, dataset.classes, version=dataset.name)
    result = evaluate_detection(dataset.ground_truth(dataset.test_subset), predictions,
                                cfg.eval.tious)
    return result, predictions
