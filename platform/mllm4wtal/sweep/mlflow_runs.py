"""Re-attaching the runs of a resumed sweep or study. The parent run: its record in the
experiment folder (``mlflow_parent_run.json``: run id, experiment, tracking URI), restored
from MLflow's trash, RUNNING again, the error of an earlier attempt cleared. A child run:
RUNNING again, its end tags cleared, only the params it lacks logged (MLflow refuses to
change one)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from mllm4wtal.errors import UserError
from mllm4wtal.sweep.mlflow_names import tag_value
from mllm4wtal.sweep.mlflow_queue import is_outage
from mllm4wtal.sweep.mlflow_tags import END_TAGS, ERROR_TAG, PARAM_CONFLICTS_TAG

logger = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run.json"


def _fix(path: Path) -> str:
    return (f"point mlflow.tracking_uri/experiment at the store this sweep started with, "
            f"or delete {path} to start a new parent run")


def write_record(path: Path, run_id: str, experiment_id: str, experiment: str,
                 tracking_uri: str) -> None:
    """The parent run's record, written under a temporary name and renamed into place."""
    record = {"run_id": run_id, "experiment_id": experiment_id, "experiment": experiment,
              "tracking_uri": tracking_uri}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def recorded_parent(path: Path) -> str:
    """The run id the record at ``path`` holds (one line naming the file if it holds none)."""
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a parent-run record ({e}); {_fix(path)}") from None


def reattach_parent(client: mlflow.MlflowClient, path: Path, experiment_id: str,
                    experiment: str, tracking_uri: str) -> str:
    """The recorded parent run, RUNNING again in ``experiment``; an outage of the server
    is raised as it is (the caller queues), anything else is one line naming the record."""
    run_id = recorded_parent(path)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if is_outage(e):
            raise
        raise UserError(f"{path}: parent run {run_id} is not in the tracking store "
                        f"'{tracking_uri}'; {_fix(path)}") from None
    if run.info.experiment_id != experiment_id:
        raise UserError(f"{path}: parent run {run_id} belongs to experiment id "
                        f"{run.info.experiment_id}, not to '{experiment}' ({experiment_id}); "
                        f"{_fix(path)}")
    if run.info.lifecycle_stage == "deleted":
        client.restore_run(run_id)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    if ERROR_TAG in run.data.tags:  # the reason an earlier attempt failed
        client.delete_tag(run_id, ERROR_TAG)
    return run_id


def reattach_child(client: mlflow.MlflowClient, run_id: str, run_name: str | None
                   ) -> tuple[dict[str, str], int]:
    """A trial's child run RUNNING again (renamed to ``run_name`` when an older version named
    it otherwise, end tags cleared); returns its params and the last step it holds."""
    run = client.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        client.restore_run(run_id)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    if run_name and run.info.run_name != run_name:
        client.update_run(run_id, name=run_name)
    for tag in END_TAGS:
        if tag in run.data.tags:
            client.delete_tag(run_id, tag)
    history = client.get_metric_history(run_id, "iteration")
    return dict(run.data.params), max((m.step for m in history), default=-1)


def log_missing_params(client: mlflow.MlflowClient, run_id: str, trial_id: str,
                       flat: Mapping[str, str], existing: Mapping[str, str]) -> None:
    """The params a run lacks, in one batch; a changed value is named in the tag
    ``param_conflicts`` and a warning (MLflow keeps the first)."""
    conflicts = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
    if conflicts:
        logger.warning("trial %s: params %s differ from those logged before; MLflow keeps "
                       "the first values", trial_id, ", ".join(conflicts))
        client.set_tag(run_id, PARAM_CONFLICTS_TAG, tag_value(",".join(conflicts)))
    new = [Param(k, v) for k, v in flat.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)
