"""Requests no node can hold, and interruptions. On a real `ray start` cluster (2 CPUs, no
GPU; its own temp dir, ports and HOME) `--check` and the start refuse `resources.cpu=64` and
`resources.gpu=1` with the same line, before any folder is made; on this machine the limit is
what Ray itself sees. A sweep stopped with SIGINT (Ctrl-C) ends with exit 130, says it was
interrupted and how to resume, and leaves nothing pruned, FINISHED or RUNNING behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.preflight import local_resources
from mllm4wtal.sweep.search import load_study
from test_faults import space_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs" / "cluster"))
from local_cluster import processes_mentioning  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray cluster, and a sweep

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
CPUS = int(local_resources()[0])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: their own HOME (so the resume key and ~/.ray are theirs), no
    cluster address unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLLM4WTAL_"))}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "PYTHONUNBUFFERED": "1", **extra}


def sweep(*args: str, cwd: Path, env: dict[str, str], timeout: int = 300
          ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mllm4wtal"), "sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    """A `ray start` head on 127.0.0.1 with 2 CPUs and no GPU; yields its address and a
    user environment. Only its own processes are stopped (by its temp dir)."""
    temp = Path(tempfile.mkdtemp(prefix="rinf", dir="/tmp"))  # unix sockets: keep it short
    home = temp / "home"
    home.mkdir()
    port, *ports = free_ports(15)
    flags = [f"--{flag}={p}" for flag, p in zip((
        "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
        "node-manager-port", "object-manager-port"), ports, strict=False)]
    workers = ",".join(str(p) for p in ports[8:])
    env = user_env(home)
    try:
        head = subprocess.run([str(BIN / "ray"), "start", "--head",
                               "--node-ip-address=127.0.0.1", f"--port={port}",
                               "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
                               f"--temp-dir={temp}", "--disable-usage-stats",
                               f"--worker-port-list={workers}", *flags],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:  # not `ray stop`, which would stop every Ray of this machine
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_mentioning(str(temp)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + 15
            while processes_mentioning(str(temp)) and time.time() < deadline:
                time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.parametrize("ask, line", [
    (["--space-set", "resources.cpu=64"],
     "resources.cpu = 64 per trial, but the largest node of the Ray cluster at {address} has "
     "2 CPUs; lower it to 2 or less (in the file, or --space-set resources.cpu=2) or add "
     "larger nodes to the cluster"),
    (["--space-set", "resources.gpu=1", "--set", "train.device=auto"],
     "resources.gpu = 1 per trial, but the largest node of the Ray cluster at {address} has "
     "no GPU; set it to 0 (in the file, or --space-set resources.gpu=0; train.device auto or "
     "cpu) or add GPU nodes to the cluster"),
], ids=["cpu", "gpu"])
def test_a_trial_no_node_can_hold_is_refused_by_check_and_start(tmp_path, cluster, ask, line):
    address, env = cluster
    env = {**env, "RAY_ADDRESS": address}
    path = space_file(tmp_path, "big", 4)
    exp = tmp_path / "sweeps" / "big"
    args = [str(path), "--storage", str(tmp_path / "sweeps"), *ask]
    expected = f"mllm4wtal sweep: error: {path}: " + line.format(address=address)
    check = sweep(*args, "--check", cwd=tmp_path, env=env)
    assert check.returncode == 2, check.stdout[-2000:] + check.stderr[-2000:]
    assert check.stderr.strip().splitlines()[-1] == expected
    start = sweep(*args, cwd=tmp_path, env=env)  # the real start: the same line, nothing made
    assert start.returncode == 2
    assert start.stderr.strip().splitlines()[-1] == expected
    assert not exp.exists() and not (tmp_path / "sweeps").exists()


def test_this_machine_is_what_its_private_ray_sees(tmp_path):
    """Ray's own count decides (here through its override variable, as a container limit
    would through cgroups): 2 CPUs per trial on a node Ray sees with 1 are refused."""
    path = space_file(tmp_path, "small", 4)
    env = user_env(tmp_path / "home", RAY_OVERRIDE_RESOURCES='{"CPU": 1}')
    check = sweep(str(path), "--storage", str(tmp_path / "sweeps"), "--space-set",
                  "resources.cpu=2", "--check", cwd=tmp_path, env=env)
    assert check.returncode == 2
    assert check.stderr.strip().splitlines()[-1].startswith(
        f"mllm4wtal sweep: error: {path}: resources.cpu = 2 per trial, but this machine has "
        "1 CPU; lower it to 1 or less")


def interrupted_sweep(tmp_path: Path, name: str, env: dict[str, str]
                      ) -> tuple[runner.SearchSpaceFile, subprocess.CompletedProcess]:
    """A sweep of two trials that each take every CPU Ray sees (one runs, one waits),
    sent SIGINT once the first has reported; returns its space and the finished process."""
    path = space_file(tmp_path, name, 8, trials={"num_samples": 2, "max_concurrent": 2,
                                                 "max_failures": 0},
                      resources={"cpu": CPUS, "gpu": 0})
    storage = tmp_path / "sweeps"
    space = runner.load(path, [], storage=str(storage))
    exp = Path(space.experiment_dir)
    proc = subprocess.Popen([str(BIN / "mllm4wtal"), "sweep", str(path), "--storage",
                             str(storage)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any(p.stat().st_size for p in exp.glob("run_trial_*/result.json")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no trial reported in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return space, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_an_interrupted_sweep_is_never_reported_pruned_or_finished(tmp_path):
    space, done = interrupted_sweep(tmp_path, "stopme", user_env(tmp_path / "home"))
    exp = Path(space.experiment_dir)
    assert done.returncode == 130, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"sweep interrupted; continue it with: mllm4wtal sweep --resume {exp}" in \
        done.stdout.splitlines()
    assert "pruned by ASHA" not in done.stdout and not (exp / "summary").exists()
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(space.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert len(children) == 1  # the trial that ran; the waiting one never started
    assert children[0].info.status == "KILLED"
    assert children[0].data.tags.get("outcome") == "killed"
    study = load_study(space)
    states = [t.state for t in study.trials]
    assert len(states) == 2  # both trials were asked of Optuna ...
    assert set(states) == {optuna.trial.TrialState.FAIL}  # ... none RUNNING, none PRUNED
    assert study.user_attrs["stopped_by"].startswith("interrupted;")
