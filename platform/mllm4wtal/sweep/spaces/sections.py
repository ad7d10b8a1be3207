"""The run-setting sections of sweep and study files (``searcher``, ``scheduler``, ``trials``,
``resources``, ``mlflow``, ``storage``) as pydantic models.

Each model forbids unknown keys and takes YAML's types strictly (``true`` is no integer, ``"3"``
no number). Rules that need the base config (ASHA rungs on ``train.eval_interval``, the GPU
share against ``train.device``) read it from the validation context, ``{"config": cfg}``;
those that need the experiment (the default MLflow store) read ``name`` and
``storage_path``. :func:`explain` turns pydantic's first error into the key it concerns and a
message with the fix, which the file parser prefixes with the file and the section.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from mllm4wtal.config import did_you_mean
from mllm4wtal.sweep.spaces.values import show

#: a URI with a scheme (``s3://...``, ``http://...``): a remote place, kept as written
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TEXT = r"\S"  # a non-empty string: at least one non-space character


class FieldProblem(ValueError):
    """A section's rule broken; ``key`` is the key to change ('' for the section itself)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @classmethod
    def has_unknown_keys(cls, data: Any) -> bool:
        """Unknown keys are reported first (as pydantic's ``extra_forbidden``), before any
        rule that reads the known ones."""
        return isinstance(data, dict) and any(k not in cls.model_fields for k in data)


def _context(info: ValidationInfo, name: str) -> Any:
    return (info.context or {}).get(name)


class SearcherSpec(Section):
    """``searcher:``: the Optuna sampler and the optional study storage."""

    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0)
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    constant_liar: bool = True
    storage: str | None = Field(None, pattern=_TEXT)

    @model_validator(mode="after")
    def _tpe_options(self) -> SearcherSpec:
        if self.sampler == "random":
            for k in ("n_startup_trials", "multivariate", "constant_liar"):
                if k in self.model_fields_set:
                    raise FieldProblem(k, "only used by sampler: tpe; remove it")
        return self


