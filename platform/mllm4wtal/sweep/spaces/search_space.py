"""Reading a search-space file (format: the ``sweep.spaces`` package docstring) into a
validated :class:`SearchSpaceFile`, before anything runs. Never starts (nor imports) Ray."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mllm4wtal.config import Config, did_you_mean
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation.detection import average_metric_name
from mllm4wtal.sweep.spaces.file_parser import FileParser, is_dataset_key
from mllm4wtal.sweep.spaces.metrics import metric_mode, reported_metrics
from mllm4wtal.sweep.spaces.optuna_space import PARAM_KEYS, Param, Scalar, parse_distribution
from mllm4wtal.sweep.spaces.sections import (
    MlflowSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearcherSpec,
    TrialsSpec,
)
from mllm4wtal.sweep.spaces.values import article, same, show

TOP_LEVEL_KEYS = ("name", "description", "base", "overrides", "metric", "mode", "score", "space",
                  "points_to_evaluate", "searcher", "scheduler", "trials", "resources",
                  "mlflow", "storage")

#: keys the sweep owns
OWNED_KEYS = {
    "train.iterations": "ASHA rungs and max_t are checked against it; set it under overrides",
    "train.eval_interval": "ASHA rungs must fall on its reports; set it under overrides",
    "train.device": "the device follows resources.gpu; set it under overrides",
    "train.out_dir": "the sweep places each trial's run under storage.path",
    "train.best_metric": "best.pt is chosen by the sweep's metric; set metric:",
    "train.best_mode": "best.pt is chosen by the sweep's mode; set mode:",
}


class SearchSpaceError(UserError):
    """A search-space file is missing, malformed or inconsistent; the message names the file,
    the key and the fix."""


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
    #: what a trial's score is, everywhere it is ranked or shown (progress, MLflow, summary,
    #: report, the checkpoint the chosen config is tested with): ``best`` = its best
    #: evaluation of ``metric`` during the run (``best.pt``), ``last`` = its last one
    score: Literal["best", "last"]
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


def load_search_space(path: str | Path, overrides: Sequence[str] = (),
                      edits: Sequence[str] = ()) -> SearchSpaceFile:
    """Read and validate a search-space file; ``overrides`` are ``--set key=value`` strings
    applied to the base config after the file's own ``overrides``; ``edits`` are
    ``--space-set section.key=value`` strings that change the file's own sections (e.g.
    ``trials.num_samples=3``, ``scheduler.max_t=8``) before validation.

    Raises :class:`SearchSpaceError` naming the file and key on any problem.
    """
    return SearchSpaceParser(path, overrides, edits).parse()


class SearchSpaceParser(FileParser):
    KIND = "search-space"
    EXAMPLE = "search_spaces/quickstart.yaml"
    REQUIRED = ("base", "space")
    TOP_LEVEL = TOP_LEVEL_KEYS
    ERROR = SearchSpaceError

    def parse(self) -> SearchSpaceFile:
        raw, name, description = self.read_head()
        base = raw.get("base")
        file_ovr, cli_ovr = self.parse_overrides(raw)
        base_config = self.build_base(base, file_ovr, cli_ovr)
        params = self.parse_space(raw, file_ovr, cli_ovr)
        metric, mode = self.parse_metric(raw, base_config)
        base_config = self.choose_best_by(base_config, {**file_ovr, **cli_ovr}, metric, mode)
        score = raw.get("score", "best")
        if score not in ("best", "last"):
            raise self.fail("score", f"{show(score)} must be best (a trial's best evaluation "
                                     "during its run, what best.pt holds) or last (its last "
                                     "evaluation)")
        self.check_corners(params, base_config, metric)
        trials = self.section(raw, "trials", TrialsSpec)
        points = self.parse_points(raw, params, base_config, metric, trials)
        searcher = self.section(raw, "searcher", SearcherSpec)
        scheduler = self.section(raw, "scheduler", SchedulerSpec, {"config": base_config})
        resources = self.parse_resources(raw, base_config)
        storage_path, experiment_dir = self.parse_storage(raw, name)
        mlflow = self.parse_mlflow(raw, name, storage_path)
        return SearchSpaceFile(
            path=self.path.resolve(), where=self.where, name=name, description=description,
            base=base, base_config=base_config, overrides={**file_ovr, **cli_ovr},
            metric=metric, mode=mode, score=score, params=params, points_to_evaluate=points,
            searcher=searcher, scheduler=scheduler, trials=trials, resources=resources,
            mlflow=mlflow, storage_path=storage_path, experiment_dir=experiment_dir)

    def choose_best_by(self, cfg: Config, overrides: dict, metric: str, mode: str) -> Config:
        """The base config with ``best.pt`` chosen by the sweep's metric and mode, so that a
        trial's best checkpoint is the one its score describes."""
        chosen = {"train.best_metric": metric, "train.best_mode": mode}
        for key, value in chosen.items():
            if overrides.get(key, value) != value:
                raise self.fail("overrides", f"{key} = {show(overrides[key])}: in a sweep "
                                             f"best.pt is chosen by its metric and mode "
                                             f"({metric}, {mode}); drop {key}")
        return self.variant(cfg, chosen, "metric")

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
        if key in OWNED_KEYS:
            raise self.fail(label, f"cannot be searched: {OWNED_KEYS[key]}")
        if is_dataset_key(key):
            raise self.fail(label, "defines the dataset all trials share and cannot be "
                                   "searched; set it under overrides")
        if key in file_ovr:
            raise self.fail(label, "is also set under overrides; remove it from one of them")
        if key in cli_ovr:
            raise self.fail(label, "is also set with --set; a searched key cannot be fixed "
                                   "(edit the space instead)")
        if not isinstance(spec, dict):
            raise self.fail(label, f"must be a mapping like {{type: float, low: 0.1, high: "
                                   f"1.0}}; got {show(spec)}")
        self.check_keys(spec, PARAM_KEYS, f"{label}.", what="distribution key")
        param = parse_distribution(label, key, spec, tp, meta, self.fail)
        when = self.parse_when(label, key, spec.get("when"), earlier)
        return Param(key=param.key, type=param.type, low=param.low, high=param.high,
                     log=param.log, step=param.step, choices=param.choices, when=when)

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
                raise self.fail(wl, f"'{parent}' is {article(p.type)} parameter; conditions "
                                    "need a categorical one")
            vals = values if isinstance(values, list) else [values]
            if not vals:
                raise self.fail(wl, "empty list of values; give at least one of "
                                    f"{show(list(p.choices))}")
            for v in vals:
                if not p.contains(v):
                    raise self.fail(wl, f"{show(v)} is not among the choices of {parent} "
                                        f"({show(list(p.choices))})")
            out.append((parent, tuple(vals)))
        return tuple(out)

    # ---------------------------------------------------------------- metric

    def parse_metric(self, raw: dict, cfg: Config) -> tuple[str, Literal["min", "max"]]:
        reported = reported_metrics(cfg) - {"lr"}
        metric = raw.get("metric", average_metric_name(cfg.eval.tious))
        if not isinstance(metric, str) or metric not in reported:
            maps = sorted(m for m in reported if m.startswith("map/"))
            losses = sorted(m for m in reported if m.startswith("loss/"))
            hint = did_you_mean(str(metric), sorted(reported))
            raise self.fail("metric", f"{show(metric)} is never reported by training with this "
                                      f"base config{hint} (reported: {', '.join(maps)}, "
                                      f"iteration, {', '.join(losses)})")
        sensible = metric_mode(metric)
        mode = raw.get("mode", sensible or "max")
        if mode not in ("min", "max"):
            raise self.fail("mode", f"{show(mode)} must be min or max")
        if sensible is not None and mode != sensible:
            better = "higher" if sensible == "max" else "lower"
            raise self.fail("mode", f"{mode} for '{metric}', where {better} is better; use "
                                    f"mode: {sensible}")
        return metric, mode

    def check_corners(self, params: tuple[Param, ...], base: Config, metric: str) -> None:
        """Each bound / choice alone keeps the config valid and the metric reported."""
        for p in params:
            for v in p.corner_values():
                cfg = self.variant(base, {p.key: v}, f"space.{p.key}")
                if metric not in reported_metrics(cfg):
                    raise self.fail("metric", f"'{metric}' is not reported in every "
                                              f"evaluation when {p.key} = {show(v)} (space); "
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
                self.check_point_value(f"{label}.{key}", key, value, space)
            for key in point:
                for parent, allowed in space[key].when:
                    kl = f"{label}.{key}"
                    if parent not in point:
                        raise self.fail(kl, f"is conditional on {parent}; set {parent} in this "
                                            "point too")
                    if not any(same(point[parent], v) for v in allowed):
                        raise self.fail(kl, f"is only searched when {parent} is "
                                            f"{show(list(allowed))}, but this point sets "
                                            f"{parent} = {show(point[parent])}; drop {key}")
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

    def check_point_value(self, kl: str, key: Any, value: Any, space: dict[str, Param]) -> None:
        if key not in space:
            hint = did_you_mean(str(key), list(space))
            if isinstance(key, str) and key not in self.leaves and hint:
                raise self.fail(kl, f"not a searched key{hint}")
            self.config_key(kl, key)
            raise self.fail(kl, f"'{key}' is not searched; points may only set keys of "
                                "space (fixed values go under overrides)")
        p = space[key]
        if not p.contains(value):
            raise self.fail(kl, f"{show(value)} is outside its distribution ({p.describe()})")


__all__ = ["SearchSpaceError", "SearchSpaceFile", "SearchSpaceParser", "load_search_space",
           "TOP_LEVEL_KEYS", "OWNED_KEYS"]
