"""Search-space files of the sweep platform: parsing, complete validation, Optuna glue.

A search-space YAML says *what* a sweep searches and *how*; this module reads it, checks all
of it before anything runs, and turns it into the pieces a sweep runner needs: the resolved
base :class:`~mllm4wtal.config.Config`, one :class:`Param` per searched key, a define-by-run
body (:func:`suggest`), a seeded Optuna sampler (:func:`make_sampler`) and per-trial configs
(:func:`trial_config`). It never starts (nor imports) Ray.

Schema (read with a YAML safe loader; ``5e-4`` is read as a number, duplicate keys are an
error). Every top-level key except ``base`` and ``space`` is optional::

    name: quickstart            # experiment name, [A-Za-z0-9._-]+; default: the file's stem
    description: ...            # free text, for people
    base: synthetic             # preset (synthetic, thumos14, activitynet12) or config YAML;
                                # a relative path resolves against this file's folder
    overrides:                  # config keys -> fixed values for every trial; dotted
      train.iterations: 600     # (``train.iterations``) or nested (``train: {iterations: ..}``)
    metric: map/avg_0.1-0.7     # default: the average-mAP name of the base config's eval.tious
    mode: max                   # max | min; default: max for map/* and iteration, min for loss/*
    space:                      # dotted config key -> Optuna distribution, in suggestion order
      loss.lambda1: {type: float, low: 0.1, high: 5.0, log: true}
      ksm.topk: {type: int, low: 4, high: 16, step: 2}
      csr.contrast: {type: categorical, choices: [true, false]}
      csr.gamma1: {type: float, low: 0.0, high: 1.0, when: {csr.contrast: true}}
    points_to_evaluate:         # tried first, in order (Optuna enqueue_trial); e.g. the paper
      - {loss.lambda1: 1.5, ksm.topk: 8, csr.contrast: false}
    searcher: {sampler: tpe, seed: 0, n_startup_trials: 10, multivariate: true,
               constant_liar: true, storage: null}
    scheduler: {type: asha, grace_period: 100, reduction_factor: 3, max_t: 600}
    trials: {num_samples: 10, max_concurrent: 1, max_failures: 0}
    resources: {cpu: 1, gpu: 0}
    mlflow: {tracking_uri: null, experiment: null}
    storage: {path: null}

``space`` entries (keys: ``type``, ``low``, ``high``, ``log``, ``step``, ``choices``, ``when``):

- ``type: float`` (float config keys): ``low`` < ``high``; ``log: true`` needs ``low`` > 0 and
  no ``step``; ``step`` > 0 and ``high - low`` a multiple of it (Optuna would silently move
  ``high`` otherwise).
- ``type: int`` (int config keys): integer ``low`` < ``high``; ``log: true`` needs ``low`` >= 1
  and no ``step``; integer ``step`` >= 1 dividing ``high - low``.
- ``type: categorical`` (any scalar key; the only type for bool and str keys): ``choices``, a
  list of at least two distinct values.
- ``when: {other.key: value}`` (or ``{other.key: [v1, v2]}``, several keys = all must hold):
  the parameter is suggested only when the categorical parameter ``other.key``, listed
  *earlier* in ``space``, was suggested with one of those values; otherwise the base config's
  value stays. Conditions nest (a parent may itself be conditional).
- Bounds and choices must be valid values of the config key (its ``min``/``max``/``choices``).
  Each bound and choice is also applied alone to the base config, which must stay valid
  (cross-field rules) and keep reporting the metric (e.g. ``csr.enabled: [true, false]``
  drops ``loss/rec``).
- Not searchable: list-valued keys (``eval.tious``, ...), keys that define the dataset shared
  by all trials (``data.format``, ``data.root``, ``data.feature_dim``, ``data.synthetic.*``,
  ...), and keys the sweep owns (``train.iterations``, ``train.eval_interval``,
  ``train.device``, ``train.out_dir``). A key may not be both searched and overridden.

``metric``: one of :func:`reported_metrics` of the base config except ``lr``: the mAP names
(``map/<tIoU>`` per ``eval.tious`` and ``map/avg_<min>-<max>``), ``iteration``, or a DPID
loss (``loss/match``, ``loss/rec`` or one of their terms) that every evaluation report of
every trial carries; the base model's regularisers (``loss/norm``, ...) are not offered.
``map/*`` needs ``mode: max``, ``loss/*`` needs ``mode: min``.

``points_to_evaluate``: mappings of searched keys to values inside their distributions
(on the step grid, among the choices). A point may leave parameters out (the sampler then
draws them) but a conditional parameter may only appear with its condition's parameters
set so that the condition holds. ``trials.num_samples`` must cover all points.

``searcher``: ``sampler`` ``tpe`` (Optuna TPESampler: ``n_startup_trials`` random trials
first, default 10; ``multivariate`` default true, with ``group`` switched on automatically
when the space has conditionals; ``constant_liar`` default true, for concurrent trials) or
``random`` (RandomSampler, ``seed`` only). ``seed`` (default 0) seeds the sampler.
``storage``: an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``) for the study, or
null for the sweep runner's default (``sweep.search``: a sqlite file in the experiment
directory). CMA-ES (needs the ``cmaes`` package, no
categorical parameters) and GP samplers are not offered.

``scheduler``: ``type: none`` (no early stopping; no other keys) or ``type: asha`` (Ray
ASHAScheduler on the reported ``iteration``, i.e. in TRAINING ITERATIONS): ``grace_period``
(default ``train.eval_interval``), ``reduction_factor`` (integer >= 2, default 3), ``max_t``
(default ``train.iterations``). Rungs sit at ``grace_period * reduction_factor**k < max_t``;
``grace_period`` must be a positive multiple of ``train.eval_interval`` (so every rung falls
on a report), ``grace_period < max_t <= train.iterations``, and ``max_t`` a multiple of
``train.eval_interval`` or equal to ``train.iterations``. Default without the key: none.

``trials``: ``num_samples`` >= 1 (trials in all, default 10), ``max_concurrent`` >= 1
(default 1), ``max_failures`` >= 0 (retries of a failed trial from its checkpoint, default 0).

``resources`` per trial: ``cpu`` (default 1) and ``gpu`` (default 0), >= 0, fractional only
below 1 (Ray's rule) with at most 4 decimals. ``gpu`` > 0 needs ``train.device`` auto or
cuda; ``train.device: cuda`` needs ``gpu`` > 0.

``mlflow``: ``tracking_uri`` (null: ``sqlite:///<storage.path>/mlflow.db``, which needs a
local storage path), ``experiment`` (null: ``name``).

``storage``: ``path`` (null: ``./sweeps``), a local folder (relative to the current working
directory, made absolute) or a URI with a scheme (``s3://...``, kept as is); the experiment
directory is ``<path>/<name>``.

Every problem raises one :class:`SearchSpaceError` (a :class:`~mllm4wtal.errors.UserError`)
whose message starts with the file and the key, e.g. ``search_spaces/x.yaml:
space.loss.lambdaa: unknown config key; did you mean 'loss.lambda1'?``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import optuna
import yaml

from mllm4wtal.config import (
    PRESETS,
    Config,
    ConfigError,
    check_cross_fields,
    describe_allowed,
    did_you_mean,
    from_flat,
    leaf_fields,
    load_config,
    parse_override,
    to_flat,
)
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation.detection import average_metric_name, tiou_key


class SearchSpaceError(UserError):
    """A search-space file is missing, malformed or inconsistent; the message names the file,
    the key and the fix."""


ParamType = Literal["float", "int", "categorical"]
Scalar = None | bool | int | float | str

TOP_LEVEL_KEYS = ("name", "description", "base", "overrides", "metric", "mode", "space",
                  "points_to_evaluate", "searcher", "scheduler", "trials", "resources",
                  "mlflow", "storage")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "none")

# keys the sweep owns or that define the dataset shared by all trials of a node
_OWNED_KEYS = {
    "train.iterations": "ASHA rungs and max_t are checked against it; set it under overrides",
    "train.eval_interval": "ASHA rungs must fall on its reports; set it under overrides",
    "train.device": "the device follows resources.gpu; set it under overrides",
    "train.out_dir": "the sweep places each trial's run under storage.path",
}
_DATASET_KEYS = ("data.format", "data.root", "data.name", "data.train_subset",
                 "data.test_subset", "data.feature_dim", "data.rgb_dim", "data.fps",
                 "data.frames_per_snippet")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------- data model


class Suggester(Protocol):
    """What :func:`suggest` calls: an ``optuna.Trial`` or Ray Tune's capturing wrapper."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Param:
    """One searched config key and its Optuna distribution.

    ``when`` holds ``(parent key, allowed values)`` pairs; all must hold for the parameter to
    be suggested.
    """

    key: str
    type: ParamType
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Scalar, ...] = ()
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    @property
    def conditional(self) -> bool:
        return bool(self.when)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The equivalent ``optuna.distributions`` object."""
        if self.type == "float":
            assert self.low is not None and self.high is not None
            return optuna.distributions.FloatDistribution(
                float(self.low), float(self.high), log=self.log,
                step=None if self.step is None else float(self.step))
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def suggest(self, trial: Suggester) -> Any:
        """Draw this parameter from ``trial`` (``suggest_float/int/categorical``)."""
        if self.type == "float":
            assert self.low is not None and self.high is not None
            return trial.suggest_float(self.key, float(self.low), float(self.high),
                                       step=None if self.step is None else float(self.step),
                                       log=self.log)
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the condition holds given the values suggested so far (an inactive
        parent is absent from ``chosen``, so its children are inactive too)."""
        return all(parent in chosen and any(_same(chosen[parent], v) for v in allowed)
                   for parent, allowed in self.when)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this distribution can produce."""
        if self.type == "categorical":
            return any(_same(value, c) for c in self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            ok = _is_int(value) and self.low <= value <= self.high
            return ok and (value - self.low) % int(self.step or 1) == 0
        if not _is_num(value) or not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value - self.low, self.step)

    def corner_values(self) -> tuple[Any, ...]:
        """The bounds, or every choice: the values checked against the base config."""
        if self.type == "categorical":
            return self.choices
        return (self.low, self.high)

    def describe(self) -> str:
        """``float in [0.1, 5.0] (log)``, ``one of [true, false]``."""
        if self.type == "categorical":
            return "one of " + _show(list(self.choices))
        extra = " (log)" if self.log else f" step {_show(self.step)}" if self.step else ""
        return f"{self.type} in [{_show(self.low)}, {_show(self.high)}]{extra}"


@dataclass(frozen=True)
class SearcherSpec:
    """``searcher:``: the Optuna sampler and the optional study storage."""

    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    storage: str | None = None


@dataclass(frozen=True)
class SchedulerSpec:
    """``scheduler:``; ASHA's time attribute is the reported ``iteration``."""

    type: Literal["asha", "none"] = "none"
    grace_period: int = 0
    reduction_factor: int = 3
    max_t: int = 0
    time_attr: str = "iteration"

    @property
    def rungs(self) -> tuple[int, ...]:
        """Iterations at which ASHA compares trials (ascending, below ``max_t``)."""
        if self.type != "asha":
            return ()
        out, t = [], self.grace_period
        while t < self.max_t:
            out.append(t)
            t *= self.reduction_factor
        return tuple(out)