class SchedulerSpec(Section):
    """``scheduler:``; ASHA compares trials at the reported ``iteration``. Without the base
    config in the context, ``grace_period`` and ``max_t`` have no defaults and are not
    checked against ``train.iterations`` / ``train.eval_interval``."""

    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(0, ge=1)
    reduction_factor: int = Field(3, ge=2)
    max_t: int = Field(0, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or cls.has_unknown_keys(data):
            return data
        if data and "type" not in data:
            raise FieldProblem("type", "missing; use asha (early stopping) or none")
        if data.get("type", "none") == "none":
            extra = [k for k in data if k != "type"]
            if extra:
                raise FieldProblem(extra[0], "only used by type: asha; remove it")
            return data
        cfg = _context(info, "config")
        if cfg is None:
            return data
        return {"grace_period": cfg.train.eval_interval, "max_t": cfg.train.iterations, **data}

    @model_validator(mode="after")
    def _rungs_on_reports(self, info: ValidationInfo) -> SchedulerSpec:
        cfg = _context(info, "config")
        if self.type == "none" or cfg is None:
            return self
        iters, every = cfg.train.iterations, cfg.train.eval_interval
        grace, max_t = self.grace_period, self.max_t
        if max_t > iters:
            raise FieldProblem("max_t", f"{max_t} exceeds train.iterations = {iters}; lower "
                                        "max_t or raise train.iterations")
        if max_t % every and max_t != iters:
            raise FieldProblem("max_t", f"{max_t} is not a multiple of train.eval_interval = "
                                        f"{every}; trials only report there")
        if grace >= max_t:
            raise FieldProblem("grace_period", f"{grace} must be below max_t = {max_t} for any "
                                               "rung to exist; lower it or use type: none")
        if grace % every:
            raise FieldProblem("grace_period", f"{grace} is not a multiple of "
                                               f"train.eval_interval = {every}; ASHA rungs must "
                                               "fall on reports")
        return self


class TrialsSpec(Section):
    """``trials:`` of a sweep: the budget."""

    num_samples: int = Field(10, ge=1)
    max_concurrent: int = Field(1, ge=1)
    max_failures: int = Field(0, ge=0)


class StudyTrials(Section):
    """``trials:`` of a study: its cells are the budget."""

    max_concurrent: int = Field(1, ge=1)
    max_failures: int = Field(0, ge=0)

    def spec(self) -> TrialsSpec:
        return TrialsSpec(num_samples=1, max_concurrent=self.max_concurrent,
                          max_failures=self.max_failures)


class ResourcesSpec(Section):
    """``resources:`` per trial (Ray resource quantities)."""

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("cpu", "gpu")
    @classmethod
    def _ray_quantity(cls, v: float, info: ValidationInfo) -> float:
        key = str(info.field_name)
        if v > 1 and not v.is_integer():
            raise FieldProblem(key, f"{show(v)}: Ray takes fractions only below 1; use a whole "
                                    "number")
        if round(v, 4) != v:
            raise FieldProblem(key, f"{show(v)}: Ray resolves 4 decimals; round it")
        return v

    @model_validator(mode="after")
    def _fits_device(self, info: ValidationInfo) -> ResourcesSpec:
        if self.cpu == 0 and self.gpu == 0:
            raise FieldProblem("", "cpu and gpu are both 0; a trial needs some resource or Ray "
                                   "starts all of them at once")
        cfg = _context(info, "config")
        device = cfg.train.device if cfg is not None else "auto"
        if self.gpu > 0 and device == "cpu":
            raise FieldProblem("gpu", f"{self.gpu:g} but train.device = cpu; set train.device "
                                      "to auto (overrides) or gpu: 0")
        if self.gpu == 0 and device == "cuda":
            raise FieldProblem("gpu", "0 but train.device = cuda; give each trial a GPU share "
                                      "(e.g. gpu: 0.25) or use train.device auto")
        return self


class StorageSpec(Section):
    """``storage:``: where experiment directories go."""

    path: str | None = Field(None, pattern=_TEXT)

    def locate(self, name: str) -> tuple[str, str]:
        """``(storage path, experiment directory)``: a local folder made absolute (default
        ``./sweeps``) or a URI kept as written; the experiment directory is ``<path>/<name>``."""
        path = "sweeps" if self.path is None else self.path
        if URI_RE.match(path):
            root = path.rstrip("/")
            return root, f"{root}/{name}"
        local = Path(path).expanduser().absolute()
        return str(local), str(local / name)


class MlflowSpec(Section):
    """``mlflow:`` resolved: null ``tracking_uri`` is a sqlite file in the (local) storage
    path, null ``experiment`` the file's name (context ``storage_path`` and ``name``)."""

    tracking_uri: str = Field(pattern=_TEXT)
    experiment: str = Field(pattern=_TEXT)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or cls.has_unknown_keys(data):
            return data
        storage, name = _context(info, "storage_path"), _context(info, "name")
        out = dict(data)
        if out.get("tracking_uri") is None and storage is not None:
            if URI_RE.match(storage):
                raise FieldProblem("tracking_uri", "null needs a local storage.path (it means a "
                                                   f"sqlite file there), not {storage}; give "
                                                   "the team's MLflow server (--tracking-uri "
                                                   "http://host:5000)")
            out["tracking_uri"] = f"sqlite:///{Path(storage) / 'mlflow.db'}"
        if out.get("experiment") is None and name is not None:
            out["experiment"] = name
        return out


def _expected(field_type: Any, ge: Any) -> str:
    """What a field takes, for ``must be ...; got ...``."""
    kinds = set(typing.get_args(field_type)) or {field_type}
    if str in kinds:
        return "a non-empty string or null"
    if bool in kinds:
        return "true or false"
    what = "an integer" if int in kinds else "a number"
    return what if ge is None else f"{what} >= {ge}"


def explain(model: type[Section], error: ErrorDetails) -> tuple[str, str]:
    """``(key, message)`` of one pydantic error of ``model``, in this project's words: the
    key to change ('' for the whole section) and the fix."""
    loc, kind = error["loc"], error["type"]
    key = str(loc[0]) if loc else ""
    allowed = list(model.model_fields)
    if kind in ("extra_forbidden", "invalid_key"):
        return key, f"unknown key{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})"
    if kind == "value_error":
        problem = (error.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            return problem.key, str(problem)
    if key not in model.model_fields:
        return key, error["msg"]
    field = model.model_fields[key]
    if kind == "literal_error":
        offered = typing.get_args(field.annotation)
        return key, f"{show(error['input'])} is not offered; use {' or '.join(offered)}"
    if kind == "missing":
        return key, "missing"
    ge = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    return key, f"must be {_expected(field.annotation, ge)}; got {show(error['input'])}"


def first_error(errors: list[ErrorDetails]) -> ErrorDetails:
    """The error to report: an unknown key before any value (as a reader checks a file)."""
    return sorted(errors, key=lambda e: e["type"] not in ("extra_forbidden", "invalid_key"))[0]


__all__ = ["FieldProblem", "Section", "SearcherSpec", "SchedulerSpec", "TrialsSpec",
           "StudyTrials", "ResourcesSpec", "StorageSpec", "MlflowSpec", "URI_RE", "explain",
           "first_error"]
