"""An MLflow tracking server outage during a sweep: a real ``mlflow server`` (sqlite backend,
``jobs/cluster/services.py``) stopped and started again while the driver writes to it.

The trials go on while it is down, the driver warns once and queues its writes in order,
writes them when the server is back, leaves them in the experiment folder when the sweep
ends first (``--resume`` writes them), and a server unreachable at the start is refused
before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import TINY
from mlflow.exceptions import MlflowException
from mllm4wtal.config import parse_override
from mllm4wtal.sweep.mlflow_queue import QUEUE_FILE, fail_fast, is_outage
from mllm4wtal.sweep.tracker import SweepTracker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs" / "cluster"))
import services  # noqa: E402

WARNING = "unreachable: queueing its writes"


def start(srv: services.MlflowServer) -> None:
    """Start ``srv`` (about 7 s on an idle machine); one that does not answer is stopped."""
    try:
        srv.start(timeout=300)
    except services.ServiceError:
        srv.stop()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ``mlflow server`` for the module; a test that stops it starts it again."""
    root = tmp_path_factory.mktemp("mlflow")
    srv = services.MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root)
    start(srv)
    yield srv
    srv.stop()


@pytest.fixture
def up(server):
    if server.proc is None:
        start(server)
    yield server
    if server.proc is None:
        start(server)


def history(client: mlflow.MlflowClient, run_id: str, key: str = "iteration") -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key),
                                   key=lambda m: m.step)]


def children(client: mlflow.MlflowClient, experiment: str) -> dict[str, mlflow.entities.Run]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}