@dataclass(frozen=True)
class TrialsSpec:
    """``trials:``: the budget."""

    num_samples: int = 10
    max_concurrent: int = 1
    max_failures: int = 0


@dataclass(frozen=True)
class ResourcesSpec:
    """``resources:`` per trial (Ray resource quantities)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class MlflowSpec:
    """``mlflow:`` after resolution (never null)."""

    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class SearchSpaceFile:
    """A validated search-space file with every default resolved."""

    path: Path  # absolute path of the file
    where: str  # the path as the user gave it; starts every error message
    name: str
    description: str
    base: str  # as written in the file
    base_config: Config  # base + overrides + --set
    overrides: dict[str, Any]  # flat: the file's overrides, then --set
    metric: str
    mode: Literal["min", "max"]
    params: tuple[Param, ...]
    points_to_evaluate: tuple[dict[str, Any], ...]
    searcher: SearcherSpec
    scheduler: SchedulerSpec
    trials: TrialsSpec
    resources: ResourcesSpec
    mlflow: MlflowSpec
    storage_path: str  # absolute local folder or URI
    experiment_dir: str  # <storage_path>/<name>

    @property
    def space(self) -> dict[str, Param]:
        """``key -> Param`` in suggestion order."""
        return {p.key: p for p in self.params}

    @property
    def has_conditionals(self) -> bool:
        return any(p.conditional for p in self.params)


# --------------------------------------------------------------------------- public API


def load_search_space(path: str | Path, overrides: Sequence[str] = (),
                      edits: Sequence[str] = ()) -> SearchSpaceFile:
    """Read and validate a search-space file; ``overrides`` are ``--set key=value`` strings
    applied to the base config after the file's own ``overrides``; ``edits`` are
    ``--space-set section.key=value`` strings that change the file's own sections (e.g.
    ``trials.num_samples=3``, ``scheduler.max_t=8``) before validation.

    Raises :class:`SearchSpaceError` naming the file and key on any problem.
    """
    return _Parser(path, list(overrides), list(edits)).parse()


def suggest(space: SearchSpaceFile, trial: Suggester) -> dict[str, Any]:
    """Define-by-run body: suggest every active parameter, in file order, and return the
    flat config overrides of the trial (inactive conditional parameters are left out)."""
    chosen: dict[str, Any] = {}
    for p in space.params:
        if p.active(chosen):
            chosen[p.key] = p.suggest(trial)
    return chosen


def trial_config(space: SearchSpaceFile, flat_overrides: Mapping[str, Any]) -> Config:
    """The base config with a trial's flat overrides applied (validated)."""
    try:
        return from_flat({**to_flat(space.base_config), **dict(flat_overrides)},
                         where=f"{space.where}: trial {_show(dict(flat_overrides))}")
    except ConfigError as e:
        raise SearchSpaceError(str(e)) from None


