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
on the store), as an operation (a JSON-able dict) handed to ``sweep.mlflow_queue``: written
at once, or queued in order while the tracking server is unreachable (trials go on; the
writes follow when it answers, or from ``<experiment_dir>/mlflow_queue.jsonl`` when the
sweep resumes). Operations name runs by trial id (None: the parent), so that runs created
while the server was down get their ids when they are written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import mlflow
from mlflow.entities import Metric, RunTag

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
from mllm4wtal.sweep.mlflow_queue import fail_fast, is_outage, queue_for
from mllm4wtal.sweep.mlflow_runs import (
    PARENT_RUN_FILE,
    log_missing_params,
    reattach_child,
    reattach_parent,
    recorded_parent,
    write_record,
)
from mllm4wtal.sweep.mlflow_store import prepare_store, search_runs
from mllm4wtal.sweep.mlflow_tags import (
    ERROR_TAG,
    LAST_ITERATION_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    PRUNED_AT_TAG,
    PRUNED_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRIAL,
    SWEEP_DIR_TAG,
    TRIAL_TAG,
)
from mllm4wtal.sweep.mlflow_view import runs_url, runs_view, save_view, sweep_runs_url, ui_base

logger = logging.getLogger(__name__)

TRIAL_ARTIFACTS = ("best.pt", "predictions.json", "config.yaml", "metrics.jsonl", "split.json",
                   "test_metrics.json")
END_STATUSES = ("FINISHED", "FAILED", "KILLED")


