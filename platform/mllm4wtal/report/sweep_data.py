"""A sweep read back for its plots (``report.sweep_plots``): each trial's record and
metric history from MLflow, which keys each trial sampled and the importances' study from
the sweep's Optuna study (``<sweep_dir>/optuna.db``), ASHA's rungs from its copy of the
search-space file. Also ``trial_histories`` and ``asha_rungs`` for the summary at the end
of a sweep (``report.summary``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.report.collect import ExperimentData
from mllm4wtal.report.tables import varying_params
from mllm4wtal.sweep.mlflow_names import mlflow_name, param_value
from mllm4wtal.sweep.mlflow_store import search_runs
from mllm4wtal.sweep.mlflow_tags import (
    PARENT_TAG,
    SCORE_TAG,
    SWEEP_DIR_TAG,
    SWEEP_METRIC_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from mllm4wtal.sweep.records import SCORE_RULES, TrialRecord, trial_score

OPTUNA_DB = "optuna.db"
History = list[tuple[int, float]]  # (training iteration, value), by iteration


def asha_rungs(scheduler: Any) -> list[int]:
    """The iterations at which ASHA compares trials, for a ``SchedulerSpec`` (none without
    ASHA): Ray's ``ASHAScheduler`` rungs (one bracket), ``grace_period * rf**k`` for
    ``k < int(log(max_t / grace_period) / log(rf) + 1)``."""
    if getattr(scheduler, "type", "none") != "asha":
        return []
    grace, rf = scheduler.grace_period, scheduler.reduction_factor
    count = int(np.log(scheduler.max_t / grace) / np.log(rf) + 1)  # Ray's own float formula
    return [int(grace * rf ** k) for k in range(count)]


def trial_histories(client: Any, parent_run_id: str, metric: str) -> dict[str, History]:
    """Each trial's ``metric`` at every report, from the MLflow child runs of the sweep's
    parent run ``parent_run_id``: trial id -> [(iteration, value)]."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    out: dict[str, History] = {}
    for run in search_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'"):
        tid = run.data.tags.get(TRIAL_TAG)
        if tid is not None:
            points = {m.step: float(m.value) for m in
                      client.get_metric_history(run.info.run_id, mlflow_name(metric))}
            out[tid] = sorted(points.items())
    return out


def _typed(value: str) -> Any:
    if value in ("True", "False", "true", "false"):
        return value in ("True", "true")
    try:
        f = float(value)
    except ValueError:
        return value
    return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f


def _sampled(params: Mapping[str, str], study: Any) -> set[str] | None:
    """The keys the sweep sampled for a run whose (full) MLflow params are ``params``: those
    of the Optuna trial whose every parameter has the run's value (which of a conditional
    space's keys are active follows from those values); None when no trial matches."""
    for trial in study.get_trials(deepcopy=False):
        if trial.params and all(params.get(mlflow_name(k)) == param_value(v)
                                for k, v in trial.params.items()):
            return set(trial.params)
    return None


def sweep_score(data: ExperimentData) -> str:
    """The sweep's score rule (its parent's tag ``score_rule``), else ``best``."""
    rule = data.parent_tags.get(SCORE_TAG, "best")
    return rule if rule in SCORE_RULES else "best"


def _score(run: Any, data: ExperimentData, metric: str, mode: str) -> float | None:
    """The run's score: its last logged ``best/<metric>`` or ``last/<metric>`` (the trial's
    score so far), else the sweep's score rule applied to its evaluations of ``metric``."""
    for kind in SCORE_RULES:
        if f"{kind}/{metric}" in run.metrics:
            return run.metrics[f"{kind}/{metric}"]
    hist = [v for _, v in data.history(run.run_id, metric)] if metric in run.metrics else []
    return trial_score(hist, mode, sweep_score(data)) if hist else None


def sweep_records(data: ExperimentData, metric: str, mode: str, study: Any = None
                  ) -> list[TrialRecord]:
    """Every trial of a sweep read back from MLflow as a ``TrialRecord``: as config the
    varying params it sampled (all varying params when the Optuna ``study`` is not given or
    holds no trial of the run), its score (``_score``)."""
    keys = varying_params(data.runs)
    out = []
    for r in data.runs:
        sampled = _sampled(r.params, study) if study is not None else None
        active = [k for k in keys if k in r.params and (sampled is None or k in sampled)]
        out.append(TrialRecord(trial_id=r.trial_id,
                               config={k: _typed(r.params[k]) for k in active},
                               metric=_score(r, data, metric, mode), pruned=r.pruned,
                               status=r.status, iterations=int(r.metrics.get("iteration", 0))))
    return out


def stored_study(data: ExperimentData) -> Any:
    """The sweep's Optuna study (``<sweep_dir>/optuna.db``), or None when not reachable."""
    import optuna

    sweep_dir = data.parent_tags.get(SWEEP_DIR_TAG)
    name = data.parent_tags.get(SWEEP_TAG)
    if sweep_dir and name and (Path(sweep_dir) / OPTUNA_DB).is_file():
        try:
            return optuna.load_study(study_name=name,
                                     storage=f"sqlite:///{Path(sweep_dir) / OPTUNA_DB}")
        except (KeyError, ValueError):
            return None
    return None


def sweep_study(data: ExperimentData, records: list[TrialRecord], mode: str) -> Any:
    """The sweep's Optuna study when it is reachable, else one rebuilt from the MLflow
    trials (distributions spanning the values seen)."""
    import optuna

    study = stored_study(data)
    if study is not None:
        return study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    keys = sorted({k for r in records for k in r["config"]})
    dists: dict[str, Any] = {}
    for k in keys:
        vals = [r["config"][k] for r in records if k in r["config"]]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            dists[k] = optuna.distributions.FloatDistribution(lo, hi if hi > lo else lo + 1.0)
        else:
            dists[k] = optuna.distributions.CategoricalDistribution(
                sorted({str(v) for v in vals}))
    for r in records:
        if r["metric"] is None or not math.isfinite(r["metric"]) or r["pruned"]:
            continue
        params = {k: (float(v) if isinstance(dists[k], optuna.distributions.FloatDistribution)
                      else str(v)) for k, v in r["config"].items() if k in dists}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=r["metric"]))
    return study


def sweep_metric(data: ExperimentData) -> tuple[str, str]:
    """The sweep's metric and mode (its parent's tag ``sweep_metric``), else the average mAP
    of the logged tIoUs, maximised."""
    metric, _, rest = data.parent_tags.get(SWEEP_METRIC_TAG, "").partition(" (")
    mode = "min" if rest.startswith("min") else "max"
    if not metric:
        from mllm4wtal.evaluation.detection import average_metric_name

        tious = data.tious()
        metric = average_metric_name(tious) if tious else "map/avg"
    return metric, mode


def sweep_rungs(data: ExperimentData) -> list[int] | None:
    """ASHA's rungs of the sweep, from its copy of the search-space file in its experiment
    directory; None when that is not reachable."""
    from mllm4wtal.errors import UserError
    from mllm4wtal.sweep.runner import reload

    sweep_dir = data.parent_tags.get(SWEEP_DIR_TAG)
    if not sweep_dir:
        return None
    try:
        return asha_rungs(reload(sweep_dir).scheduler)
    except UserError:
        return None


__all__ = ["History", "asha_rungs", "trial_histories", "sweep_records", "sweep_study",
           "stored_study", "sweep_metric", "sweep_score", "sweep_rungs", "OPTUNA_DB"]
