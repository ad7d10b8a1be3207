"""The sweep platform end to end: real Ray Tune (in-process), real Optuna study (sqlite), real
MLflow store (sqlite), the tiny synthetic benchmark."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import TINY
from mllm4wtal.config import parse_override
from mllm4wtal.errors import UserError
from mllm4wtal.report.summary import write_sweep_summary
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.search import load_study

pytestmark = pytest.mark.slow  # minutes of Ray trials

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 8
RUNGS = {2}  # ASHA's rungs below max_t: grace_period 2 x reduction_factor 4^k < TOTAL
AVG = "map/avg_0.1-0.7"


def space_file(tmp_path: Path, name: str, **changes) -> Path:
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"train.iterations": TOTAL, "train.eval_interval": 2,
                      "text.cache_dir": str(tmp_path / "cache"),
                      "text.store": str(tmp_path / "missing.jsonl")})
    doc = {
        "name": name, "base": "synthetic", "overrides": overrides,
        # a tiny run's mAP barely moves in 8 iterations; its loss does, so ASHA can rank
        "metric": "loss/match", "mode": "min",
        "space": {
            "loss.mu1": {"type": "float", "low": 0.1, "high": 5.0, "log": True},
            "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
            "ksm.prompt": {"type": "categorical", "choices": ["learnable", "handcraft"]},
            # descriptions from a store that does not exist: the trial's training refuses it
            # at its start (a config the search-space validation does not catch)
            "text.backend": {"type": "categorical", "choices": ["template", "file"],
                             "when": {"ksm.prompt": "handcraft"}},
        },
        "points_to_evaluate": [
            {"loss.mu1": 1.0, "train.lr": 5.0e-4, "ksm.prompt": "learnable"},
            {"loss.mu1": 1.0, "train.lr": 5.0e-4, "ksm.prompt": "handcraft",
             "text.backend": "file"},
            # L_match weighs the loc loss five times: worse than the first at the first rung
            {"loss.mu1": 5.0, "train.lr": 5.0e-4, "ksm.prompt": "learnable"},
        ],
        # random search: TPE improves trial after trial, and ASHA prunes only trials worse
        # than those before them
        "searcher": {"sampler": "random", "seed": 0},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 4,
                      "max_t": TOTAL},
        "trials": {"num_samples": 8, "max_concurrent": 2, "max_failures": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": {"path": str(tmp_path / "sweeps")},
    }
    doc.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def children(client: mlflow.MlflowClient, space) -> dict[str, mlflow.entities.Run]:
    exp = client.get_experiment_by_name(space.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}


def test_sweep_prunes_fails_and_logs(tmp_path, ray_session):
    space = runner.load(space_file(tmp_path, "small"), [])
    runner.claim(space, [])
    result = runner.run_sweep(space, verbose=0)
    assert not result.interrupted
    records = {r["trial_id"]: r for r in result.records}
    assert len(records) == 8

    # the config that raises ends FAILED with its reason; the others finish
    client = mlflow.MlflowClient(result.tracking_uri)
    runs = children(client, space)
    assert set(runs) == set(records)
    failed = {t for t, r in records.items() if r["status"] == "FAILED"}
    bad_config = {t for t, r in records.items() if r["config"].get("text.backend") == "file"}
    assert failed == bad_config and failed
    for t in failed:
        assert runs[t].info.status == "FAILED"
        assert "missing.jsonl' does not exist" in runs[t].data.tags["error"]
    # ASHA stopped at least one trial before the end; exactly those are PRUNED in Optuna
    pruned = {t for t, r in records.items() if r["pruned"]}
    assert pruned, "ASHA stopped no trial"
    for t, r in records.items():
        if t not in failed:
            assert runs[t].info.status == "FINISHED"
            assert runs[t].data.tags["pruned"] == ("true" if t in pruned else "false")
            if t in pruned:  # stopped at a rung, and tagged with it
                assert r["iterations"] in RUNGS
                assert runs[t].data.tags["pruned_at_iteration"] == str(r["iterations"])
            else:
                assert r["iterations"] == TOTAL
                assert "pruned_at_iteration" not in runs[t].data.tags
    study = load_study(space)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert states.count(optuna.trial.TrialState.FAIL) == len(failed)
    assert states.count(optuna.trial.TrialState.COMPLETE) == 8 - len(pruned) - len(failed)
    optuna_rungs = []
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            rung = t.user_attrs["pruned_at_iteration"]
            assert rung < TOTAL and max(t.intermediate_values) == rung
            optuna_rungs.append(rung)
    assert sorted(optuna_rungs) == sorted(records[t]["iterations"] for t in pruned)
    # parent / child structure, params = the flat training config, metric histories
    parent_id = json.loads((result.experiment_dir / "mlflow_parent_run.json").read_text())
    parent_id = parent_id.get("run_id", parent_id)
    for t, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.params["train.iterations"] == str(TOTAL)
        assert float(run.data.params["loss.mu1"]) == records[t]["config"]["loss.mu1"]
        assert not any(k.startswith(("time_", "config/")) for k in run.data.params)
        if t not in failed:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, AVG)]
            assert steps == list(range(2, records[t]["iterations"] + 1, 2))
    assert result.parent_run_id == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    # the summary (what `mllm4wtal sweep` writes next) in summary/ and on the parent run
    summary = write_sweep_summary(space, result)
    assert summary["trial_iterations_used"] == sum(r["iterations"] for r in records.values())
    assert summary["n_pruned"] == len(pruned) and summary["n_failed"] == len(failed)
    best = min((r for r in records.values() if r["metric"] is not None),
               key=lambda r: (r["metric"], r["trial_id"]))
    assert summary["best_trial_id"] == best["trial_id"]
    assert (result.experiment_dir / "summary" / "summary.json").is_file()
    names = {a.path for a in client.list_artifacts(parent_id)}
    assert {"best_config.yaml", "top10.md", "parallel_coordinates.png"} <= names
    assert client.get_run(parent_id).data.tags["best_trial_id"] == best["trial_id"]
    # a second start of the same sweep is refused, nothing overwritten
    with pytest.raises(UserError, match=r"already holds the sweep 'small'; continue it with "
                                        r"`mllm4wtal sweep --resume"):
        runner.claim(runner.load(space_file(tmp_path, "small"), []), [])


def _finished_children(space) -> int:
    """How many child runs are FINISHED, read from the sqlite file without MLflow: an
    MlflowClient here would run MLflow's schema migration on the store the driver is
    creating at the same moment, and the two migrations collide."""
    db = Path(space.mlflow.tracking_uri.removeprefix("sqlite:///"))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = "
                               "r.run_uuid AND t.key = 'mlflow.parentRunId' "
                               "WHERE r.status = 'FINISHED'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_killed_driver_resumes_without_rerun_or_duplicate(tmp_path):
    path = space_file(tmp_path, "killme", trials={"num_samples": 6, "max_concurrent": 1,
                                                   "max_failures": 0},
                      scheduler={"type": "none"},
                      space={"loss.lambda1": {"type": "float", "low": 0.1, "high": 5.0}},
                      points_to_evaluate=[])
    space = runner.load(path, [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mllm4wtal.cli", "sweep", str(path)]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if _finished_children(space) >= 2:
                break
            assert proc.poll() is None, log.read_text()[-4000:]
            time.sleep(1)
        else:
            pytest.fail("no two trials finished in time")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may have ended on its own
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    time.sleep(2)
    exp = Path(space.experiment_dir)
    results_before = {p.parent.name: p.read_text().count("\n")
                      for p in exp.glob("*/result.json")}
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)  # the driver is gone: safe now
    finished_before = {t for t, r in children(client, space).items()
                       if r.info.status == "FINISHED"}
    assert len(finished_before) >= 2

    out = subprocess.run([sys.executable, "-m", "mllm4wtal.cli", "sweep", "--resume",
                          str(exp)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)
    runs = children(client, space)
    exp_id = client.get_experiment_by_name(space.mlflow.experiment).experiment_id
    all_runs = client.search_runs([exp_id], max_results=1000)
    assert len(all_runs) == 1 + 6  # one parent, one child per trial: nothing duplicated
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs.values())
    # finished trials were not rerun: their Ray result logs did not grow
    for trial_dir, lines in results_before.items():
        trial_id = "_".join(trial_dir.split("_")[1:3])
        if trial_id in finished_before:
            assert (exp / trial_dir / "result.json").read_text().count("\n") == lines
    for run in runs.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, AVG)]
        assert steps == list(range(2, TOTAL + 1, 2))  # no gap, no repeat
