"""Model -> proposals -> mAP on the videos of a role (``select`` while training, ``test``
for what was chosen). Only the video branch and the localization head run
(``inference.source: loc_head``), or the video branch's class activation and attention
(``cas``): no text, no CSR, no MLLM.

:class:`ModelEvaluator` is what the training loop is given to evaluate with; the loop itself
(``train/``) knows nothing of proposals or mAP."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mllm4wtal.config import Config, from_flat, parse_override, to_flat
from mllm4wtal.data.batching import pad_batch
from mllm4wtal.data.load import load_from_config
from mllm4wtal.data.splits import assign_roles
from mllm4wtal.data.types import Video, WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation import DetectionResult, average_metric_name, evaluate_detection
from mllm4wtal.evaluation.detection import evaluate_indexed
from mllm4wtal.evaluation.io import parse_ground_truth, predictions_valid
from mllm4wtal.inference.proposals import (
    ProposalConfig,
    SnippetScores,
    VideoProposals,
    generate_proposal_arrays,
    overlaps_ambiguous,
    results_json_arrays,
)
from mllm4wtal.model.losses import topk_k
from mllm4wtal.model.mllm4wtal import MLLM4WTAL
from mllm4wtal.text.tensors import TextTensors
from mllm4wtal.train.checkpoint import load_checkpoint
from mllm4wtal.train.loop import resolve_device

TEST_PREFIX = "test/"  # metrics of the test evaluation: test/map/0.5, test/map/avg_0.1-0.7


def primary_metric(cfg: Config) -> str:
    """The metric runs are ranked by: the mean mAP over the configured tIoUs."""
    return average_metric_name(cfg.eval.tious)


def proposal_config(cfg: Config) -> ProposalConfig:
    ic = cfg.inference
    return ProposalConfig(topk_divisor=ic.topk_divisor, class_threshold=ic.class_threshold,
                          act_thresholds=ic.act_thresholds, outer_ratio=ic.outer_ratio,
                          video_score_weight=ic.video_score_weight, nms_sigma=ic.nms_sigma)


NO_LOC_HEAD = ("inference.source = 'loc_head' but loc_head.enabled = false; use --set "
               "inference.source=cas")


def check_inference(cfg: Config) -> None:
    """Refuse before training what evaluation would refuse after the first interval."""
    if cfg.inference.source == "loc_head" and not cfg.loc_head.enabled:
        raise UserError(NO_LOC_HEAD)


def topk_mean(x: Tensor, mask: Tensor, divisor: int) -> Tensor:
    """``model.losses.topk_mean`` (mean of the top-k values over time of x (B, T, C), k per
    video) for inference, bit for bit: the k largest by ``topk`` on the contiguous time axis
    instead of a full sort along the strided one, summed by the same ``cumsum`` (float64
    running sums, in decreasing order) and divided alike."""
    k = topk_k(mask, divisor)  # (B,)
    filled = x.masked_fill(~mask[..., None], float("-inf")).transpose(1, 2)  # (B, C, T)
    ranked = filled.contiguous().topk(int(k.max()), dim=2).values
    ranked = ranked.masked_fill(torch.isinf(ranked), 0.0)  # only beyond k_i, never summed
    idx = (k - 1).view(-1, 1, 1).expand(-1, x.shape[2], 1)
    return ranked.cumsum(2).gather(2, idx).squeeze(2) / k[:, None].to(x.dtype)


@torch.no_grad()
def snippet_scores(model: MLLM4WTAL, features: Tensor, mask: Tensor, source: str,
                   topk: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per video of a padded batch: (cas (T, C) logits, actionness, video scores (C,))."""
    if source == "loc_head":
        if model.loc is None:
            raise UserError(NO_LOC_HEAD)
        cas = model.localize(features, mask).float()
        act = torch.sigmoid(cas)
        scores = torch.sigmoid(topk_mean(cas, mask, topk))
    else:
        out = model.video(features, mask)
        cas = out.cas.float()[..., : model.num_classes]
        act = out.attention.float()
        scores = torch.softmax(topk_mean(out.cas.float(), mask, topk), -1)[:, : model.num_classes]
    cas, act, scores = cas.cpu().numpy(), act.cpu().numpy(), scores.cpu().numpy()
    lengths = mask.sum(1).tolist()
    return [(cas[i, :n], act[i, :n], scores[i]) for i, n in enumerate(lengths)]


