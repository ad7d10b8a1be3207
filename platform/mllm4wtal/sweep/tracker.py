"""The MLflow runs of one sweep or study, written only from the Ray Tune driver.

Layout in the store: one *parent* run per sweep, its id kept in
``<experiment_dir>/mlflow_parent_run.json`` so that a resumed sweep re-attaches to it, and one
*child* run per Ray trial (tags ``mlflow.parentRunId`` and ``trial_id``, a readable run name:
``sweep.mlflow_view``), found again by those tags when the sweep resumes. Children hold the
flattened training config as params, whitelisted metrics (``map/*``, ``loss/*``,
``iteration``, ``lr``, and the sweep's score) with ``step = iteration``, and on their end the
tags ``outcome`` (finished, pruned, failed, killed), ``pruned``/``pruned_at_iteration``/
``error``. ``show_runs`` saves the experiment's view of them in MLflow's UI.
Every write goes through an explicit ``mlflow.MlflowClient`` (``sweep.tune_callback`` calls
the tracker from Ray Tune's driver loop, one hook at a time, so concurrent trials never race
on the store).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mllm4wtal.errors import UserError
from mllm4wtal.sweep.mlflow_names import (
    MAX_TAG_VALUE_LENGTH,
    environment_tags,
    flatten_params,
    mlflow_name,
    result_metrics,
    seed_tags,
    tag_value,
    truncate,
)
from mllm4wtal.sweep.mlflow_store import prepare_store, search_runs
from mllm4wtal.sweep.mlflow_tags import (
    END_TAGS,
    ERROR_TAG,
    LAST_ITERATION_TAG,
    OUTCOME_TAG,
    PARAM_CONFLICTS_TAG,
    PARENT_TAG,
    PRUNED_AT_TAG,
    PRUNED_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRIAL,
    SWEEP_DIR_TAG,
    TRIAL_TAG,
)
from mllm4wtal.sweep.mlflow_view import runs_view, save_view, sweep_runs_url

logger = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run.json"
TRIAL_ARTIFACTS = ("best.pt", "predictions.json", "config.yaml", "metrics.jsonl", "split.json",
                   "test_metrics.json")
END_STATUSES = ("FINISHED", "FAILED", "KILLED")


def log_run_metrics(client: mlflow.MlflowClient, run_id: str, metrics: Mapping[str, float],
                    step: int = 0) -> None:
    """Metrics of one run in one batch, names made MLflow-legal."""
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(mlflow_name(k), float(v), ts, step)
                                      for k, v in metrics.items()])


def set_run_tags(client: mlflow.MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Tags of one run in one batch, names made MLflow-legal, values cut to 8000."""
    client.log_batch(run_id, tags=[RunTag(mlflow_name(k), tag_value(v))
                                   for k, v in tags.items()])


