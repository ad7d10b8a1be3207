"""`ray job submit` of the quickstart sweep against a cluster started with `ray start --head`
on 127.0.0.1, with token authentication; only the Ray this test started is stopped."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
from conftest import TINY

pytestmark = pytest.mark.slow  # minutes of Ray trials

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # unix sockets: keep it short
    port, dash = free_port(), free_port()
    # every port of its own: other Rays on this machine (other tests, a user's) keep theirs
    ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
        "object-manager-port")]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
                    f"--temp-dir={temp}", "--disable-usage-stats", *ports],
                   env=env, check=True, capture_output=True, timeout=120)
    address = f"http://127.0.0.1:{dash}"
    try:
        # the job agent comes up a little after `ray start` returns
        for _ in range(30):
            ready = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address,
                                    "--", "echo", "ready"], env=env, capture_output=True,
                                   text=True, timeout=120)
            if ready.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the Ray job server never accepted a job: {ready.stderr[-2000:]}")
        yield address, env
    finally:  # not `ray stop`, which would stop every Ray of this machine
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_mentioning(str(temp)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 15
            while processes_mentioning(str(temp)) and time.time() < deadline:
                time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (the Ray processes of one temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def test_ray_job_submit_quickstart(tmp_path, ray_head):
    address, env = ray_head
    storage = tmp_path / "sweeps"
    tiny = [a for o in TINY + ["train.iterations=4", "train.eval_interval=2",
                               f"text.cache_dir={tmp_path / 'cache'}"]
            for a in ("--set", o)]
    shrink = [a for o in ["trials.num_samples=3", "trials.max_concurrent=2",
                          "scheduler.grace_period=2", "scheduler.max_t=4",
                          "searcher.n_startup_trials=2"] for a in ("--space-set", o)]
    # without the token the cluster refuses the job
    bad = {**env, "RAY_AUTH_TOKEN": "wrong"}
    refused = subprocess.run([str(ROOT / "jobs" / "submit_sweep.sh")], cwd=ROOT, timeout=120,
                             env={**bad, "RAY_ADDRESS": address}, capture_output=True,
                             text=True)
    assert refused.returncode != 0
    out = subprocess.run(
        [str(ROOT / "jobs" / "submit_sweep.sh"), "search_spaces/quickstart.yaml", *tiny,
         *shrink], cwd=ROOT, timeout=600, capture_output=True, text=True,
        env={**env, "RAY_ADDRESS": address, "MLLM4WTAL_STORAGE": str(storage)})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "succeeded" in log and "mlflow ui --backend-store-uri" in log, log[-6000:]
    # the job wrote where it was told, not into its temporary working directory
    exp = storage / "quickstart"
    client = mlflow.MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4 and len(children) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (exp / "summary" / "best_config.yaml").is_file()
