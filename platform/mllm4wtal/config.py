"""Typed configuration tree, presets, YAML files and dotted overrides.

A config is a tree of frozen dataclasses. Every leaf field carries ``metadata``:
``help`` (shown by ``mllm4wtal config --explain``), and optionally ``min``/``max``
(inclusive bounds) or ``choices``. Presets (``synthetic``, ``thumos14``,
``activitynet12``) are YAML files shipped in ``mllm4wtal/presets/``; a user YAML
may start from one with ``base: <preset or path>``.

Values a user can get wrong end in one :class:`ConfigError` that names the key,
the allowed values and, for a typo, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mllm4wtal.data.synthetic import SyntheticConfig
from mllm4wtal.errors import UserError


class ConfigError(UserError):
    """A user-facing configuration error (bad key, type, range or file)."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A config leaf: default value plus the metadata the validator reads."""
    return field(default=default, metadata={"help": help, **meta})


def _sub(cls: type) -> Any:
    return field(default_factory=cls)


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
                                  "tIoU thresholds of mAP", min=0.0, max=1.0)


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


# --------------------------------------------------------------------------- introspection


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaf_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf as ``dotted key -> (type, dataclasses.Field)``, in declaration order."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            out.update(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (tp, f)
    return out


def _sections(cls: type = Config, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out.add(prefix + f.name)
            out |= _sections(tp, f"{prefix}{f.name}.")
    return out


def did_you_mean(key: str, valid: list[str]) -> str:
    tail = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == tail]  # right leaf, wrong section
    close = same_leaf[:1] or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def describe_allowed(tp: Any, meta: dict) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    kind = _type_name(tp)
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} >= {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, meta: dict, value: Any, where: str) -> Any:
    """Check one leaf value against its type and metadata; return the typed value."""
    allowed = describe_allowed(tp, meta)
    bad = ConfigError(f"{where}: '{key}' = {value!r} is invalid; expected {allowed}")
    if typing.get_origin(tp) is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise bad
        elem = typing.get_args(tp)[0]
        return tuple(_coerce(key, elem, meta, v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad
    elif tp is float:
        if isinstance(value, str):  # PyYAML reads 5e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
        if not math.isfinite(value):
            raise bad
    elif tp is str:
        if not isinstance(value, str):
            raise bad
    if "choices" in meta and value not in meta["choices"]:
        raise bad
    if "min" in meta and value < meta["min"]:
        raise bad
    if "max" in meta and value > meta["max"]:
        raise bad
    return value


# --------------------------------------------------------------------------- building


def _merge(tree: dict, update: dict) -> dict:
    out = dict(tree)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _flatten_tree(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten_tree(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _build(cls: type, values: dict[str, Any], prefix: str, where: str) -> Any:
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if _is_section(tp):
            kwargs[f.name] = _build(tp, values, key + ".", where)
        elif key in values:
            kwargs[f.name] = _coerce(key, tp, dict(f.metadata), values[key], where)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own cross-field check (e.g. SyntheticConfig)
        raise ConfigError(f"{where}: section '{prefix.rstrip('.')}': {e}") from None


def from_flat(flat: dict[str, Any], where: str = "config") -> Config:
    """Build and validate a Config from ``{"a.b": value}``; missing keys keep defaults."""
    leaves = leaf_fields()
    valid = list(leaves)
    sections = _sections()
    for key in flat:
        if key in sections:
            raise ConfigError(f"{where}: '{key}' is a section, not a value; set one of its keys, "
                              f"e.g. '{next(k for k in valid if k.startswith(key + '.'))}'")
        if key not in leaves:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, valid)}")
    cfg = _build(Config, flat, "", where)
    check_cross_fields(cfg, where)
    return cfg


def check_cross_fields(cfg: Config, where: str) -> None:
    if cfg.data.format != "synthetic" and cfg.data.rgb_dim >= cfg.data.feature_dim:
        raise ConfigError(f"{where}: 'data.rgb_dim' = {cfg.data.rgb_dim} must be smaller than "
                          f"'data.feature_dim' = {cfg.data.feature_dim} (flow is the rest)")
    if cfg.loc_head.bg_threshold > cfg.loc_head.fg_threshold:
        raise ConfigError(f"{where}: 'loc_head.bg_threshold' = {cfg.loc_head.bg_threshold} must "
                          f"not exceed 'loc_head.fg_threshold' = {cfg.loc_head.fg_threshold}")
    if cfg.dpid.delta_l > cfg.dpid.delta_h:
        raise ConfigError(f"{where}: 'dpid.delta_l' = {cfg.dpid.delta_l} must not exceed "
                          f"'dpid.delta_h' = {cfg.dpid.delta_h}")


def to_flat(cfg: Any) -> dict[str, Any]:
    """The config as ``{"a.b": value}`` (tuples as lists); ``from_flat`` inverts it."""
    flat: dict[str, Any] = {}
    for key in leaf_fields(type(cfg)):
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def to_tree(cfg: Config) -> dict:
    """The config as nested dicts, as written to YAML."""
    tree: dict = {}
    for key, value in to_flat(cfg).items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.lambda1=2.0"`` -> ``("loss.lambda1", 2.0)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. loss.lambda1=2.0")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = ""
    return key.strip(), value


def _preset_text(name: str) -> str:
    return resources.files("mllm4wtal").joinpath("presets", f"{name}.yaml").read_text()


def _read_yaml(source: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """Flat values of a preset or YAML file, with its ``base:`` chain resolved."""
    if source in PRESETS:
        text, where = _preset_text(source), f"preset '{source}'"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"config '{source}' is neither a preset ({', '.join(PRESETS)}) "
                              "nor an existing YAML file")
        text, where = path.read_text(), str(path)
    if source in seen:
        raise ConfigError(f"{where}: 'base' chain loops: {' -> '.join(seen + (source,))}")
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    base = tree.pop("base", None)
    flat = _flatten_tree(tree)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: 'base' must name a preset or a YAML file")
        if base not in PRESETS and not Path(base).is_absolute() and source not in PRESETS:
            base = str(Path(source).expanduser().parent / base)
        parent, _ = _read_yaml(base, seen + (source,))
        flat = {**parent, **flat}
    leaves = leaf_fields()
    for key in flat:  # name the file that holds a bad key
        if key not in leaves:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, list(leaves))}")
    return flat, where