class SweepTracker:
    """The parent run of one sweep and the child run of each of its trials.

    Creating a tracker on an ``experiment_dir`` that already holds ``mlflow_parent_run.json``
    re-attaches to that parent run (``resumed`` is then True, and the parent is RUNNING again);
    otherwise a new parent run is created and its id written there. Child runs are found
    again by their ``trial_id`` tag, never duplicated.

    The tracker pickles as its constructor arguments (Ray Tune stores the callbacks of a
    sweep in ``tuner.pkl``); an unpickled tracker re-attaches to the same parent on first use.
    """

    def __init__(self, experiment_dir: Path, experiment: str = "mllm4wtal",
                 tracking_uri: str | None = None, *, sweep_name: str | None = None,
                 base_params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        self.experiment_dir = Path(experiment_dir).resolve()
        self.experiment = experiment
        self.sweep_name = sweep_name or self.experiment_dir.name
        self.base_params = dict(base_params or {})
        self.extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.tracking_uri, self.experiment_id = prepare_store(tracking_uri, experiment,
                                                              self.experiment_dir)
        self._reset()
        self._attach()

    # -- pickling: constructor arguments only; re-attach lazily ------------------------------

    def _reset(self) -> None:
        self._client: mlflow.MlflowClient | None = None
        self._parent_run_id: str | None = None
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self.resumed = False

    def __getstate__(self) -> dict[str, Any]:
        keep = ("experiment_dir", "experiment", "sweep_name", "base_params", "extra_tags",
                "tracking_uri", "experiment_id")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> mlflow.MlflowClient:
        if self._client is None:
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def parent_run_id(self) -> str:
        if self._parent_run_id is None:
            self._attach()
        assert self._parent_run_id is not None
        return self._parent_run_id

    @property
    def parent_file(self) -> Path:
        return self.experiment_dir / PARENT_RUN_FILE

    def _base_tags(self, params: Mapping[str, Any] | None) -> dict[str, str]:
        return {**environment_tags(), **seed_tags(params), **self.extra_tags}

    def _attach(self) -> None:
        path = self.parent_file
        if path.exists():
            self._parent_run_id = self._reattach_parent(path)
            self.resumed = True
            self._children = self._search_children()
            return
        tags = {**self._base_tags(self.base_params), ROLE_TAG: ROLE_PARENT,
                SWEEP_DIR_TAG: str(self.experiment_dir)}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_name, tags=tags)
        record = {"run_id": run.info.run_id, "experiment_id": self.experiment_id,
                  "experiment": self.experiment, "tracking_uri": self.tracking_uri}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
        self._parent_run_id = run.info.run_id
        self.resumed = False
        self._children = {}

    def _reattach_parent(self, path: Path) -> str:
        fix = (f"point mlflow.tracking_uri/experiment at the store this sweep started with, or "
               f"delete {path} to start a new parent run")
        try:
            run_id = str(json.loads(path.read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a parent-run record ({e}); {fix}") from None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise UserError(f"{path}: parent run {run_id} is not in the tracking store "
                            f"'{self.tracking_uri}'; {fix}") from None
        if run.info.experiment_id != self.experiment_id:
            raise UserError(f"{path}: parent run {run_id} belongs to experiment id "
                            f"{run.info.experiment_id}, not to '{self.experiment}' "
                            f"({self.experiment_id}); {fix}")
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        if ERROR_TAG in run.data.tags:  # the reason an earlier attempt failed
            self.client.delete_tag(run_id, ERROR_TAG)
        return run_id

    def _search(self, extra_filter: str = "") -> list[Any]:
        """The parent's children (oldest first) that also match ``extra_filter``."""
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'" + extra_filter
        return search_runs(self.client, self.experiment_id, query)

    def _search_children(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for run in self._search():  # oldest first: a duplicate (there should be none) loses
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is not None:
                found.setdefault(trial_id, run.info.run_id)
        return found

    def child_run_id(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            hits = self._search(f" and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if hits:
                self._children[trial_id] = hits[0].info.run_id
        return self._children.get(trial_id)

    def _require(self, trial_id: str) -> str:
        run_id = self.child_run_id(trial_id)
        if run_id is None:
            raise KeyError(f"trial '{trial_id}' has no MLflow run; call trial_run first")
        return run_id

    # -- children --------------------------------------------------------------------------

    def trial_run(self, trial_id: str, params: Mapping[str, Any],
                  tags: Mapping[str, Any] | None = None, run_name: str | None = None) -> str:
        """The child run of a trial: created once, re-attached (status RUNNING) afterwards.

        ``params`` is the training config of the trial (dotted keys; nested dicts are
        flattened). They are logged in one ``log_batch``; on re-attach only missing keys are
        logged, since MLflow refuses to change a param (a changed value is named in the tag
        ``param_conflicts`` and a warning, and the logged value stays). ``tags`` are set on
        a new run besides the usual ones (an ablation's study, variant and seed). ``run_name``
        (default: the trial id) also renames a re-attached run named otherwise before.
        """
        trial_id = str(trial_id)
        flat = flatten_params(params)
        run_id = self.child_run_id(trial_id)
        existing: dict[str, str] = {}
        if run_id is None:
            tags = {**self._base_tags(params),
                    **{str(k): tag_value(v) for k, v in (tags or {}).items()},
                    PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, ROLE_TAG: ROLE_TRIAL}
            run = self.client.create_run(self.experiment_id, run_name=run_name or trial_id,
                                         tags=tags)
            run_id = run.info.run_id
            self._children[trial_id] = run_id
            self._last_step[trial_id] = -1
        else:
            run = self.client.get_run(run_id)
            existing = dict(run.data.params)
            if run.info.lifecycle_stage == "deleted":
                self.client.restore_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            if run_name and run.info.run_name != run_name:  # named by an older version
                self.client.update_run(run_id, name=run_name)
            for tag in END_TAGS:
                if tag in run.data.tags:
                    self.client.delete_tag(run_id, tag)
            if trial_id not in self._last_step:
                history = self.client.get_metric_history(run_id, "iteration")
                self._last_step[trial_id] = max((m.step for m in history), default=-1)
        conflicts = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if conflicts:
            logger.warning("trial %s: params %s differ from those logged before; MLflow keeps "
                           "the first values", trial_id, ", ".join(conflicts))
            self.client.set_tag(run_id, PARAM_CONFLICTS_TAG, tag_value(",".join(conflicts)))
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        if new:
            self.client.log_batch(run_id, params=new)
        return run_id

    def log_result(self, trial_id: str, result: Mapping[str, Any],
                   extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Log the whitelisted metrics of one result at ``step = int(result["iteration"])``.

        Keys starting with ``map/`` or ``loss/``, ``iteration`` and ``lr`` whose values are
        real numbers, names made MLflow-legal (``mlflow_names.result_metrics``), and the
        ``extra`` metrics (the trial's score so far) at the same step. A step already
        logged for this trial (a resumed trial replaying
        the iterations after its checkpoint) is skipped. Returns what was logged.
        """
        trial_id = str(trial_id)
        run_id = self._require(trial_id)
        if result.get("iteration") is None:
            logger.warning("trial %s: result without 'iteration'; not logged", trial_id)
            return {}
        step = int(result["iteration"])
        if step <= self._last_step.get(trial_id, -1):
            return {}
        logged = result_metrics(result, label=f"trial {trial_id}")
        logged.update({mlflow_name(k): float(v) for k, v in (extra or {}).items()})
        if logged:
            log_run_metrics(self.client, run_id, logged, step)
        self._last_step[trial_id] = step
        return logged

    def last_value(self, trial_id: str, key: str) -> float | None:
        """The value of metric ``key`` at the last step the trial's run logged, else None
        (what a re-attached trial's score so far was)."""
        history = self.client.get_metric_history(self._require(str(trial_id)),
                                                 mlflow_name(key))
        if not history:
            return None
        return float(max(history, key=lambda m: (m.step, m.timestamp)).value)

    def end_trial(self, trial_id: str, status: str = "FINISHED", pruned: bool = False,
                  rung: int | None = None, error: str | None = None) -> None:
        """Tag a trial's end (``outcome``: finished, pruned, failed or killed; ``pruned``,
        ``pruned_at_iteration``, ``last_iteration``, ``error``, the message cut to MLflow's
        8000 characters keeping its end, where the exception is) and set its status
        (FINISHED, FAILED or KILLED)."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        run_id = self._require(str(trial_id))
        outcome = "pruned" if pruned and status == "FINISHED" else status.lower()
        tags = {PRUNED_TAG: "true" if pruned else "false", OUTCOME_TAG: outcome}
        if rung is not None:
            tags[LAST_ITERATION_TAG] = str(int(rung))
            if pruned:
                tags[PRUNED_AT_TAG] = str(int(rung))
        if error:
            tags[ERROR_TAG] = truncate(error.strip(), MAX_TAG_VALUE_LENGTH, keep="tail")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def log_trial_artifacts(self, trial_id: str, run_dir: Path | None) -> list[str]:
        """Log ``best.pt``, ``predictions.json``, ``config.yaml``, ``metrics.jsonl`` of a
        trial's run directory, those present; returns the names logged."""
        if run_dir is None:
            return []
        run_id = self._require(str(trial_id))
        logged = []
        for name in TRIAL_ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
                logged.append(name)
        return logged

    def log_trial_file(self, trial_id: str, path: Path) -> None:
        """Log one file as an artifact of a trial's run (e.g. Ray's error file)."""
        self.client.log_artifact(self._require(str(trial_id)), str(path))

    # -- parent ----------------------------------------------------------------------------

    def show_runs(self, order_by: str, mode: str, metrics: list[str],
                  params: list[str] | None = None) -> str:
        """Save the view of this sweep's runs in MLflow's UI (``mlflow_view.runs_view``: its
        runs best first on metric ``order_by``, the ``metrics`` columns first, then
        ``params``), under the parent run's id; returns the address that opens it."""
        view = runs_view(self.parent_run_id, self.sweep_name, self.extra_tags, order_by, mode,
                         metrics, params or ())
        save_view(self.client, self.experiment_id, view)
        return self.runs_url

    @property
    def runs_url(self) -> str:
        """The address that opens the experiment on its runs in MLflow's UI (``mlflow ui``
        on port 5000 for a local store), in this sweep's view once ``show_runs`` saved it."""
        return sweep_runs_url(self.tracking_uri, self.parent_run_id, client=self.client)

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        set_run_tags(self.client, self.parent_run_id, tags)

    def log_parent_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.parent_run_id, str(path))

    def running_trials(self) -> list[str]:
        """Trial ids whose child run is still RUNNING (interrupted, or not yet ended)."""
        return [run.data.tags.get(TRIAL_TAG, run.info.run_id)
                for run in self._search(" and attributes.status = 'RUNNING'")]

    def finish(self, status: str = "FINISHED", error: str | None = None) -> list[str]:
        """End the sweep: children still RUNNING become KILLED (FAILED, with the tag
        ``error``, when the sweep failed; ``outcome`` says which), then the parent gets
        ``status`` (and ``error``).
        Returns the trial ids that were ended here. A later tracker on the same experiment
        dir re-opens both."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        child_status = "FAILED" if status == "FAILED" else "KILLED"
        tags = [RunTag(ERROR_TAG, truncate(error.strip(), MAX_TAG_VALUE_LENGTH, keep="tail"))
                ] if error else []
        ended = []
        for run in self._search(" and attributes.status = 'RUNNING'"):
            self.client.log_batch(run.info.run_id,
                                  tags=[*tags, RunTag(OUTCOME_TAG, child_status.lower())])
            self.client.set_terminated(run.info.run_id, status=child_status)
            ended.append(run.data.tags.get(TRIAL_TAG, run.info.run_id))
        if tags:
            self.client.log_batch(self.parent_run_id, tags=tags)
        self.client.set_terminated(self.parent_run_id, status=status)
        return ended