def make_sampler(space: SearchSpaceFile) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler ``searcher`` names."""
    s = space.searcher
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    with warnings.catch_warnings():  # ``group`` is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
            group=s.multivariate and space.has_conditionals, constant_liar=s.constant_liar)


def reported_metrics(cfg: Config) -> set[str]:
    """The names every evaluation report of a training run with ``cfg`` carries, as far as
    a sweep may use them as its metric.

    ``map/<tIoU>`` per ``eval.tious`` and their mean ``map/avg_<min>-<max>``
    (``DetectionResult.flat_metrics``), ``iteration``, ``lr``, ``loss/match`` with the DPID
    terms of L_match (``loss/mil``, ``loss/mil_supp``; ``loss/focal``, ``loss/diou``,
    ``loss/loc_mil`` with the localization head; ``loss/distill_ksm``) and, when the CSR
    side trains from the first report on (``csr.enabled`` and ``dpid.warmup_iterations`` <
    the first report's iteration), ``loss/rec`` with ``loss/csr``, ``loss/csr_contrast``
    (``csr.contrast``) and ``loss/distill_csr``. Distillation terms need ``dpid.distill``
    other than ``none`` and ``share``. Mirrors ``train.dpid.DPID`` (tested against a real
    run). The base model's own regularisers (``loss/norm``, ``loss/guide``, ... of
    ``model.base``) are reported too but are left out here: they differ per base model and
    are no sweep objective.
    """
    tious = cfg.eval.tious
    names = {f"map/{tiou_key(t)}" for t in tious} | {average_metric_name(tious)}
    names |= {"iteration", "lr", "loss/match", "loss/mil", "loss/mil_supp"}
    if cfg.loc_head.enabled:
        names |= {"loss/focal", "loss/diou", "loss/loc_mil"}
    first_report = min(cfg.train.eval_interval, cfg.train.iterations)
    csr_trains = cfg.csr.enabled and first_report - 1 >= cfg.dpid.warmup_iterations
    distill = cfg.dpid.distill not in ("none", "share")
    if csr_trains:
        names |= {"loss/rec", "loss/csr"}
        if cfg.csr.contrast:
            names.add("loss/csr_contrast")
        if distill:
            names |= {"loss/distill_ksm", "loss/distill_csr"}
    return names


def metric_mode(metric: str) -> Literal["min", "max"] | None:
    """The only sensible mode of a metric: max for ``map/*``, min for ``loss/*``."""
    if metric.startswith("map/"):
        return "max"
    if metric.startswith("loss/"):
        return "min"
    return None


# --------------------------------------------------------------------------- helpers


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps ``true`` and ``1`` apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _on_grid(distance: float, step: float) -> bool:
    k = distance / step
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def _show(v: Any) -> str:
    """A value as YAML would write it: ``true``, ``null``, ``'gru'``, ``[1, 2]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    return str(v)


def _close(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-4`` as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # unhashable key: let the base class complain
                pass
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :class:`_Loader` (a SafeLoader: plain data only)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- the parser


class _Parser:
    # what the file is, for messages; the study parser of sweep/ablate.py changes these
    KIND = "search-space"
    EXAMPLE = "search_spaces/quickstart.yaml"
    REQUIRED = ("base", "space")
    TOP_LEVEL = TOP_LEVEL_KEYS

    def __init__(self, path: str | Path, cli: list[str], edits: list[str] | None = None
                 ) -> None:
        self.where = str(path)
        self.path = Path(path).expanduser()
        self.cli = cli
        self.edits = edits or []
        self.leaves = leaf_fields()
        self.sections = {k.rsplit(".", i)[0] for k in self.leaves
                         for i in range(1, k.count(".") + 1)}

    # ---------------------------------------------------------------- errors

    def fail(self, key: str, msg: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.where}: {key}: {msg}" if key else f"{self.where}: {msg}")

    def section(self, raw: dict, name: str, keys: Sequence[str]) -> dict[str, Any]:
        value = raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a mapping with keys {', '.join(keys)}; got "
                                  f"{_show(value)}")
        self.check_keys(value, keys, f"{name}.")
        return value

    def check_keys(self, mapping: dict, allowed: Sequence[str], prefix: str = "",
                   what: str = "key") -> None:
        """Each key of ``mapping`` must be in ``allowed``; else one message with the closest."""
        for k in mapping:
            if k not in allowed:
                raise self.fail(f"{prefix}{k}", f"unknown {what}{_close(str(k), allowed)} "
                                                f"(allowed: {', '.join(allowed)})")

    def get_int(self, sec: dict, name: str, key: str, default: int, lo: int) -> int:
        v = sec.get(key, default)
        if not _is_int(v) or v < lo:
            raise self.fail(f"{name}.{key}", f"must be an integer >= {lo}; got {_show(v)}")
        return int(v)

    def get_bool(self, sec: dict, name: str, key: str, default: bool) -> bool:
        v = sec.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(f"{name}.{key}", f"must be true or false; got {_show(v)}")
        return v

    def get_str(self, sec: dict, name: str, key: str) -> str | None:
        v = sec.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise self.fail(f"{name}.{key}", f"must be a non-empty string or null; got "
                                             f"{_show(v)}")
        return v

    def config_key(self, label: str, key: Any) -> tuple[Any, dict]:
        """Check that ``key`` names a config leaf; return its type and metadata."""
        if not isinstance(key, str):
            raise self.fail(label, f"keys must be dotted config keys; got {_show(key)}")
        if key in self.sections:
            example = next(k for k in self.leaves if k.startswith(key + "."))
            raise self.fail(label, f"'{key}' is a config section, not a key; name one of its "
                                   f"keys, e.g. '{example}'")
        if key not in self.leaves:
            raise self.fail(label, f"unknown config key{did_you_mean(key, list(self.leaves))} "
                                   "(see `mllm4wtal config --explain`)")
        tp, f = self.leaves[key]
        return tp, dict(f.metadata)

    # ---------------------------------------------------------------- top level

    def apply_edits(self, raw: dict) -> dict:
        for item in self.edits:
            try:
                key, value = parse_override(item)
            except ConfigError as e:
                raise self.fail("", f"--space-set: {e}") from None
            head, _, leaf = key.partition(".")
            if head not in self.TOP_LEVEL or head in ("space", "variants", "overrides"):
                raise self.fail(key, "--space-set changes the file's own sections ("
                                     "trials, scheduler, searcher, resources, mlflow, storage, "
                                     "name, metric, mode); config keys go to --set")
            if not leaf:
                raw[head] = value
                continue
            section = raw.setdefault(head, {})
            if not isinstance(section, dict):
                raise self.fail(head, f"is not a mapping; cannot apply --space-set {item}")
            section[leaf] = value
        return raw

    def read_head(self) -> tuple[dict, str, str]:
        """The file with its --space-set edits, its top-level keys checked, its name and
        description."""
        raw = self.apply_edits(self.read())
        self.check_keys(raw, self.TOP_LEVEL, what="top-level key")
        description = raw.get("description") or ""
        if not isinstance(description, str):
            raise self.fail("description", "must be text")
        return raw, self.parse_name(raw), description

    def parse(self) -> SearchSpaceFile:
        raw, name, description = self.read_head()
        base = raw.get("base")
        file_ovr, cli_ovr = self.parse_overrides(raw)
        base_config = self.build_base(base, file_ovr, cli_ovr)
        params = self.parse_space(raw, file_ovr, cli_ovr)
        metric, mode = self.parse_metric(raw, base_config)
        self.check_corners(params, base_config, metric)
        trials = self.parse_trials(raw)
        points = self.parse_points(raw, params, base_config, metric, trials)
        searcher = self.parse_searcher(raw)
        scheduler = self.parse_scheduler(raw, base_config)
        resources = self.parse_resources(raw, base_config)
        storage_path, experiment_dir = self.parse_storage(raw, name)
        mlflow = self.parse_mlflow(raw, name, storage_path)
        return SearchSpaceFile(
            path=self.path.resolve(), where=self.where, name=name, description=description,
            base=base, base_config=base_config, overrides={**file_ovr, **cli_ovr},
            metric=metric, mode=mode, params=params, points_to_evaluate=points,
            searcher=searcher, scheduler=scheduler, trials=trials, resources=resources,
            mlflow=mlflow, storage_path=storage_path, experiment_dir=experiment_dir)

    def read(self) -> dict:
        kind = self.KIND
        if not self.path.exists():
            raise self.fail("", f"{kind} file not found; pass the path of a YAML file, "
                                f"e.g. {self.EXAMPLE}")
        if not self.path.is_file():
            raise self.fail("", f"is not a file; pass the path of a {kind} YAML file")
        try:
            raw = _safe_load(self.path.read_text())
        except _DuplicateKey as e:
            raise self.fail(str(e.key), f"duplicate key (line {e.line}); keep only one") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise self.fail("", f"not valid YAML{at}: {problem}; fix the syntax") from None
        except UnicodeDecodeError:
            raise self.fail("", f"not a text file; pass a {kind} YAML file") from None
        first, second = self.REQUIRED
        if raw is None:
            raise self.fail("", f"is empty; it needs at least '{first}' and '{second}' (see "
                                f"{self.EXAMPLE})")
        if not isinstance(raw, dict):
            raise self.fail("", f"top level must be a mapping ({first}:, {second}:, ...); "
                                f"got a {type(raw).__name__}")
        return raw

    def parse_name(self, raw: dict) -> str:
        name = raw.get("name", self.path.stem)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail("name", f"{_show(name)} is not a valid experiment name; use "
                                    "letters, digits, '.', '_' and '-' (it names a folder)")
        return name

    def parse_overrides(self, raw: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        tree = raw.get("overrides")
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise self.fail("overrides", "must be a mapping of config keys to values, e.g. "
                                         "{train.iterations: 600}")
        file_ovr = _flatten(tree)
        for key in file_ovr:
            self.config_key(f"overrides.{key}", key)
        cli_ovr: dict[str, Any] = {}
        for item in self.cli:
            try:
                key, value = parse_override(item)
            except ConfigError as e:
                raise self.fail("--set", str(e)) from None
            self.config_key(f"--set {key}", key)
            cli_ovr[key] = value
        return file_ovr, cli_ovr

    def build_base(self, base: Any, file_ovr: dict, cli_ovr: dict) -> Config:
        if base is None:
            raise self.fail("base", f"missing; name a preset ({', '.join(PRESETS)}) or a "
                                    "config YAML")
        if not isinstance(base, str) or not base.strip():
            raise self.fail("base", f"must name a preset ({', '.join(PRESETS)}) or a config "
                                    f"YAML; got {_show(base)}")
        source = base
        if base not in PRESETS:
            p = Path(base).expanduser()
            if not p.is_absolute():
                p = self.path.parent / p
            if not p.is_file():
                raise self.fail("base", f"'{base}' is neither a preset ({', '.join(PRESETS)}) "
                                        f"nor a YAML file (looked for {p})")
            source = str(p)
        try:
            return load_config(source, {**file_ovr, **cli_ovr})
        except ConfigError:
            pass  # find out whether the base or the overrides are at fault
        try:
            flat = to_flat(load_config(source))
        except ConfigError as e:
            raise self.fail("base", str(e)) from None
        where = "overrides" + (" and --set" if cli_ovr else "")
        try:
            from_flat({**flat, **file_ovr, **cli_ovr}, where=f"{self.where}: {where}")
        except ConfigError as e:
            raise SearchSpaceError(str(e)) from None
        raise AssertionError("unreachable: the config loaded the second time")

    # ---------------------------------------------------------------- space

    def parse_space(self, raw: dict, file_ovr: dict, cli_ovr: dict) -> tuple[Param, ...]:
        space = raw.get("space")
        if not isinstance(space, dict) or not space:
            raise self.fail("space", "missing or empty; map config keys to distributions, "
                                     "e.g. loss.lambda1: {type: float, low: 0.1, high: 5.0}")
        params: list[Param] = []
        for key, spec in space.items():
            params.append(self.parse_param(key, spec, params, file_ovr, cli_ovr))
        return tuple(params)

    def parse_param(self, key: Any, spec: Any, earlier: list[Param], file_ovr: dict,
                    cli_ovr: dict) -> Param:
        label = f"space.{key}"
        tp, meta = self.config_key(label, key)
        if typing.get_origin(tp) is tuple:
            raise self.fail(label, "list-valued keys cannot be searched; set it under "
                                   "overrides")
        if key in _OWNED_KEYS:
            raise self.fail(label, f"cannot be searched: {_OWNED_KEYS[key]}")
        if key in _DATASET_KEYS or key.startswith("data.synthetic."):
            raise self.fail(label, "defines the dataset all trials share and cannot be "
                                   "searched; set it under overrides")
        if key in file_ovr:
            raise self.fail(label, "is also set under overrides; remove it from one of them")
        if key in cli_ovr:
            raise self.fail(label, "is also set with --set; a searched key cannot be fixed "
                                   "(edit the space instead)")
        if not isinstance(spec, dict):
            raise self.fail(label, f"must be a mapping like {{type: float, low: 0.1, high: "
                                   f"1.0}}; got {_show(spec)}")
        self.check_keys(spec, PARAM_KEYS, f"{label}.", what="distribution key")
        kind = spec.get("type")
        if kind not in ("float", "int", "categorical"):
            raise self.fail(f"{label}.type", f"{_show(kind)} is not a distribution type; use "
                                             "float, int or categorical"
                                             + _close(str(kind), ["float", "int",
                                                                  "categorical"]))
        allowed = describe_allowed(tp, meta)
        if kind == "categorical":
            param = self.parse_categorical(label, key, spec, tp, meta, allowed)
        else:
            param = self.parse_numeric(label, key, kind, spec, tp, meta, allowed)
        when = self.parse_when(label, key, spec.get("when"), earlier)
        return Param(key=param.key, type=param.type, low=param.low, high=param.high,
                     log=param.log, step=param.step, choices=param.choices, when=when)

    def parse_categorical(self, label: str, key: str, spec: dict, tp: Any, meta: dict,
                          allowed: str) -> Param:
        for k in ("low", "high", "log", "step"):
            if k in spec:
                raise self.fail(f"{label}.{k}", "not used by a categorical distribution; "
                                                "list the values under choices")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self.fail(f"{label}.choices", "missing or empty; list at least two values, "
                                                "e.g. choices: [true, false]")
        for c in choices:
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise self.fail(f"{label}.choices", f"{_show(c)} is not a scalar; choices "
                                                    "must be numbers, strings or booleans")
            if not _valid_value(tp, meta, c):
                raise self.fail(f"{label}.choices", f"{_show(c)} is not a valid value of "
                                                    f"{key} (expected {allowed})")
        for i, c in enumerate(choices):
            if any(_same(c, d) for d in choices[:i]):
                raise self.fail(f"{label}.choices", f"{_show(c)} is listed twice; list each "
                                                    "value once")
        if len(choices) < 2:
            raise self.fail(f"{label}.choices", f"only {_show(choices[0])}: a single value is "
                                                "not a search; set it under overrides")
        return Param(key=key, type="categorical", choices=tuple(choices))

    def parse_numeric(self, label: str, key: str, kind: str, spec: dict, tp: Any, meta: dict,
                      allowed: str) -> Param:
        if "choices" in spec:
            raise self.fail(f"{label}.choices", f"not used by a {kind} distribution; use "
                                                "type: categorical to list values")
        if kind == "float" and tp is not float:
            hint = "type: int" if tp is int else "type: categorical"
            raise self.fail(f"{label}.type", f"{key} is {_a(tp.__name__)} key; use {hint}")
        if kind == "int" and tp is not int:
            hint = "type: float" if tp is float else "type: categorical"
            raise self.fail(f"{label}.type", f"{key} is {_a(tp.__name__)} key; use {hint}")
        check = _is_int if kind == "int" else _is_num
        what = "an integer" if kind == "int" else "a number"
        for bound in ("low", "high"):
            if bound not in spec:
                raise self.fail(f"{label}.{bound}", f"missing; {_a(kind)} distribution needs "
                                                    "low and high")
            if not check(spec[bound]):
                raise self.fail(f"{label}.{bound}", f"must be {what}; got "
                                                    f"{_show(spec[bound])}")
        low, high = spec["low"], spec["high"]
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{label}.log", f"must be true or false; got {_show(log)}")
        if low > high:
            raise self.fail(f"{label}.low", f"low = {_show(low)} is above high = "
                                            f"{_show(high)}; swap them")
        if low == high:
            raise self.fail(f"{label}.low", f"low = high = {_show(low)} is not a search; set "
                                            "a fixed value under overrides")
        for bound, v in (("low", low), ("high", high)):
            if not _valid_value(tp, meta, v):
                raise self.fail(f"{label}.{bound}", f"{_show(v)} is outside the values of "
                                                    f"{key} ({allowed}); narrow the range")
        if log and (low < 1 if kind == "int" else low <= 0):
            need = ">= 1" if kind == "int" else "> 0"
            raise self.fail(f"{label}.log", f"a log scale needs low {need}; got low = "
                                            f"{_show(low)}; raise low or drop log")
        step = spec.get("step")
        if step is not None:
            if log:
                raise self.fail(f"{label}.step", "step and log: true cannot be combined "
                                                 "(Optuna); drop one of them")
            if not check(step) or step <= 0:
                raise self.fail(f"{label}.step", f"must be {what} > 0; got {_show(step)}")
            if not _on_grid(high - low, step):
                fit = low + math.floor((high - low) / step + 1e-9) * step
                raise self.fail(f"{label}.step", f"high - low = {_show(high - low)} is not a "
                                                 f"multiple of step = {_show(step)}; use high "
                                                 f"= {_show(_tidy(fit))}")
        if kind == "float":
            low, high = float(low), float(high)
            step = None if step is None else float(step)
        return Param(key=key, type=kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]

    def parse_when(self, label: str, key: str, when: Any, earlier: list[Param]
                   ) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
        if when is None:
            return ()
        if not isinstance(when, dict) or not when:
            raise self.fail(f"{label}.when", "must map searched categorical keys to a value "
                                             "or a list of values, e.g. {csr.contrast: true}")
        known = {p.key: p for p in earlier}
        out = []
        for parent, values in when.items():
            wl = f"{label}.when.{parent}"
            if parent == key:
                raise self.fail(wl, "a parameter cannot depend on itself")
            if parent not in known:
                if isinstance(parent, str) and parent in self.leaves:
                    raise self.fail(wl, f"'{parent}' is not searched (or listed after {key}); "
                                        "conditions name a categorical parameter of space "
                                        "listed above this one")
                self.config_key(wl, parent)  # unknown key: raises with a suggestion
                raise self.fail(wl, "conditions need a searched parameter")  # pragma: no cover
            p = known[parent]
            if p.type != "categorical":
                raise self.fail(wl, f"'{parent}' is {_a(p.type)} parameter; conditions need a "
                                    "categorical one")
            vals = values if isinstance(values, list) else [values]
            if not vals:
                raise self.fail(wl, "empty list of values; give at least one of "
                                    f"{_show(list(p.choices))}")
            for v in vals:
                if not p.contains(v):
                    raise self.fail(wl, f"{_show(v)} is not among the choices of {parent} "
                                        f"({_show(list(p.choices))})")
            out.append((parent, tuple(vals)))
        return tuple(out)

    # ---------------------------------------------------------------- metric

    def parse_metric(self, raw: dict, cfg: Config) -> tuple[str, Literal["min", "max"]]:
        reported = reported_metrics(cfg) - {"lr"}
        metric = raw.get("metric", average_metric_name(cfg.eval.tious))
        if not isinstance(metric, str) or metric not in reported:
            maps = sorted(m for m in reported if m.startswith("map/"))
            losses = sorted(m for m in reported if m.startswith("loss/"))
            hint = _close(str(metric), sorted(reported))
            raise self.fail("metric", f"{_show(metric)} is never reported by training with this "
                                      f"base config{hint} (reported: {', '.join(maps)}, "
                                      f"iteration, {', '.join(losses)})")
        sensible = metric_mode(metric)
        mode = raw.get("mode", sensible or "max")
        if mode not in ("min", "max"):
            raise self.fail("mode", f"{_show(mode)} must be min or max")
        if sensible is not None and mode != sensible:
            better = "higher" if sensible == "max" else "lower"
            raise self.fail("mode", f"{mode} for '{metric}', where {better} is better; use "
                                    f"mode: {sensible}")
        return metric, mode

    def variant(self, base: Config, flat: dict[str, Any], label: str) -> Config:
        """``base`` with already range-checked values set, cross-field rules checked
        (``dataclasses.replace``: far cheaper than a full ``from_flat``)."""
        cfg = base
        try:
            for key, value in flat.items():
                tp = self.leaves[key][0]
                cfg = _replace(cfg, key, float(value) if tp is float else value)
            check_cross_fields(cfg, "config")
        except (ConfigError, ValueError) as e:
            msg = str(e).removeprefix("config: ")
            raise self.fail(label, f"{_show(flat)} breaks the base config: {msg}") from None
        return cfg

    def check_corners(self, params: tuple[Param, ...], base: Config, metric: str) -> None:
        """Each bound / choice alone keeps the config valid and the metric reported."""
        for p in params:
            for v in p.corner_values():
                cfg = self.variant(base, {p.key: v}, f"space.{p.key}")
                if metric not in reported_metrics(cfg):
                    raise self.fail("metric", f"'{metric}' is not reported in every "
                                              f"evaluation when {p.key} = {_show(v)} (space); "
                                              "pick a metric every trial reports, e.g. "
                                              f"{average_metric_name(cfg.eval.tious)}")

    # ---------------------------------------------------------------- points

    def parse_points(self, raw: dict, params: tuple[Param, ...], base: Config, metric: str,
                     trials: TrialsSpec) -> tuple[dict[str, Any], ...]:
        points = raw.get("points_to_evaluate")
        if points is None:
            return ()
        if not isinstance(points, list):
            raise self.fail("points_to_evaluate", "must be a list of mappings {key: value}")
        space = {p.key: p for p in params}
        out = []
        for i, point in enumerate(points):
            label = f"points_to_evaluate[{i}]"
            if not isinstance(point, dict) or not point:
                raise self.fail(label, "must be a non-empty mapping of searched keys to values")
            for key, value in point.items():
                kl = f"{label}.{key}"
                if key not in space:
                    if isinstance(key, str) and key not in self.leaves and _close(key, space):
                        raise self.fail(kl, f"not a searched key{_close(key, space)}")
                    self.config_key(kl, key)
                    raise self.fail(kl, f"'{key}' is not searched; points may only set keys of "
                                        "space (fixed values go under overrides)")
                p = space[key]
                if not p.contains(value):
                    raise self.fail(kl, f"{_show(value)} is outside its distribution "
                                        f"({p.describe()})")
            for key in point:
                p = space[key]
                for parent, allowed in p.when:
                    kl = f"{label}.{key}"
                    if parent not in point:
                        raise self.fail(kl, f"is conditional on {parent}; set {parent} in this "
                                            "point too")
                    if not any(_same(point[parent], v) for v in allowed):
                        raise self.fail(kl, f"is only searched when {parent} is "
                                            f"{_show(list(allowed))}, but this point sets "
                                            f"{parent} = {_show(point[parent])}; drop {key}")
            cfg = self.variant(base, dict(point), label)
            if metric not in reported_metrics(cfg):
                raise self.fail(label, f"'{metric}' (metric) is not reported with this point's "
                                       "values; change the point or the metric")
            out.append({k: float(v) if space[k].type == "float" else v
                        for k, v in point.items()})
        if len(out) > trials.num_samples:
            raise self.fail("trials.num_samples", f"{trials.num_samples} is fewer than the "
                                                  f"{len(out)} points_to_evaluate; raise it")
        return tuple(out)

    # ---------------------------------------------------------------- run settings

    def parse_searcher(self, raw: dict) -> SearcherSpec:
        keys = ("sampler", "seed", "n_startup_trials", "multivariate", "constant_liar",
                "storage")
        sec = self.section(raw, "searcher", keys)
        sampler = sec.get("sampler", "tpe")
        if sampler not in SAMPLERS:
            raise self.fail("searcher.sampler", f"{_show(sampler)} is not offered; use "
                                                f"{' or '.join(SAMPLERS)}")
        if sampler == "random":
            for k in ("n_startup_trials", "multivariate", "constant_liar"):
                if k in sec:
                    raise self.fail(f"searcher.{k}", "only used by sampler: tpe; remove it")
        return SearcherSpec(
            sampler=sampler,
            seed=self.get_int(sec, "searcher", "seed", 0, 0),
            n_startup_trials=self.get_int(sec, "searcher", "n_startup_trials", 10, 0),
            multivariate=self.get_bool(sec, "searcher", "multivariate", True),
            constant_liar=self.get_bool(sec, "searcher", "constant_liar", True),
            storage=self.get_str(sec, "searcher", "storage"))

    def parse_scheduler(self, raw: dict, cfg: Config) -> SchedulerSpec:
        sec = self.section(raw, "scheduler", ("type", "grace_period", "reduction_factor",
                                              "max_t"))
        if sec and "type" not in sec:
            raise self.fail("scheduler.type", "missing; use asha (early stopping) or none")
        kind = sec.get("type", "none")
        if kind not in SCHEDULERS:
            raise self.fail("scheduler.type", f"{_show(kind)} is not offered; use asha or none")
        if kind == "none":
            extra = [k for k in sec if k != "type"]
            if extra:
                raise self.fail(f"scheduler.{extra[0]}", "only used by type: asha; remove it")
            return SchedulerSpec(type="none")
        iters, every = cfg.train.iterations, cfg.train.eval_interval
        grace = self.get_int(sec, "scheduler", "grace_period", every, 1)
        rf = self.get_int(sec, "scheduler", "reduction_factor", 3, 2)
        max_t = self.get_int(sec, "scheduler", "max_t", iters, 1)
        if max_t > iters:
            raise self.fail("scheduler.max_t", f"{max_t} exceeds train.iterations = {iters}; "
                                               f"lower max_t or raise train.iterations")
        if max_t % every and max_t != iters:
            raise self.fail("scheduler.max_t", f"{max_t} is not a multiple of "
                                               f"train.eval_interval = {every}; trials only "
                                               "report there")
        if grace >= max_t:
            raise self.fail("scheduler.grace_period", f"{grace} must be below max_t = {max_t} "
                                                      "for any rung to exist; lower it or use "
                                                      "type: none")
        if grace % every:
            raise self.fail("scheduler.grace_period", f"{grace} is not a multiple of "
                                                      f"train.eval_interval = {every}; ASHA "
                                                      "rungs must fall on reports")
        return SchedulerSpec(type="asha", grace_period=grace, reduction_factor=rf, max_t=max_t)

    def parse_trials(self, raw: dict) -> TrialsSpec:
        sec = self.section(raw, "trials", ("num_samples", "max_concurrent", "max_failures"))
        return TrialsSpec(num_samples=self.get_int(sec, "trials", "num_samples", 10, 1),
                          max_concurrent=self.get_int(sec, "trials", "max_concurrent", 1, 1),
                          max_failures=self.get_int(sec, "trials", "max_failures", 0, 0))

    def parse_resources(self, raw: dict, cfg: Config) -> ResourcesSpec:
        sec = self.section(raw, "resources", ("cpu", "gpu"))
        got = {}
        for k, default in (("cpu", 1.0), ("gpu", 0.0)):
            v = sec.get(k, default)
            if not _is_num(v) or v < 0:
                raise self.fail(f"resources.{k}", f"must be a number >= 0; got {_show(v)}")
            if v > 1 and not float(v).is_integer():
                raise self.fail(f"resources.{k}", f"{_show(v)}: Ray takes fractions only "
                                                  "below 1; use a whole number")
            if round(v, 4) != v:
                raise self.fail(f"resources.{k}", f"{_show(v)}: Ray resolves 4 decimals; "
                                                  "round it")
            got[k] = float(v)
        if got["cpu"] == 0 and got["gpu"] == 0:
            raise self.fail("resources", "cpu and gpu are both 0; a trial needs some resource "
                                         "or Ray starts all of them at once")
        device = cfg.train.device
        if got["gpu"] > 0 and device == "cpu":
            raise self.fail("resources.gpu", f"{_show(sec.get('gpu'))} but train.device = cpu; "
                                             "set train.device to auto (overrides) or gpu: 0")
        if got["gpu"] == 0 and device == "cuda":
            raise self.fail("resources.gpu", "0 but train.device = cuda; give each trial a GPU "
                                             "share (e.g. gpu: 0.25) or use train.device auto")
        return ResourcesSpec(cpu=got["cpu"], gpu=got["gpu"])

    def parse_storage(self, raw: dict, name: str) -> tuple[str, str]:
        sec = self.section(raw, "storage", ("path",))
        path = self.get_str(sec, "storage", "path")
        if path is None:
            path = "sweeps"
        if _URI_RE.match(path):
            root = path.rstrip("/")
            return root, f"{root}/{name}"
        local = Path(path).expanduser().absolute()
        return str(local), str(local / name)

    def parse_mlflow(self, raw: dict, name: str, storage_path: str) -> MlflowSpec:
        sec = self.section(raw, "mlflow", ("tracking_uri", "experiment"))
        uri = self.get_str(sec, "mlflow", "tracking_uri")
        if uri is None:
            if _URI_RE.match(storage_path):
                raise self.fail("mlflow.tracking_uri", "null needs a local storage.path (it "
                                                       "means a sqlite file there); give an "
                                                       "MLflow server URI")
            uri = f"sqlite:///{Path(storage_path) / 'mlflow.db'}"
        experiment = self.get_str(sec, "mlflow", "experiment") or name
        return MlflowSpec(tracking_uri=uri, experiment=experiment)


def _valid_value(tp: Any, meta: dict, value: Any) -> bool:
    """Whether ``value`` is a valid value of a config leaf of type ``tp``."""
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = _is_int(value)
    elif tp is float:
        ok = _is_num(value)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        return False
    if not ok:
        return False
    if "choices" in meta and value not in meta["choices"]:
        return False
    if "min" in meta and value < meta["min"]:
        return False
    return not ("max" in meta and value > meta["max"])


def _replace(node: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if rest:
        value = _replace(getattr(node, head), rest, value)
    return dataclasses.replace(node, **{head: value})


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _tidy(x: float) -> float | int:
    r = round(x, 10)
    return int(r) if float(r).is_integer() else r


__all__ = [
    "SearchSpaceError", "SearchSpaceFile", "Param", "SearcherSpec", "SchedulerSpec",
    "TrialsSpec", "ResourcesSpec", "MlflowSpec", "Suggester", "load_search_space", "suggest",
    "trial_config", "make_sampler", "reported_metrics", "metric_mode",
]