def load_config(source: str = "synthetic", overrides: list[str] | dict[str, Any] | None = None
                ) -> Config:
    """A preset name or YAML path, then dotted overrides (``["loss.lambda1=2.0"]`` or a dict)."""
    flat, where = _read_yaml(source)
    if isinstance(overrides, dict):
        extra = dict(overrides)
    else:
        extra = dict(parse_override(o) for o in overrides or [])
    if extra:
        where = f"{where} with overrides"
    return from_flat({**flat, **extra}, where=where)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_tree(cfg), sort_keys=False))


def with_overrides(cfg: Config, dotted: dict[str, Any]) -> Config:
    """A validated copy with dotted keys changed: ``with_overrides(cfg, {"loss.lambda1": 2.0})``."""
    return from_flat({**to_flat(cfg), **dotted}, where="config")


def explain() -> str:
    """One line per key: dotted name, default, allowed values, help."""
    lines = []
    defaults = to_flat(Config())
    for key, (tp, f) in leaf_fields().items():
        meta = dict(f.metadata)
        lines.append(f"{key:34s} {defaults[key]!r:>14}  {describe_allowed(tp, meta):28s} "
                     f"{meta.get('help', '')}")
    return "\n".join(lines)


__all__ = [
    "Config", "ConfigError", "DataConfig", "TextConfig", "ModelConfig", "KSMConfig", "CSRConfig",
    "LocHeadConfig", "LossConfig", "DPIDConfig", "TrainConfig", "InferenceConfig", "EvalConfig",
    "PRESETS", "load_config", "from_flat", "to_flat", "to_tree", "save_config", "with_overrides",
    "parse_override", "leaf_fields", "explain",
]
