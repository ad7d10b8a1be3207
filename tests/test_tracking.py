"""MLflow side of sweeps: a real sqlite store, real Ray Tune in-process (one session).

The summary written from the tracked trials is tested in test_summary.py."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import mlflow
import pytest
import ray
from mlflow.utils.validation import _validate_metric_name
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import start_ray
from mllm4wtal.sweep.mlflow_names import mlflow_name
from mllm4wtal.sweep.mlflow_store import normalize_tracking_uri, prepare_store
from mllm4wtal.sweep.tracker import PARENT_RUN_FILE, SweepTracker
from mllm4wtal.sweep.tune_callback import MlflowTuneCallback
from ray import tune

TOTAL = 4
AVG = "map/avg_0.1-0.7"


# ---------------------------------------------------------------------------------------------
# fixtures: one sqlite store (its creation migrates the schema: seconds) and one Ray session


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The default store of a first experiment dir; other tests reuse its URI."""
    root = tmp_path_factory.mktemp("store")
    uri, exp_id = prepare_store(None, "first", root)
    assert uri == f"sqlite:///{(root / 'mlflow.db').resolve().as_posix()}"
    assert (root / "mlflow.db").is_file()
    # idempotent: the same experiment again, with its artifacts under the experiment dir
    assert prepare_store(None, "first", root) == (uri, exp_id)
    exp = mlflow.MlflowClient(uri).get_experiment(exp_id)
    assert exp.artifact_location == (root.resolve() / "mlartifacts").as_uri()
    return uri


@pytest.fixture(scope="module")
def ray_session():
    # workers cannot import this test module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_ray(num_cpus=2)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def trainable(config):
    """Reports iterations 1..TOTAL; stops early at config["stop"] (what ASHA does); the
    failing trial raises at iteration 2 until a marker file exists (a retry then runs)."""
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(config["root"]) / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"train:\n  lr: {config['train']['lr']}\n")
    marker = Path(config["root"]) / "failed_once"
    for i in range(1, TOTAL + 1):
        if config["fail"] and i == 2 and not marker.exists():
            marker.write_text("x")
            raise ValueError("boom at iteration 2")
        (run_dir / "best.pt").write_bytes(b"weights")
        with (run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"iteration": i}) + "\n")
        tune.report({"iteration": float(i), AVG: config["train"]["lr"] * i,
                     "map/0.5@x": 0.5, "loss/match": 1.0 / i, "lr": config["train"]["lr"],
                     "junk": 3.0, "map/flag": True, "map/text": "no"})
        if i >= config["stop"]:
            return


def params_for(config):
    return {"train.lr": config["train"]["lr"], "train.seed": 7, "data.tious": [0.1, 0.5]}


PARAM_SPACE_ROWS = [  # (lr, stop, fail)
    (0.1, TOTAL, False), (0.2, TOTAL, False), (0.3, 2, False), (0.4, TOTAL, True)]


def _tuner(tmp: Path, tracker: SweepTracker) -> tune.Tuner:
    callback = MlflowTuneCallback(tracker, params_for, TOTAL,
                                  run_dir_for=lambda trial: tmp / "runs" / trial.trial_id,
                                  strict=True)
    space = {"row": tune.grid_search(list(range(len(PARAM_SPACE_ROWS)))),
             "train": {"lr": tune.sample_from(lambda s: PARAM_SPACE_ROWS[s.config.row][0])},
             "stop": tune.sample_from(lambda s: PARAM_SPACE_ROWS[s.config.row][1]),
             "fail": tune.sample_from(lambda s: PARAM_SPACE_ROWS[s.config.row][2]),
             "root": str(tmp / "runs")}
    return tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(
        name="sweep", callbacks=[callback], storage_path=str(tmp / "ray"), verbose=0))