def evaluate_model(model: MLLM4WTAL, dataset: WTALDataset, cfg: Config, device: torch.device,
                   batch_size: int = 16, role: str = "test") -> tuple[DetectionResult, dict]:
    """mAP of the model on the videos of ``role`` (``test``, or ``select``: what chooses,
    ``data.splits``) and the predictions (ActivityNet JSON).

    Videos are batched by length (``batch_size`` of similar length, a stable sort), so
    that a batch pads little: a third of the convolutions' work at the synthetic preset's
    lengths was padding. The model's outputs do not depend on the batch mathematically
    (padding-exact convolutions); on the CPU they are also equal bit for bit to batches in
    the dataset's order (tested). PyTorch picks a CPU convolution kernel by the batch's
    shape (a lone short video takes another one, with other last bits), so a short last
    batch is filled with empty rows: every batch has ``batch_size`` rows. On a GPU, where
    the kernel is chosen by shape, the fixed order still makes every pass of a model give
    the same numbers."""
    videos = assign_roles(dataset, cfg.data).role(role)
    was_training = model.training
    model.eval()
    with _gc_paused():
        try:
            by_length = sorted(videos, key=lambda v: v.num_snippets)
            scores = _scores(model, by_length, cfg, device, batch_size)
            per_video = _proposals(scores, by_length, dataset, cfg)
        finally:
            model.train(was_training)
        per_video = {v.name: per_video[v.name] for v in videos}
        predictions = results_json_arrays(per_video, dataset.classes, version=dataset.name)
        ground_truth = dataset.ground_truth(videos=videos)
    props = list(per_video.values())
    if not props:
        return evaluate_detection(ground_truth, predictions, cfg.eval.tious), predictions
    segment = np.stack([np.concatenate([p.start for p in props]),
                        np.concatenate([p.end for p in props])], axis=1)
    score = np.concatenate([p.score for p in props])
    if not predictions_valid(segment, score):  # let the parser name the offending item
        return evaluate_detection(ground_truth, predictions, cfg.eval.tious), predictions
    gt = parse_ground_truth(ground_truth)
    vidx = {v: i for i, v in enumerate(gt.videos)}
    video = np.repeat([vidx.get(name, -1) for name in per_video], [len(p) for p in props])
    label = np.concatenate([p.label for p in props])
    result = evaluate_indexed(gt, video, label, dataset.classes, segment, score,
                              cfg.eval.tious)
    return result, predictions


PAD_TO = 32  # batches padded to a multiple of this length: few shapes, kernels reused


