"""The define-by-run Optuna space of a sweep: one :class:`Param` per searched config key,
:func:`suggest` (the body Optuna / Ray Tune call per trial) and the seeded sampler.

A ``space`` entry is checked here, with Optuna's own distributions as the judge: a
:class:`Param` is valid when ``optuna.distributions`` accepts :meth:`Param.distribution`;
the messages name the key to change and how (Optuna's say neither), and the step-grid fix is
the ``high`` Optuna itself would move to. What stays ours: the types (YAML's ``true`` is no
``1`` for a search, while Optuna's containment treats them alike and is private) and the
config's own bounds and choices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import optuna

from mllm4wtal.config import describe_allowed, did_you_mean
from mllm4wtal.sweep.spaces.sections import SearcherSpec
from mllm4wtal.sweep.spaces.values import article, is_int, is_num, on_grid, same, show, tidy

ParamType = Literal["float", "int", "categorical"]
Scalar = None | bool | int | float | str
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")
#: makes the one-line error of the file being read: ``fail(key, message)``
Fail = Callable[[str, str], Exception]


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

    @property
    def int_step(self) -> int:
        return 1 if self.step is None else int(self.step)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The equivalent ``optuna.distributions`` object (raises Optuna's ValueError when
        Optuna refuses the parameters)."""
        if self.type == "float":
            assert self.low is not None and self.high is not None
            return optuna.distributions.FloatDistribution(
                float(self.low), float(self.high), log=self.log,
                step=None if self.step is None else float(self.step))
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=self.int_step)
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
                                     step=self.int_step, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the condition holds given the values suggested so far (an inactive
        parent is absent from ``chosen``, so its children are inactive too)."""
        return all(parent in chosen and any(same(chosen[parent], v) for v in allowed)
                   for parent, allowed in self.when)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this distribution can produce."""
        if self.type == "categorical":
            return any(same(value, c) for c in self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            ok = is_int(value) and self.low <= value <= self.high
            return ok and (value - self.low) % self.int_step == 0
        if not is_num(value) or not self.low <= value <= self.high:
            return False
        return self.step is None or on_grid(value - self.low, self.step)

    def corner_values(self) -> tuple[Any, ...]:
        """The bounds, or every choice: the values checked against the base config."""
        if self.type == "categorical":
            return self.choices
        return (self.low, self.high)

    def describe(self) -> str:
        """``float in [0.1, 5.0] (log)``, ``one of [true, false]``."""
        if self.type == "categorical":
            return "one of " + show(list(self.choices))
        extra = " (log)" if self.log else f" step {show(self.step)}" if self.step else ""
        return f"{self.type} in [{show(self.low)}, {show(self.high)}]{extra}"


# --------------------------------------------------------------------------- reading one entry


def valid_value(tp: Any, meta: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` is a valid value of a config leaf of type ``tp`` with metadata
    ``meta`` (``min``, ``max``, ``choices``)."""
    kinds = {bool: lambda v: isinstance(v, bool), int: is_int, float: is_num,
             str: lambda v: isinstance(v, str)}
    if tp not in kinds or not kinds[tp](value):
        return False
    if "choices" in meta and value not in meta["choices"]:
        return False
    if "min" in meta and value < meta["min"]:
        return False
    return not ("max" in meta and value > meta["max"])


def parse_distribution(label: str, key: str, spec: Mapping[str, Any], tp: Any,
                       meta: Mapping[str, Any], fail: Fail) -> Param:
    """The :class:`Param` of one ``space`` entry (without its ``when``); ``tp``/``meta`` are
    the config key's type and metadata, ``label`` is ``space.<key>``."""
    kind = spec.get("type")
    if kind not in ("float", "int", "categorical"):
        raise fail(f"{label}.type", f"{show(kind)} is not a distribution type; use float, int "
                                    "or categorical"
                                    + did_you_mean(str(kind), ["float", "int", "categorical"]))
    allowed = describe_allowed(tp, dict(meta))
    if kind == "categorical":
        param = _categorical(label, key, spec, tp, meta, allowed, fail)
    else:
        param = _numeric(label, key, kind, spec, tp, meta, allowed, fail)
    _check_with_optuna(label, param, fail)
    return param


def _categorical(label: str, key: str, spec: Mapping[str, Any], tp: Any,
                 meta: Mapping[str, Any], allowed: str, fail: Fail) -> Param:
    for k in ("low", "high", "log", "step"):
        if k in spec:
            raise fail(f"{label}.{k}", "not used by a categorical distribution; list the "
                                       "values under choices")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise fail(f"{label}.choices", "missing or empty; list at least two values, e.g. "
                                       "choices: [true, false]")
    for c in choices:
        if not (c is None or isinstance(c, bool | int | float | str)):
            raise fail(f"{label}.choices", f"{show(c)} is not a scalar; choices must be "
                                           "numbers, strings or booleans")
        if not valid_value(tp, meta, c):
            raise fail(f"{label}.choices", f"{show(c)} is not a valid value of {key} (expected "
                                           f"{allowed})")
    for i, c in enumerate(choices):
        if any(same(c, d) for d in choices[:i]):
            raise fail(f"{label}.choices", f"{show(c)} is listed twice; list each value once")
    if len(choices) < 2:
        raise fail(f"{label}.choices", f"only {show(choices[0])}: a single value is not a "
                                       "search; set it under overrides")
    return Param(key=key, type="categorical", choices=tuple(choices))


def _numeric(label: str, key: str, kind: str, spec: Mapping[str, Any], tp: Any,
             meta: Mapping[str, Any], allowed: str, fail: Fail) -> Param:
    if "choices" in spec:
        raise fail(f"{label}.choices", f"not used by a {kind} distribution; use type: "
                                       "categorical to list values")
    if kind == "float" and tp is not float:
        hint = "type: int" if tp is int else "type: categorical"
        raise fail(f"{label}.type", f"{key} is {article(tp.__name__)} key; use {hint}")
    if kind == "int" and tp is not int:
        hint = "type: float" if tp is float else "type: categorical"
        raise fail(f"{label}.type", f"{key} is {article(tp.__name__)} key; use {hint}")
    check = is_int if kind == "int" else is_num
    what = "an integer" if kind == "int" else "a number"
    for bound in ("low", "high"):
        if bound not in spec:
            raise fail(f"{label}.{bound}", f"missing; {article(kind)} distribution needs low "
                                           "and high")
        if not check(spec[bound]):
            raise fail(f"{label}.{bound}", f"must be {what}; got {show(spec[bound])}")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{label}.log", f"must be true or false; got {show(log)}")
    if low > high:
        raise fail(f"{label}.low", f"low = {show(low)} is above high = {show(high)}; swap them")
    if low == high:
        raise fail(f"{label}.low", f"low = high = {show(low)} is not a search; set a fixed "
                                   "value under overrides")
    for bound, v in (("low", low), ("high", high)):
        if not valid_value(tp, meta, v):
            raise fail(f"{label}.{bound}", f"{show(v)} is outside the values of {key} "
                                           f"({allowed}); narrow the range")
    step = spec.get("step")
    if step is not None and not check(step):
        raise fail(f"{label}.step", f"must be {what} > 0; got {show(step)}")
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Param(key=key, type=kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]


def _check_with_optuna(label: str, p: Param, fail: Fail) -> None:
    """Optuna decides whether the distribution is valid; this says which key to change."""
    with warnings.catch_warnings(record=True):  # Optuna warns where it moves ``high``
        warnings.simplefilter("always")
        try:
            dist = p.distribution()
        except ValueError as e:
            raise fail(*_refusal(label, p, str(e))) from None
    if p.type == "categorical":
        return
    assert p.low is not None and p.high is not None
    if p.log and p.step is not None:  # Optuna takes an int's step 1; a file never needs it
        raise fail(*_refusal(label, p, ""))
    if dist.high != p.high:  # type: ignore[attr-defined]
        raise fail(f"{label}.step", f"high - low = {show(p.high - p.low)} is not a "
                                    f"multiple of step = {show(p.step)}; use high = "
                                    f"{show(tidy(dist.high))}")  # type: ignore[attr-defined]


def _refusal(label: str, p: Param, optuna_says: str) -> tuple[str, str]:
    """The key and the fix for a distribution Optuna refused."""
    assert p.low is not None
    if p.log and (p.low < 1 if p.type == "int" else p.low <= 0):
        need = ">= 1" if p.type == "int" else "> 0"
        return f"{label}.log", (f"a log scale needs low {need}; got low = {show(p.low)}; raise "
                                "low or drop log")
    if p.log and p.step is not None:
        return f"{label}.step", "step and log: true cannot be combined (Optuna); drop one of them"
    if p.step is not None and p.step <= 0:
        what = "an integer" if p.type == "int" else "a number"
        return f"{label}.step", f"must be {what} > 0; got {show(p.step)}"
    return label, f"Optuna refuses this distribution: {optuna_says}"


# --------------------------------------------------------------------------- define-by-run


def suggest(params: Sequence[Param], trial: Suggester) -> dict[str, Any]:
    """Define-by-run body: suggest every active parameter, in file order, and return the
    flat config overrides of the trial (inactive conditional parameters are left out)."""
    chosen: dict[str, Any] = {}
    for p in params:
        if p.active(chosen):
            chosen[p.key] = p.suggest(trial)
    return chosen


def make_sampler(searcher: SearcherSpec, conditional: bool) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler ``searcher`` names; ``conditional``: the space has
    conditional parameters (TPE then groups them)."""
    if searcher.sampler == "random":
        return optuna.samplers.RandomSampler(seed=searcher.seed)
    with warnings.catch_warnings():  # ``group`` is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=searcher.seed, n_startup_trials=searcher.n_startup_trials,
            multivariate=searcher.multivariate, group=searcher.multivariate and conditional,
            constant_liar=searcher.constant_liar)


__all__ = ["Param", "ParamType", "Scalar", "Suggester", "PARAM_KEYS", "Fail", "valid_value",
           "parse_distribution", "suggest", "make_sampler"]