@pytest.fixture(scope="module")
def sweep(store, ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    tracker = SweepTracker(tmp / "exp", "sweep", store, base_params={"train.seed": 7})
    assert not tracker.resumed
    grid = _tuner(tmp, tracker).fit()
    by_lr = {r.config["train"]["lr"]: r for r in grid}
    return tmp, tracker, {lr: r.metrics["trial_id"] for lr, r in by_lr.items()}


def _children(client, tracker):
    runs = client.search_runs([tracker.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'")
    return {r.data.tags["trial_id"]: r for r in runs}


def _steps(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


# ---------------------------------------------------------------------------------------------
# names and URIs


@pytest.mark.parametrize("key, name", [
    ("map/avg_0.1-0.7", "map/avg_0.1-0.7"), ("map/0.5", "map/0.5"),
    ("map@0.5", "map_at_0.5"), ("loss/a:b", "loss/a_b"), ("loss//x/./y", "loss/x/y"),
    ("/map/../x", "map/__/x"), ("map/é%", "map/__"), ("", "_"),
])
def test_mlflow_name_is_legal_and_deterministic(key, name):
    assert mlflow_name(key) == name
    _validate_metric_name(mlflow_name(key))  # MLflow's own check raises on an illegal name
    long = mlflow_name("loss/" + "x" * 400)
    assert len(long) == 250 and long == mlflow_name("loss/" + "x" * 400)
    _validate_metric_name(long)


def test_tracking_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp"
    assert normalize_tracking_uri(None, exp) == f"sqlite:///{exp.as_posix()}/mlflow.db"
    assert normalize_tracking_uri("http://127.0.0.1:5000", exp) == "http://127.0.0.1:5000"
    assert normalize_tracking_uri("sqlite:///rel/m.db", exp) == \
        f"sqlite:///{tmp_path.as_posix()}/rel/m.db"
    assert normalize_tracking_uri("stores/m.sqlite", exp) == \
        f"sqlite:///{tmp_path.as_posix()}/stores/m.sqlite"
    assert normalize_tracking_uri("runs", exp) == f"sqlite:///{tmp_path.as_posix()}/runs/mlflow.db"
    (tmp_path / "mlruns" / ".trash").mkdir(parents=True)  # an old MLflow file store
    assert normalize_tracking_uri("mlruns", exp) == (tmp_path / "mlruns").as_uri()
    assert normalize_tracking_uri("file:./mlruns", exp) == (tmp_path / "mlruns").as_uri()
    with pytest.raises(UserError, match="not reachable"):
        prepare_store("http://127.0.0.1:9", "x", exp)  # port 9 (discard): nothing listens


# ---------------------------------------------------------------------------------------------
# the tracker without Ray


def test_log_result_whitelist_steps_and_non_finite(store, tmp_path):
    tracker = SweepTracker(tmp_path / "exp", "unit", store)
    run_id = tracker.trial_run("t1", {"train": {"lr": 0.1, "seed": 3}, "x.long": "y" * 7000})
    client = tracker.client
    run = client.get_run(run_id)
    assert run.data.params["train.lr"] == "0.1" and len(run.data.params["x.long"]) == 6000
    assert run.data.tags["seed"] == "3" and run.data.tags["mlflow.parentRunId"] == \
        tracker.parent_run_id
    logged = tracker.log_result("t1", {"iteration": 2.0, "map/a@b": 0.5, "loss/x": math.nan,
                                       "loss/y": math.inf, "lr": 1e-4, "other": 1.0,
                                       "map/s": "str", "map/b": False})
    assert set(logged) == {"map/a_at_b", "loss/x", "loss/y", "lr", "iteration"}
    assert math.isnan(_steps(client, run_id, "loss/x")[0][1])  # NaN kept as NaN
    assert _steps(client, run_id, "map/a_at_b") == [(2, 0.5)]
    assert tracker.log_result("t1", {"iteration": 2, "map/a@b": 0.9}) == {}  # replayed step
    assert tracker.log_result("t1", {"map/a@b": 0.9}) == {}  # no iteration: nothing
    assert _steps(client, run_id, "map/a_at_b") == [(2, 0.5)]
    with pytest.raises(ValueError, match="status"):
        tracker.end_trial("t1", "DONE")
    with pytest.raises(KeyError, match="trial_run first"):
        tracker.log_result("nope", {"iteration": 1})


def test_missing_parent_run_is_a_clear_error(store, tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / PARENT_RUN_FILE).write_text(json.dumps({"run_id": "0" * 32}))
    with pytest.raises(UserError, match="not in the tracking store.*delete"):
        SweepTracker(tmp_path / "exp", "unit", store)


# ---------------------------------------------------------------------------------------------
# a real Ray Tune run


def test_parent_children_params_metrics(sweep):
    tmp, tracker, trial_of = sweep
    client = tracker.client
    assert json.loads((tmp / "exp" / PARENT_RUN_FILE).read_text())["run_id"] == \
        tracker.parent_run_id
    all_runs = client.search_runs([tracker.experiment_id])
    assert len(all_runs) == 1 + len(PARAM_SPACE_ROWS)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.tags["seed"] == "7"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", parent.data.tags["git_commit"])
    assert parent.data.tags["version.mlflow"] == mlflow.__version__

    children = _children(client, tracker)
    assert set(children) == set(trial_of.values())
    for lr, trial_id in trial_of.items():
        run = children[trial_id]
        assert run.info.run_name.startswith("trial ") and run.data.tags["trial_id"] == trial_id
        assert run.data.params == {"train.lr": str(lr), "train.seed": "7",
                                   "data.tious": "[0.1, 0.5]"}
        assert run.data.tags["seed"] == "7" and "version.ray" in run.data.tags
        assert "junk" not in run.data.metrics and "map/flag" not in run.data.metrics

    full = children[trial_of[0.1]]
    assert full.info.status == "FINISHED" and full.data.tags["pruned"] == "false"
    assert "pruned_at_iteration" not in full.data.tags
    assert _steps(client, full.info.run_id, AVG) == [
        (i, pytest.approx(0.1 * i)) for i in range(1, TOTAL + 1)]
    assert [s for s, _ in _steps(client, full.info.run_id, "iteration")] == [1, 2, 3, 4]
    assert _steps(client, full.info.run_id, "map/0.5_at_x") == [(i, 0.5) for i in range(1, 5)]
    arts = {a.path for a in client.list_artifacts(full.info.run_id)}
    assert {"best.pt", "config.yaml", "metrics.jsonl"} <= arts

    pruned = children[trial_of[0.3]]
    assert pruned.info.status == "FINISHED"
    assert pruned.data.tags["pruned"] == "true"
    assert pruned.data.tags["pruned_at_iteration"] == "2"
    assert [s for s, _ in _steps(client, pruned.info.run_id, AVG)] == [1, 2]

    failed = children[trial_of[0.4]]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"].endswith("ValueError: boom at iteration 2")
    assert "\x1b" not in failed.data.tags["error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}


def test_resume_reattaches_without_duplicates(sweep):
    tmp, tracker, trial_of = sweep
    client = tracker.client
    before = {t: r.info.run_id for t, r in _children(client, tracker).items()}

    # Ray Tune restores the pickled callback (and tracker) from tuner.pkl; the failed
    # trial runs again (it passes this time) under the same child run
    tune.Tuner.restore(str(tmp / "ray" / "sweep"), trainable, resume_errored=True).fit()
    after = _children(client, tracker)
    assert {t: r.info.run_id for t, r in after.items()} == before
    retried = after[trial_of[0.4]]
    assert retried.info.status == "FINISHED" and "error" not in retried.data.tags
    assert [s for s, _ in _steps(client, retried.info.run_id, "iteration")] == [1, 2, 3, 4]
    assert len(client.search_runs([tracker.experiment_id])) == 1 + len(PARAM_SPACE_ROWS)

    again = SweepTracker(tmp / "exp", "sweep", tracker.tracking_uri)
    assert again.resumed and again.parent_run_id == tracker.parent_run_id
    tid = trial_of[0.1]
    assert again.trial_run(tid, params_for({"train": {"lr": 0.1}})) == before[tid]
    assert client.get_run(before[tid]).info.status == "RUNNING"
    again.trial_run(tid, {"train.lr": 0.5})  # a changed param is named, not an exception
    assert client.get_run(before[tid]).data.tags["param_conflicts"] == "train.lr"
    assert again.finish("FINISHED") == [tid]  # still running: killed
    assert client.get_run(before[tid]).info.status == "KILLED"
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"
    third = SweepTracker(tmp / "exp", "sweep", tracker.tracking_uri)
    assert third.parent_run_id == tracker.parent_run_id
    assert client.get_run(tracker.parent_run_id).info.status == "RUNNING"
    assert len(client.search_runs([tracker.experiment_id])) == 1 + len(PARAM_SPACE_ROWS)


def test_callback_hooks_without_ray(store, tmp_path):
    """The hooks on a stand-in trial: the reason of the last of several failures; an
    MLflow failure in a hook does not stop a sweep unless strict."""
    from types import SimpleNamespace

    tracker = SweepTracker(tmp_path / "exp", "hooks", store)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-01-01_00-00-00)\nold\n"
                     "Failure # 2 (occurred at 2026-01-01_00-01-00)\n"
                     "\x1b[36mray::ImplicitFunc.train()\x1b[39m\nKeyError: 'x'\n")
    trial = SimpleNamespace(trial_id="t9", config={"train": {"lr": 0.5}}, last_result={},
                            error_file=str(error))
    cb = MlflowTuneCallback(tracker, params_for, TOTAL, strict=True)
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, {"iteration": 3, AVG: 0.2})
    cb.on_trial_error(0, [], trial)
    run = tracker.client.get_run(tracker.child_run_id("t9"))
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "KeyError: 'x'"  # the reason, one line
    assert run.data.tags["last_iteration"] == "3" and run.data.tags["pruned"] == "false"

    lax = MlflowTuneCallback(tracker, lambda config: config["missing"], TOTAL)
    lax.on_trial_start(0, [], SimpleNamespace(trial_id="t10", config={}))  # logged, not raised
    with pytest.raises(KeyError):
        MlflowTuneCallback(tracker, lambda config: config["missing"], TOTAL,
                           strict=True).on_trial_start(0, [], SimpleNamespace(
                               trial_id="t10", config={}))
