"""Checks on a sweep's records that the fault tests share (one machine: test_faults.py; a
multi-node cluster: test_multinode.py): MLflow's runs, the Optuna study, the driver's CLI."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mllm4wtal.sweep.search import load_study


def child_runs(client: mlflow.MlflowClient, experiment: str) -> dict[str, mlflow.entities.Run]:
    """The child run of each trial, by its ``trial_id`` tag."""
    exp = client.get_experiment_by_name(experiment)
    return {r.data.tags["trial_id"]: r
            for r in client.search_runs([exp.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in r.data.tags}


def sweep_cli() -> list[str]:
    """``mllm4wtal`` as the README runs it (.venv/bin/mllm4wtal)."""
    script = Path(sys.executable).with_name("mllm4wtal")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mllm4wtal.cli"]


def statuses(uri: str, experiment: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The parent's status (and ``error`` tag), each child's status and its ``error`` tag."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    kids = child_runs(client, experiment)
    return (parent[0].info.status + " " + parent[0].data.tags.get("error", ""),
            {t: r.info.status for t, r in kids.items()},
            {t: r.data.tags.get("error", "") for t, r in kids.items()})


def finished_children(tracking_uri: str, experiment: str) -> int:
    """How many child runs of ``experiment`` are FINISHED, read from MLflow's sqlite file
    read-only: an MlflowClient here would run MLflow's schema migration on the store a
    running driver is creating at the same moment, and the two migrations collide."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute(
                "SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND "
                "t.key = 'mlflow.parentRunId' JOIN experiments e ON e.experiment_id = "
                "r.experiment_id WHERE r.status = 'FINISHED' AND e.name = ?",
                (experiment,)).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def assert_one_record_per_trial(space: Any, trials: int) -> dict[str, mlflow.entities.Run]:
    """A finished sweep of ``trials`` trials: one FINISHED parent and one FINISHED child run
    per trial in MLflow (nothing RUNNING, nothing duplicated), one COMPLETE Optuna trial
    per trial and none left RUNNING. Returns the child runs by trial id."""
    parent, kids, errors = statuses(space.mlflow.tracking_uri, space.mlflow.experiment)
    assert parent == "FINISHED ", parent
    assert len(kids) == trials, kids
    assert set(kids.values()) == {"FINISHED"}, kids
    assert not any(errors.values()), errors
    study = load_study(space)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert states.count(optuna.trial.TrialState.COMPLETE) == trials, states
    return child_runs(mlflow.MlflowClient(space.mlflow.tracking_uri), space.mlflow.experiment)