class SweepTracker:
    """The parent run of one sweep and the child run of each of its trials.

    Creating a tracker on an ``experiment_dir`` that already holds ``mlflow_parent_run.json``
    re-attaches to that parent run (``resumed`` is then True, and the parent is RUNNING again);
    otherwise a new parent run is created and its id written there. Child runs are found
    again by their ``trial_id`` tag, never duplicated. Writes an earlier process left in
    ``mlflow_queue.jsonl`` (the server was down when it ended) are written first.

    While writes wait for the server, reads answer from what this process knows
    (``child_run_id``, ``running_trials``) or not at all (``last_value``: None); ``finish``
    then leaves the queue in the experiment folder (``spilled``: its path).

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
        try:
            with fail_fast():
                if self._queue.path.exists():  # left by a sweep that ended while it was down
                    self._parent_run_id = self._recorded_parent()
                    self._queue.replay(self._apply)
                    self._reset()
                self._attach()
        except Exception as e:
            if not is_outage(e):
                raise
            self._unreachable(e)

    def _unreachable(self, error: BaseException) -> NoReturn:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"MLflow tracking server '{self.tracking_uri}' stopped answering "
                        f"({reason}); start it and run again") from None

    # -- pickling: constructor arguments only; re-attach lazily ------------------------------

    def _reset(self) -> None:
        self._client: mlflow.MlflowClient | None = None
        self._parent_run_id: str | None = None
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}  # the last step handed over (written or queued)
        self._queue = queue_for(self.experiment_dir, self.tracking_uri)
        # shared by the trackers of one experiment in this process (a resumed sweep's
        # callback holds an unpickled one): trial -> run status as known here, and the last
        # step a re-attached run held
        self._status: dict[str, str] = self._queue.known.setdefault("status", {})
        self._stored_step: dict[str, int] = self._queue.known.setdefault("stored_step", {})
        self.spilled: Path | None = None
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
            try:
                with fail_fast():
                    self._attach()
            except Exception as e:  # an unpickled tracker while the server is down
                if not is_outage(e) or not self.parent_file.exists():
                    raise
                self._parent_run_id = self._recorded_parent()
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
            self._parent_run_id = self._reattach_parent()
            self.resumed = True
            self._children = self._search_children()
            return
        tags = {**self._base_tags(self.base_params), ROLE_TAG: ROLE_PARENT,
                SWEEP_DIR_TAG: str(self.experiment_dir)}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_name, tags=tags)
        write_record(path, run.info.run_id, self.experiment_id, self.experiment,
                     self.tracking_uri)
        self._parent_run_id = run.info.run_id
        self.resumed = False
        self._children = {}

    def _recorded_parent(self) -> str:
        return recorded_parent(self.parent_file)

    def _reattach_parent(self) -> str:
        return reattach_parent(self.client, self.parent_file, self.experiment_id,
                               self.experiment, self.tracking_uri)

    def _search(self, extra_filter: str = "") -> list[Any]:
        """The parent's children (oldest first) that also match ``extra_filter``."""
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'" + extra_filter
        return search_runs(self.client, self.experiment_id, query)

    def _search_children(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for run in self._search():  # oldest first: a duplicate (there should be none) loses
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is not None and trial_id not in found:
                found[trial_id] = run.info.run_id
                self._status[trial_id] = run.info.status
        return found

    def _lookup_child(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            hits = self._search(f" and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if hits:
                self._children[trial_id] = hits[0].info.run_id
        return self._children.get(trial_id)

    def child_run_id(self, trial_id: str) -> str | None:
        """The run id of a trial's child run; None when it has none, or while its creation
        waits for the server."""
        trial_id = str(trial_id)
        if trial_id in self._children:
            return self._children[trial_id]
        return self._queue.read(lambda: self._lookup_child(trial_id), None, self._apply)

    def _require(self, trial_id: str) -> str:
        run_id = self._lookup_child(trial_id)
        if run_id is None:
            raise KeyError(f"trial '{trial_id}' has no MLflow run; call trial_run first")
        return run_id

    def _known(self, trial_id: str) -> str:
        """``trial_id`` if it has a run (or one waits to be created), else KeyError."""
        trial_id = str(trial_id)
        if trial_id not in self._status and self.child_run_id(trial_id) is None:
            raise KeyError(f"trial '{trial_id}' has no MLflow run; call trial_run first")
        return trial_id

    # -- writing: every change is an operation (sweep.mlflow_queue) --------------------------

    def sync(self) -> None:
        """Write queued operations when the server answers again (at most ~1 s; a probe of
        it at most every 5 s); for the driver loop between trial events."""
        self._queue.sync(self._apply)

    def _submit(self, op: dict[str, Any]) -> Any:
        return self._queue.submit(op, self._apply)

    def _apply(self, op: dict[str, Any]) -> Any:
        """Write one operation to the store (at once, or when the queue gets to it)."""
        kind, trial = op["op"], op.get("trial")
        if kind == "trial":
            return self._write_trial(op)
        if kind == "finish":
            return self._write_finish(op["status"], op.get("error"))
        if kind == "view":
            view = runs_view(self.parent_run_id, self.sweep_name, self.extra_tags,
                             op["order_by"], op["mode"], op["metrics"], op["params"])
            return save_view(self.client, self.experiment_id, view)
        run_id = self.parent_run_id if trial is None else self._require(trial)
        if kind == "artifact":
            return self.client.log_artifact(run_id, op["path"])
        metrics = op.get("metrics") or {}
        if op.get("result") and op["step"] <= self._stored_step.get(trial, -1):
            metrics = {}  # the re-attached run holds this step already
        ts, step = int(op.get("ts") or time.time() * 1000), int(op.get("step") or 0)
        batch = {"metrics": [Metric(k, float(v), ts, step) for k, v in metrics.items()],
                 "tags": [RunTag(k, v) for k, v in (op.get("tags") or {}).items()]}
        if batch["metrics"] or batch["tags"]:
            self.client.log_batch(run_id, **batch)
        if kind == "end":
            self.client.set_terminated(run_id, status=op["status"])
        return None

    # -- children --------------------------------------------------------------------------

    def trial_run(self, trial_id: str, params: Mapping[str, Any],
                  tags: Mapping[str, Any] | None = None, run_name: str | None = None
                  ) -> str | None:
        """The child run of a trial: created once, re-attached (status RUNNING) afterwards;
        returns its id (None while the server is down: it is created when it answers).

        ``params`` is the training config of the trial (dotted keys; nested dicts are
        flattened). They are logged in one ``log_batch``; on re-attach only missing keys are
        logged, since MLflow refuses to change a param (a changed value is named in the tag
        ``param_conflicts`` and a warning, and the logged value stays). ``tags`` are set on
        a new run besides the usual ones (an ablation's study, variant and seed). ``run_name``
        (default: the trial id) also renames a re-attached run named otherwise before.
        """
        trial_id = str(trial_id)
        new_tags = {**self._base_tags(params),
                    **{str(k): tag_value(v) for k, v in (tags or {}).items()},
                    TRIAL_TAG: trial_id, ROLE_TAG: ROLE_TRIAL}
        self._status[trial_id] = "RUNNING"
        run_id = self._submit({"op": "trial", "trial": trial_id,
                               "params": flatten_params(params), "tags": new_tags,
                               "run_name": run_name})
        self._last_step.setdefault(trial_id, -1)
        return run_id

    def _write_trial(self, op: dict[str, Any]) -> str:
        trial_id, flat, run_name = op["trial"], op["params"], op.get("run_name")
        run_id = self._lookup_child(trial_id)
        existing: dict[str, str] = {}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name or trial_id,
                                         tags={**op["tags"], PARENT_TAG: self.parent_run_id})
            run_id = run.info.run_id
            self._children[trial_id] = run_id
            self._stored_step[trial_id] = -1
        else:
            existing, self._stored_step[trial_id] = reattach_child(self.client, run_id, run_name)
            self._last_step.setdefault(trial_id, self._stored_step[trial_id])
        log_missing_params(self.client, run_id, trial_id, flat, existing)
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
        trial_id = self._known(trial_id)
        if result.get("iteration") is None:
            logger.warning("trial %s: result without 'iteration'; not logged", trial_id)
            return {}
        step = int(result["iteration"])
        if step <= self._last_step.get(trial_id, -1):
            return {}
        logged = result_metrics(result, label=f"trial {trial_id}")
        logged.update({mlflow_name(k): float(v) for k, v in (extra or {}).items()})
        if logged:
            self._submit({"op": "log", "trial": trial_id, "metrics": logged, "step": step,
                          "ts": int(time.time() * 1000), "result": True})
        self._last_step[trial_id] = step
        return logged

    def log_run(self, trial_id: str | None, metrics: Mapping[str, float] | None = None,
                tags: Mapping[str, Any] | None = None) -> bool:
        """Metrics (step 0) and tags of a trial's run, or of the parent run (None), written
        or queued; a trial without a run is skipped (returns False)."""
        if trial_id is not None:
            if str(trial_id) not in self._status and self.child_run_id(trial_id) is None:
                return False
            trial_id = str(trial_id)
        self._submit({"op": "log", "trial": trial_id, "ts": int(time.time() * 1000),
                      "metrics": {mlflow_name(k): float(v) for k, v in (metrics or {}).items()},
                      "tags": {mlflow_name(k): tag_value(v) for k, v in (tags or {}).items()}})
        return True

    def last_value(self, trial_id: str, key: str) -> float | None:
        """The value of metric ``key`` at the last step the trial's run logged, else None
        (what a re-attached trial's score so far was; None while writes wait)."""
        def read() -> float | None:
            history = self.client.get_metric_history(self._require(str(trial_id)),
                                                     mlflow_name(key))
            if not history:
                return None
            return float(max(history, key=lambda m: (m.step, m.timestamp)).value)
        return self._queue.read(read, None, self._apply)

    def end_trial(self, trial_id: str, status: str = "FINISHED", pruned: bool = False,
                  rung: int | None = None, error: str | None = None) -> None:
        """Tag a trial's end (``outcome``: finished, pruned, failed or killed; ``pruned``,
        ``pruned_at_iteration``, ``last_iteration``, ``error``, the message cut to MLflow's
        8000 characters keeping its end, where the exception is) and set its status
        (FINISHED, FAILED or KILLED)."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        trial_id = self._known(trial_id)
        outcome = "pruned" if pruned and status == "FINISHED" else status.lower()
        tags = {PRUNED_TAG: "true" if pruned else "false", OUTCOME_TAG: outcome}
        if rung is not None:
            tags[LAST_ITERATION_TAG] = str(int(rung))
            if pruned:
                tags[PRUNED_AT_TAG] = str(int(rung))
        if error:
            tags[ERROR_TAG] = truncate(error.strip(), MAX_TAG_VALUE_LENGTH, keep="tail")
        self._status[trial_id] = status
        self._submit({"op": "end", "trial": trial_id, "tags": tags, "status": status})

    def log_trial_artifacts(self, trial_id: str, run_dir: Path | None) -> list[str]:
        """Log ``best.pt``, ``predictions.json``, ``config.yaml``, ``metrics.jsonl`` of a
        trial's run directory, those present; returns the names logged (or queued)."""
        if run_dir is None:
            return []
        trial_id = self._known(trial_id)
        logged = []
        for name in TRIAL_ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_file():
                self._submit({"op": "artifact", "trial": trial_id, "path": str(path)})
                logged.append(name)
        return logged

    def log_trial_file(self, trial_id: str, path: Path) -> None:
        """Log one file as an artifact of a trial's run (e.g. Ray's error file)."""
        self._submit({"op": "artifact", "trial": self._known(trial_id), "path": str(path)})

    # -- parent ----------------------------------------------------------------------------

    def show_runs(self, order_by: str, mode: str, metrics: list[str],
                  params: list[str] | None = None) -> str:
        """Save the view of this sweep's runs in MLflow's UI (``mlflow_view.runs_view``: its
        runs best first on metric ``order_by``, the ``metrics`` columns first, then
        ``params``), under the parent run's id; returns the address that opens it."""
        self._submit({"op": "view", "order_by": order_by, "mode": mode,
                      "metrics": list(metrics), "params": list(params or ())})
        return self.runs_url

    @property
    def runs_url(self) -> str:
        """The address that opens the experiment on its runs in MLflow's UI (``mlflow ui``
        on port 5000 for a local store), in this sweep's view once ``show_runs`` saved it."""
        offline = runs_url(ui_base(self.tracking_uri), self.experiment_id, self.parent_run_id)
        return self._queue.read(lambda: sweep_runs_url(self.tracking_uri, self.parent_run_id,
                                                       client=self.client),
                                offline, self._apply)

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        self._submit({"op": "log", "trial": None,
                      "tags": {mlflow_name(k): tag_value(v) for k, v in tags.items()}})

    def log_parent_artifact(self, path: Path) -> None:
        self._submit({"op": "artifact", "trial": None, "path": str(path)})

    def running_trials(self) -> list[str]:
        """Trial ids whose child run is still RUNNING (interrupted, or not yet ended)."""
        def read() -> list[str]:
            return [run.data.tags.get(TRIAL_TAG, run.info.run_id)
                    for run in self._search(" and attributes.status = 'RUNNING'")]
        return self._queue.read(read, [t for t, s in self._status.items() if s == "RUNNING"],
                                self._apply)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> list[str]:
        """End the sweep: children still RUNNING become KILLED (FAILED, with the tag
        ``error``, when the sweep failed; ``outcome`` says which), then the parent gets
        ``status`` (and ``error``).
        Returns the trial ids that were ended here. A later tracker on the same experiment
        dir re-opens both. Writes still waiting for the server go to ``spilled``."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        child_status = "FAILED" if status == "FAILED" else "KILLED"
        known = [t for t, s in self._status.items() if s == "RUNNING"]
        self._status.update(dict.fromkeys(known, child_status))
        ended = self._submit({"op": "finish", "status": status, "error": error})
        self.spilled = self._queue.close(self._apply)
        return known if ended is None else ended

    def _write_finish(self, status: str, error: str | None) -> list[str]:
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
