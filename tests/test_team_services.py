"""The cluster set-up of the README with real team services on 127.0.0.1: a PostgreSQL
cluster (MLflow's backend store and the Optuna study), an S3-compatible object store (moto in
server mode: Ray's checkpoints and experiment state, MLflow's artifacts) and ``mlflow server``
proxying the artifacts (``jobs/cluster/services.py``). The sweep runs as the README says, in
an environment holding only what the README says to set (the object store's address and
keys), with an in-process private Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import TINY
from mllm4wtal.errors import UserError
from mllm4wtal.sweep import runner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs" / "cluster"))
from services import MlflowServer, Postgres, S3Server, free_port  # noqa: E402

QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
BIN = Path(sys.executable).parent
NAME = "teamsweep"
PREFIX = f"sweeps/{NAME}/"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """One PostgreSQL (databases mlflow and optuna), one moto server with the bucket, and
    ``mlflow server`` on both (artifacts proxied: clients need no S3 keys)."""
    logs = tmp_path_factory.mktemp("services")
    with Postgres(("mlflow", "optuna")) as pg, S3Server(logs) as s3:
        server_env = {**os.environ, **s3.env}  # the server writes the artifacts to S3
        ml = MlflowServer(pg.url_for("mlflow"), logs, env=server_env,
                          artifacts_destination=f"s3://{s3.bucket}/mlartifacts")
        try:
            ml.start(timeout=300)  # it migrates a new PostgreSQL schema first: slow on 2 cores
            yield pg, s3, ml
        finally:
            ml.stop()


def readme_env(s3: S3Server, home: Path) -> dict[str, str]:
    """What the README tells a user to set for the cluster set-up, and nothing more (HOME: a
    temp dir, where the driver keeps its local mirror)."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), **s3.env}


def sweep_cmd(pg: Postgres, s3: S3Server, ml: MlflowServer, cache: Path) -> list[str]:
    sets = [*TINY, f"text.cache_dir={cache}", "train.iterations=4", "train.eval_interval=2"]
    edits = [f"name={NAME}", "trials.num_samples=2", "trials.max_concurrent=2",
             "scheduler.grace_period=2", "scheduler.max_t=4",
             f"searcher.storage={pg.url_for('optuna')}"]
    return [str(BIN / "mllm4wtal"), "sweep", str(QUICKSTART),
            *[a for s in sets for a in ("--set", s)],
            *[a for e in edits for a in ("--space-set", e)],
            "--storage", f"s3://{s3.bucket}/sweeps", "--tracking-uri", ml.url]


@pytest.mark.cluster
@pytest.mark.slow  # a Ray start and two tiny trials, then a resume
def test_sweep_on_object_store_postgres_and_mlflow_server(services, tmp_path):
    pg, s3, ml = services
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run(sweep_cmd(pg, s3, ml, tmp_path / "cache"), cwd=work,
                         env=readme_env(s3, tmp_path / "home"), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # Ray's experiment state, the trial checkpoints and the driver's files are objects
    keys = s3.keys(PREFIX)
    names = {k[len(PREFIX):] for k in keys}
    assert {"tuner.pkl", "sweep.yaml", "sweep.json", "mlflow_parent_run.json"} <= names
    assert any(n.startswith("experiment_state-") for n in names)
    trials = {k[len(PREFIX):].split("/")[0] for k in keys if "/checkpoint_" in k
              and k.endswith("/best.pt")}
    assert len(trials) == 2, sorted(names)

    # the parent and child runs are in the server, a trial's artifact in the bucket
    client = mlflow.MlflowClient(tracking_uri=ml.url)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    child = children[0].info.run_id
    assert f"mlartifacts/{exp.experiment_id}/{child}/artifacts/best.pt" in s3.keys(
        "mlartifacts/")

    # the Optuna study is in PostgreSQL, every trial ended
    study = optuna.load_study(study_name=NAME, storage=pg.url_for("optuna"))
    states = [t.state for t in study.trials]
    assert len(states) == 2
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}

    # nothing local took their place: no sqlite store, no folder named after the URI
    local = [p for p in tmp_path.rglob("*") if p.name in ("optuna.db", "mlflow.db")]
    assert local == [] and not (work / "s3:").exists()

    # --resume from the URI alone, with the driver's local mirror gone (as on another
    # machine of the same user): the sweep is read back from the bucket, nothing is run or
    # logged twice
    shutil.rmtree(tmp_path / "home" / ".cache" / "mllm4wtal")
    again = subprocess.run([str(BIN / "mllm4wtal"), "sweep", "--resume",
                            f"s3://{s3.bucket}/sweeps/{NAME}"], cwd=work,
                           env=readme_env(s3, tmp_path / "home"), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 trials: 0 pruned by ASHA, 0 failed" in again.stdout
    assert len(client.search_runs([exp.experiment_id], max_results=100)) == 3
    assert len(optuna.load_study(study_name=NAME, storage=pg.url_for("optuna")).trials) == 2


def test_remote_storage_needs_remote_stores():
    """With a URI storage, the sqlite defaults (files in the storage folder) are refused
    before anything starts, each naming the key to set."""
    with pytest.raises(UserError, match=r"mlflow\.tracking_uri: null needs a local "
                                        r"storage\.path .*--tracking-uri"):
        runner.load(QUICKSTART, [], storage="s3://lab/sweeps")
    with pytest.raises(UserError, match=r"searcher\.storage: the Optuna study cannot live in "
                                        r"remote storage s3://lab/sweeps"):
        runner.load(QUICKSTART, [], storage="s3://lab/sweeps",
                    tracking_uri="http://127.0.0.1:5000")


def test_unreachable_object_store_is_one_line(tmp_path, monkeypatch):
    """An object store that does not answer is refused at the claim, before anything is
    written, naming the storage and the variables to check."""
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "k",
                 "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    space = runner.load(QUICKSTART, [], storage="s3://lab/sweeps",
                        tracking_uri="http://127.0.0.1:5000",
                        edits=["searcher.storage=postgresql+psycopg2://u@127.0.0.1/optuna"])
    with pytest.raises(UserError, match=r"^storage s3://lab/sweeps/quickstart: cannot read it "
                                        r"\(.*\); check .*AWS_ENDPOINT_URL"):
        runner.claim(space, [])
    assert list(tmp_path.rglob("*")) == []