def test_outage_is_queued_in_order_and_written_when_back(up, tmp_path, capsys):
    tracker = SweepTracker(tmp_path / "exp", "outage-unit", up.url)
    queue = tracker._queue
    queue.max_in_memory = 4  # the bound: more waits in the experiment folder
    tracker.trial_run("t1", {"train.lr": 0.1})
    tracker.log_result("t1", {"iteration": 1, "loss/match": 1.0})
    up.stop()
    took = []

    def timed(fn, *args, **kwargs):
        start = time.monotonic()
        value = fn(*args, **kwargs)
        took.append(time.monotonic() - start)
        return value

    for it in range(2, 7):
        timed(tracker.log_result, "t1", {"iteration": it, "loss/match": 1.0 / it})
    assert tracker.trial_run("t2", {"train.lr": 0.2}) is None  # created once it is back
    for it in range(1, 4):
        timed(tracker.log_result, "t2", {"iteration": it, "loss/match": 2.0 / it})
    timed(tracker.end_trial, "t1", "FINISHED", rung=6)
    timed(tracker.log_trial_file, "t2", Path(__file__))  # kept, in case the file goes
    assert max(took) < 2, took  # no MLflow retries (minutes): the driver went on at once
    assert (tmp_path / "exp" / QUEUE_FILE).is_file()  # the bound spilled the oldest writes
    assert sorted(tracker.running_trials()) == ["t2"]  # known without the server
    assert tracker.last_value("t1", "loss/match") is None
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1 and f"MLflow server {up.url} unreachable" in err

    start(up)
    time.sleep(max(0.0, 5.5 - (time.monotonic() - queue._last_try)))  # the retry is due
    tracker.end_trial("t2", "FINISHED", rung=3)
    tracker.finish("FINISHED")
    assert tracker.spilled is None and not (tmp_path / "exp" / QUEUE_FILE).exists()
    assert "answers again: wrote the" in capsys.readouterr().err
    client = mlflow.MlflowClient(up.url)
    runs = children(client, "outage-unit")
    assert history(client, runs["t1"].info.run_id) == list(range(1, 7))
    assert history(client, runs["t2"].info.run_id) == [1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert client.get_run(tracker.parent_run_id).info.status == "FINISHED"
    assert runs["t2"].data.params["train.lr"] == "0.2"
    assert [a.path for a in client.list_artifacts(runs["t2"].info.run_id)] == [
        Path(__file__).name]

    # a real MLflow error (here: writing to a deleted run) still surfaces, nothing queued
    client.delete_run(tracker.parent_run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state") as e:
        tracker.set_parent_tags({"after": "delete"})
    assert not is_outage(e.value) and not queue.waiting


def test_fail_fast_is_scoped_to_the_call(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with fail_fast():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


# -- the CLI, as a user runs it --------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def space_file(tmp_path: Path, name: str, iterations: int, samples: int, every: int = 1
               ) -> Path:
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"train.iterations": iterations, "train.eval_interval": every,
                      "text.cache_dir": str(tmp_path / "cache")})
    doc = {"name": name, "base": "synthetic", "overrides": overrides,
           "metric": "loss/match", "mode": "min",
           "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
           "searcher": {"sampler": "random", "seed": 0}, "scheduler": {"type": "none"},
           "trials": {"num_samples": samples, "max_concurrent": 2, "max_failures": 0},
           "resources": {"cpu": 1, "gpu": 0}, "mlflow": {"experiment": name},
           "storage": {"path": str(tmp_path / "sweeps")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def cli_env(tmp_path):
    """This session's environment, with a HOME and a Ray temp folder of the test's own."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="r12", dir="/tmp")  # short: Ray's unix sockets
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    yield {**env, "HOME": str(home), "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def sweep(args: list[str], tmp_path: Path, env: dict[str, str], log: str
          ) -> subprocess.Popen:
    with open(tmp_path / f"{log}.out", "w") as out, open(tmp_path / f"{log}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "mllm4wtal.cli", "sweep", *args],
                                cwd=tmp_path, env=env, stdout=out, stderr=err,
                                start_new_session=True)


def wait_first_result(proc: subprocess.Popen, client: mlflow.MlflowClient, name: str,
                      tmp_path: Path) -> None:
    """Until the server holds a trial's first result (Ray's own result files lag behind:
    they are buffered)."""
    end = time.monotonic() + 300
    while True:
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], "metrics.iteration >= 1") if exp else []
        if runs:
            return
        assert proc.poll() is None, (tmp_path / "run.err").read_text()[-3000:]
        assert time.monotonic() < end, "no trial reported in time"
        time.sleep(0.3)


def finished(proc: subprocess.Popen, tmp_path: Path, log: str) -> tuple[str, str]:
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return (tmp_path / f"{log}.out").read_text(), (tmp_path / f"{log}.err").read_text()


def assert_complete(client: mlflow.MlflowClient, name: str, samples: int, steps: range
                    ) -> dict[str, mlflow.entities.Run]:
    runs = children(client, name)
    assert len(runs) == samples
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert history(client, run.info.run_id) == list(steps)  # every report, no gap
    parent = client.get_run(next(iter(runs.values())).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    return runs


@pytest.mark.cluster
@pytest.mark.slow
def test_server_stopped_mid_sweep_trials_go_on_and_everything_is_written(up, tmp_path,
                                                                           cli_env):
    # two waves of two trials outlast a server restart (about 7 s on an idle machine); the
    # second wave's runs may be created while it is down
    iterations, every = 300, 12
    path = space_file(tmp_path, "midsweep", iterations, samples=4, every=every)
    client = mlflow.MlflowClient(up.url)
    proc = sweep([str(path), "--tracking-uri", up.url], tmp_path, cli_env, "run")
    try:
        wait_first_result(proc, client, "midsweep", tmp_path)
        up.stop()
        down = time.time()
        start(up)
        back = time.time()
    finally:
        out, err = finished(proc, tmp_path, "run")
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert len([line for line in err.splitlines() if "warning" in line.lower()
                and "MLflow" in line]) == 1, err[-3000:]
    assert err.count(WARNING) == 1 and "answers again" in err, err[-3000:]
    runs = assert_complete(client, "midsweep", 4, range(every, iterations + 1, every))
    # the driver handled results while the server was down (it did not sit in MLflow's
    # retries): a metric's timestamp is when the driver got the result
    stamps = [m.timestamp / 1000 for r in runs.values()
              for m in client.get_metric_history(r.info.run_id, "iteration")]
    assert sum(down < t < back for t in stamps) >= 2, (down, back, sorted(stamps))
    exp = tmp_path / "sweeps" / "midsweep"
    assert (exp / "summary").is_dir() and not (exp / QUEUE_FILE).exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_server_down_at_the_end_keeps_the_queue_and_resume_writes_it(up, tmp_path, cli_env):
    iterations = 6
    path = space_file(tmp_path, "downatend", iterations, samples=2)
    exp = tmp_path / "sweeps" / "downatend"
    proc = sweep([str(path), "--tracking-uri", up.url], tmp_path, cli_env, "run")
    try:
        wait_first_result(proc, mlflow.MlflowClient(up.url), "downatend", tmp_path)
        up.stop()
    finally:
        out, err = finished(proc, tmp_path, "run")
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert err.count(WARNING) == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"MLflow server {up.url} still unreachable") and \
        f"--resume {exp}" in last, out[-2000:]
    assert (exp / QUEUE_FILE).is_file() and not (exp / "summary").exists()
    ops = [json.loads(line) for line in (exp / QUEUE_FILE).read_text().splitlines()]
    assert ops[-1]["op"] == "finish"

    start(up)
    proc = sweep(["--resume", str(exp)], tmp_path, cli_env, "resume")
    out, err = finished(proc, tmp_path, "resume")
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert not (exp / QUEUE_FILE).exists() and (exp / "summary").is_dir()
    assert_complete(mlflow.MlflowClient(up.url), "downatend", 2, range(1, iterations + 1))


def test_unreachable_server_at_start_is_refused_before_anything_is_written(tmp_path, cli_env):
    path = space_file(tmp_path, "nowhere", 2, samples=1)
    url = f"http://127.0.0.1:{closed_port()}"
    out = subprocess.run([sys.executable, "-m", "mllm4wtal.cli", "sweep", str(path),
                          "--tracking-uri", url], cwd=tmp_path, env=cli_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mllm4wtal sweep: error: ")
    assert f"MLflow tracking server '{url}' is not reachable" in lines[0]
    assert not (tmp_path / "sweeps").exists()