def _scores(model: MLLM4WTAL, videos: list[Video], cfg: Config, device: torch.device,
            batch_size: int) -> Iterator[SnippetScores]:
    """The model's scores of each video, in order, batch by batch (every batch
    ``batch_size`` rows; see :func:`evaluate_model`)."""
    batches = [videos[b:b + batch_size] for b in range(0, len(videos), batch_size)]
    rows = batch_size if len(batches) > 1 else len(videos)
    source, topk = cfg.inference.source, cfg.inference.topk_divisor
    for chunk in batches:
        arrays = [v.features for v in chunk]
        empty = np.zeros((0, arrays[0].shape[1]), dtype=np.float32)
        longest = max(len(a) for a in arrays)
        features, mask = pad_batch(arrays + [empty] * (rows - len(chunk)),
                                   length=-(-longest // PAD_TO) * PAD_TO)
        outputs = snippet_scores(model, features.to(device), mask.to(device), source, topk)
        for v, (cas, act, scores) in zip(chunk, outputs[:len(chunk)], strict=True):
            yield SnippetScores(cas, act, v.fps, v.duration, scores)


def _proposals(scores: Iterator[SnippetScores], videos: list[Video], dataset: WTALDataset,
               cfg: Config) -> dict[str, VideoProposals]:
    """The proposals of each video (ambiguous ones removed where configured), as arrays."""
    found = {}
    proposals = generate_proposal_arrays(scores, proposal_config(cfg),
                                         dataset.frames_per_snippet)
    for v, props in zip(videos, proposals, strict=True):
        ambiguous = dataset.ambiguous.get(v.name, []) if cfg.inference.remove_ambiguous else []
        if ambiguous:
            props = props.keep(~overlaps_ambiguous(props.start, props.end, ambiguous))
        found[v.name] = props
    return found


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off: a pass builds ~500k small dicts and lists (none in
    a cycle) that would set off full collections of the process's whole heap."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class ModelEvaluator:
    """The loop's ``evaluate``: mAP of a model on the videos of ``role`` (``select`` while
    training: what chooses, ``data.splits``) and its predictions.

    Built before training, so that a config evaluation would refuse fails before the first
    iteration (:func:`check_inference`); ``metric`` and ``mode`` are what ``best.pt`` is
    chosen by (``train.best_metric``, default the average mAP; a sweep sets its own).
    """

    def __init__(self, cfg: Config, dataset: WTALDataset, role: str = "select") -> None:
        check_inference(cfg)
        self.cfg, self.dataset, self.role = cfg, assign_roles(dataset, cfg.data), role
        self.metric = cfg.train.best_metric or primary_metric(cfg)
        self.mode = cfg.train.best_mode

    def __call__(self, model: MLLM4WTAL) -> tuple[dict[str, float], dict]:
        device = next(model.parameters()).device
        result, predictions = evaluate_model(model, self.dataset, self.cfg, device,
                                             role=self.role)
        return result.flat_metrics(), predictions


def evaluate_checkpoint(path: str, overrides: list[str] | None = None
                        ) -> tuple[DetectionResult, dict]:
    """Rebuild the model of a checkpoint (its text tensors are in its state) and evaluate it
    on the test subset of its dataset; ``overrides`` may change e.g. data.root or
    inference.* keys."""
    model, cfg, dataset, device = load_checkpoint_model(path, overrides)
    return evaluate_model(model, dataset, cfg, device)


def evaluate_on_test(path: str | Path, dataset: WTALDataset | None = None
                    ) -> dict[str, float]:
    """The one test evaluation of a checkpoint chosen on ``select``: ``test/<metric>`` for
    every mAP metric, on the device this process has (``train.device=auto``)."""
    model, cfg, dataset, device = load_checkpoint_model(str(path), ["train.device=auto"],
                                                        dataset=dataset)
    result, _ = evaluate_model(model, dataset, cfg, device, role="test")
    return {f"{TEST_PREFIX}{k}": v for k, v in result.flat_metrics().items()}


#: config keys ``evaluate --checkpoint --set`` may change: where the data are, how
#: proposals are made and scored, where the model runs; the rest define the trained model
EVALUATION_KEYS = ("data.", "inference.", "eval.", "train.device", "train.bf16")


def check_evaluation_overrides(path: str, saved: Config, cfg: Config) -> None:
    """Refuse overrides that change the model a checkpoint holds, naming the keys."""
    old, new = to_flat(saved), to_flat(cfg)
    changed = [k for k in new if new[k] != old[k] and not k.startswith(EVALUATION_KEYS)]
    if changed:
        shown = ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise UserError(f"{path}: --set changes the trained model's config: {shown}{more}; "
                        "at evaluation only data.*, inference.*, eval.*, train.device and "
                        "train.bf16 may change (train a new run for another model)")


def _state_dict_problem(e: RuntimeError) -> str:
    """The first lines of torch's load_state_dict report, on one line."""
    lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
    text = "; ".join(lines) or str(e)
    return text if len(text) <= 300 else text[:297] + "..."


def load_checkpoint_model(path: str, overrides: list[str] | None = None,
                          dataset: WTALDataset | None = None
                          ) -> tuple[MLLM4WTAL, Config, WTALDataset, torch.device]:
    """The model of a checkpoint (in eval mode, on its config's device), its config with
    ``overrides``, and its dataset (``dataset`` when given, e.g. one shared by several
    checkpoints, else loaded from the config)."""
    state = load_checkpoint(path)
    saved = from_flat(state["config"], where=f"{path} config")
    extra = dict(parse_override(o) for o in overrides or [])
    cfg = from_flat({**state["config"], **extra}, where=f"{path} config with --set")
    check_evaluation_overrides(path, saved, cfg)
    if dataset is None:
        dataset = load_from_config(cfg.data)
    if dataset.classes != state["classes"]:
        raise UserError(f"{path}: trained on classes {state['classes'][:3]}..., but the "
                         f"dataset has {dataset.classes[:3]}...; point data.* at its dataset")
    weights = state["model"]
    text = None
    if "word_vectors" in weights:
        text = TextTensors(word_vectors=weights["word_vectors"], key_ids=weights["key_ids"],
                           key_count=weights["key_count"],
                           handcraft_ids=torch.zeros(
                               weights.get("ksm.handcraft", torch.zeros(1, 1)).shape[0],
                               dtype=torch.long))
    device = resolve_device(cfg.train.device)
    model = MLLM4WTAL(cfg, dataset.num_classes, dataset.feature_dim, dataset.rgb_dim, text)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # shapes or names differ: the data are not the run's
        raise UserError(f"{path}: the weights do not fit the model built for the dataset at "
                        f"data.root = {cfg.data.root!r} ({_state_dict_problem(e)}); point "
                        "data.* at the dataset the run was trained on") from None
    model.to(device).eval()
    return model, cfg, dataset, device
