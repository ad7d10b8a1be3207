"""The config tree: one frozen dataclass per section, every leaf with its help text and its
allowed values (``min``/``max`` inclusive, ``choices``, or ``valid``: a predicate and the
range it accepts in words), read by the validator and by ``mllm4wtal config --explain``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from mllm4wtal.config.ranges import TIOU_RANGE, is_tiou


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A config leaf: default value plus the metadata the validator reads."""
    return field(default=default, metadata={"help": help, **meta})


def _sub(cls: type) -> Any:
    return field(default_factory=cls)


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic benchmark (``data.synthetic.*``); defaults are THUMOS-shaped."""

    seed: int = _f(0, "generator seed: same seed and knobs give byte-identical data",
                   min=0, max=2**63 - 1)
    num_classes: int = _f(20, "classes: the first N of a THUMOS-like table, generic ones beyond",
                          min=2, max=200)
    train_videos: int = _f(200, "videos of the training subset ('validation')", min=2,
                           max=100_000)
    test_videos: int = _f(200, "videos of the test subset ('test')", min=1, max=100_000)
    rgb_dim: int = _f(64, "width of the RGB (appearance) stream; THUMOS I3D has 1024",
                      min=4, max=4096)
    flow_dim: int = _f(64, "width of the flow (motion) stream; THUMOS I3D has 1024",
                       min=4, max=4096)
    fps: float = _f(25.0, "frame rate; a snippet is 16 frames", min=1.0, max=240.0)
    min_len: int = _f(64, "shortest video, snippets", min=16, max=100_000)
    max_len: int = _f(320, "longest video, snippets", min=16, max=100_000)
    max_instances: int = _f(6, "instances of a class per video: uniform in 1..this (fewer if "
                            "the video is too short)", min=1, max=50)
    second_class_prob: float = _f(0.2, "chance that a video holds a second class",
                                  min=0.0, max=1.0)
    min_instance_len: int = _f(4, "shortest instance, snippets", min=3, max=10_000)
    max_instance_len: int = _f(30, "longest instance, snippets", min=3, max=10_000)
    core_share: float = _f(0.4, "mean share of an instance taken by its class-specific core "
                           "(the rest splits into approach and follow-through)",
                           min=0.1, max=1.0)
    core_strength: float = _f(1.0, "amplitude of the core sub-action (motion; appearance half)",
                              min=0.0, max=10.0)
    phase_strength: float = _f(0.6, "amplitude of approach / follow-through: weaker than the "
                               "core -> incomplete localisation", min=0.0, max=10.0)
    shared_subactions: bool = _f(True, "approach / follow-through prototypes are shared by the "
                                 "classes that name the same phase (False: all class-specific)",
                                 choices=[True, False])
    scene_strength: float = _f(0.8, "amplitude of the class scene in the RGB stream, over the "
                               "instance and its context", min=0.0, max=10.0)
    context_len: int = _f(6, "snippets of scene context (RGB only, no motion) on each side of "
                          "an instance -> over-complete localisation", min=0, max=256)
    clutter_strength: float = _f(0.5, "amplitude of generic background scene (RGB); camera "
                                 "motion (flow) gets half", min=0.0, max=10.0)
    hard_negative_prob: float = _f(0.2, "chance per video of one unannotated hard negative: a "
                                   "shared sub-action in the class scene without its core",
                                   min=0.0, max=1.0)
    amplitude_jitter: float = _f(0.3, "relative per-instance / per-video amplitude spread "
                                 "(uniform in 1 +- this)", min=0.0, max=0.9)
    noise: float = _f(0.45, "std of Gaussian noise per feature (prototypes have norm 1)",
                      min=0.0, max=10.0)
    smoothing: int = _f(3, "temporal moving-average window, I3D-like (1 = none)", min=1, max=15)

    def __post_init__(self) -> None:
        for f in fields(self):
            v, meta = getattr(self, f.name), f.metadata
            name = f"synthetic.{f.name}"
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} = {v!r} is not a finite number")
            if "choices" in meta and v not in meta["choices"]:
                raise ValueError(f"{name} = {v!r} is not one of {meta['choices']}")
            if ("min" in meta and v < meta["min"]) or ("max" in meta and v > meta["max"]):
                raise ValueError(f"{name} = {v!r} is outside [{meta.get('min')}, "
                                 f"{meta.get('max')}]")
        if self.min_len > self.max_len:
            raise ValueError(f"synthetic.min_len = {self.min_len} exceeds synthetic.max_len = "
                             f"{self.max_len}")
        if self.min_instance_len > self.max_instance_len:
            raise ValueError(f"synthetic.min_instance_len = {self.min_instance_len} exceeds "
                             f"synthetic.max_instance_len = {self.max_instance_len}")
        need = footprint(self.max_instance_len, self.context_len)
        if need > self.min_len:
            raise ValueError(f"synthetic.min_len = {self.min_len} is too short for one instance "
                             f"of max_instance_len with its context: need >= {need}")


def footprint(length: int, context_len: int) -> int:
    """Snippets an item occupies: itself, its context, one background snippet each side."""
    return length + 2 * context_len + 2


@dataclass(frozen=True)
class DataConfig:
    format: str = _f("synthetic", "where features come from",
                     choices=["synthetic", "wtal", "per_video", "packed"])
    root: str = _f("", "directory of the feature/annotation files (unused for synthetic)")
    name: str = _f("Thumos14reduced", "file stem: <root>/<name>-I3D-JOINTFeatures.npy etc.")
    train_subset: str = _f("validation", "annotation subset used for training")
    test_subset: str = _f("test", "annotation subset used for evaluation")
    feature_dim: int = _f(2048, "snippet feature width, RGB then flow", min=2)
    rgb_dim: int = _f(1024, "width of the RGB block; flow is the rest", min=1)
    fps: float = _f(25.0, "frame rate the features were extracted at", min=1e-3)
    frames_per_snippet: int = _f(16, "frames per I3D snippet", min=1)
    max_seqlen: int = _f(320, "snippets per training video (sampled or padded)", min=8)
    batch_size: int = _f(10, "videos per training batch", min=1)
    n_similar: int = _f(3, "class-sharing video pairs per batch (CO2-Net sampling)", min=0)
    select: str = _f("holdout", "videos that choose (best.pt, sweeps, ablations): holdout = a "
                     "seeded class-stratified share of the training videos, held out of "
                     "training; test = the test subset (the field's protocol: chosen on test)",
                     choices=["holdout", "test"])
    select_fraction: float = _f(0.15, "share of the training videos held out (select: holdout)",
                                min=0.01, max=0.5)
    select_seed: int = _f(0, "seed of the hold-out draw (the same for every trial of a sweep)",
                          min=0)
    synthetic: SyntheticConfig = _sub(SyntheticConfig)


@dataclass(frozen=True)
class TextConfig:
    backend: str = _f("template", "description source", choices=["template", "file"])
    store: str = _f("", "JSONL description store (backend=file)")
    fallback_to_template: bool = _f(False, "fill (video, class) pairs missing from the store")
    vectors: str = _f("", "word vectors file; empty = train word2vec on the descriptions")
    vectors_format: str = _f("glove", "format of text.vectors",
                             choices=["glove", "word2vec_text", "word2vec_bin", "gensim"])
    vector_dim: int = _f(300, "word-vector width (trained fallback)", min=2)
    vocab_size: int = _f(10000, "largest vocabulary kept", min=8)
    max_key_len: int = _f(24, "tokens of a key description", min=2)
    max_complete_len: int = _f(48, "tokens of a complete description", min=2)
    cache_dir: str = _f("~/.cache/mllm4wtal", "cache for converted / trained word vectors")


@dataclass(frozen=True)
class ModelConfig:
    base: str = _f("mil", "base WTAL model", choices=["mil", "co2net", "delu", "um"])
    hidden_dim: int = _f(2048, "width of the video embedding F_e", min=8)
    dropout: float = _f(0.7, "dropout in the video embedding", min=0.0, max=0.99)
    norm_weight: float = _f(0.8, "weight of the base model's attention sparsity term (mean "
                            "attention; 0.8 in the CO2-Net and DELU code bases)", min=0.0)


@dataclass(frozen=True)
class KSMConfig:
    enabled: bool = _f(True, "Key Semantic Matching (eq. 4-10); off = base conv class head")
    prompt: str = _f("learnable", "query context: learnable tokens shared by all classes (CoOp's "
                     "unified context, the paper's), learnable tokens per class (CoOp's "
                     "class-specific context) or a hand-written prompt",
                     choices=["learnable", "class_specific", "handcraft"])
    n_ctx: int = _f(8, "learnable context tokens N_context", min=0, max=64)
    dim: int = _f(512, "width of the query transformer (queries are projected to H)", min=8)
    layers: int = _f(1, "transformer encoder layers for the queries", min=1, max=12)
    heads: int = _f(4, "attention heads", min=1)
    topk: int = _f(8, "top-k MIL: k = max(1, T // topk) snippets", min=1)


@dataclass(frozen=True)
class CSRConfig:
    enabled: bool = _f(True, "Complete Semantic Reconstruction (eq. 11-17)")
    dim: int = _f(512, "width of F_complete and of the reconstructor", min=8)
    reconstructor: str = _f("transformer", "decoder family", choices=["transformer", "gru", "lstm"])
    layers: int = _f(1, "encoder/decoder layers", min=1, max=12)
    heads: int = _f(4, "attention heads", min=1)
    mask_ratio: float = _f(1 / 3, "share of the words of a complete description masked",
                           min=0.01, max=1.0)
    key_word_weight: float = _f(3.0, "sampling weight of key action words when masking", min=1.0)
    contrast: bool = _f(False, "hinge contrast against whole video and complement")
    gamma1: float = _f(0.1, "margin vs the whole video (contrast)", min=0.0)
    gamma2: float = _f(0.1, "margin vs the complement 1-A (contrast)", min=0.0)


@dataclass(frozen=True)
class LocHeadConfig:
    enabled: bool = _f(True, "prior-driven localization head (eq. 18)")
    fg_threshold: float = _f(0.5, "prior above this: foreground pseudo-label", min=0.0, max=1.0)
    bg_threshold: float = _f(0.2, "prior below this: background pseudo-label", min=0.0, max=1.0)
    focal_alpha: float = _f(0.25, "sigmoid focal loss alpha", min=0.0, max=1.0)
    focal_gamma: float = _f(2.0, "sigmoid focal loss gamma", min=0.0)


@dataclass(frozen=True)
class LossConfig:
    lambda1: float = _f(1.5, "weight of MSE(A_KSM, sg(A_CSR)) in L_match (eq. 19)", min=0.0)
    lambda2: float = _f(1.5, "weight of MSE(A_CSR, sg(A_KSM)) in L_rec (eq. 20)", min=0.0)
    mu1: float = _f(1.0, "weight of L_loc in L_match (eq. 19)", min=0.0)


@dataclass(frozen=True)
class DPIDConfig:
    distill: str = _f("mse", "attention distillation",
                      choices=["mse", "kl", "mae", "share", "none", "ternary_kd"])
    schedule: str = _f("alternate", "phase schedule", choices=["alternate", "joint"])
    warmup_iterations: int = _f(0, "iterations of the KSM side alone first", min=0)
    teacher_dropout: bool = _f(True, "teacher passes (sg(A_CSR), sg(A_KSM)) keep dropout "
                               "(train mode); false: eval mode. Measured on the synthetic "
                               "benchmark: see README", choices=[True, False])
    delta_h: float = _f(0.6, "ternary KD: confident-foreground threshold", min=0.0, max=1.0)
    delta_l: float = _f(0.2, "ternary KD: confident-background threshold", min=0.0, max=1.0)
    tau: float = _f(0.07, "ternary KD: contrast temperature", min=1e-4)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = _f(5000, "training iterations", min=1)
    lr: float = _f(5e-4, "Adam learning rate", min=0.0, max=1.0)
    weight_decay: float = _f(1e-3, "Adam weight decay", min=0.0)
    eval_interval: int = _f(100, "evaluate, report and checkpoint every N iterations", min=1)
    seed: int = _f(0, "seed of data sampling, init and dropout", min=0)
    device: str = _f("auto", "compute device", choices=["auto", "cpu", "cuda"])
    bf16: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU)")
    out_dir: str = _f("runs", "where runs write checkpoints and predictions")
    best_metric: str = _f("", "metric best.pt is chosen by, on the select videos (empty: the "
                          "average mAP; a sweep sets its own metric)")
    best_mode: str = _f("max", "whether a higher or lower best_metric is better",
                        choices=["max", "min"])


@dataclass(frozen=True)
class InferenceConfig:
    source: str = _f("loc_head", "actionness/CAS used for proposals", choices=["loc_head", "cas"])
    topk_divisor: int = _f(8, "video score = mean of the top T // this CAS values", min=1)
    class_threshold: float = _f(0.2, "classes localised: softmax score >= this", min=0.0, max=1.0)
    act_thresholds: tuple[float, ...] = _f(
        (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85,
         0.9),
        "thresholds on the actionness", min=0.0, max=1.0)
    outer_ratio: float = _f(0.25, "outer region of the outer-inner score", min=0.0, max=1.0)
    video_score_weight: float = _f(0.2, "share of the video score in a proposal score", min=0.0)
    nms_sigma: float = _f(0.3, "Gaussian soft-NMS sigma", min=1e-3)
    remove_ambiguous: bool = _f(True, "drop proposals on THUMOS14 ambiguous segments")


@dataclass(frozen=True)
class EvalConfig:
    tious: tuple[float, ...] = _f((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
                                  "tIoU thresholds of mAP", valid=(is_tiou, f"in {TIOU_RANGE}"))


@dataclass(frozen=True)
class Config:
    data: DataConfig = _sub(DataConfig)
    text: TextConfig = _sub(TextConfig)
    model: ModelConfig = _sub(ModelConfig)
    ksm: KSMConfig = _sub(KSMConfig)
    csr: CSRConfig = _sub(CSRConfig)
    loc_head: LocHeadConfig = _sub(LocHeadConfig)
    loss: LossConfig = _sub(LossConfig)
    dpid: DPIDConfig = _sub(DPIDConfig)
    train: TrainConfig = _sub(TrainConfig)
    inference: InferenceConfig = _sub(InferenceConfig)
    eval: EvalConfig = _sub(EvalConfig)


PRESETS = ("synthetic", "thumos14", "activitynet12")


