"""Sweeps on a real multi-node Ray cluster on this machine (``jobs/cluster/local_cluster.py``:
a head and two worker nodes, each its own ``ray start``, on loopback, with token auth, each
worker declaring 2 fake GPUs): fractional-GPU packing across nodes, a worker node killed in
the middle of a trial, the sweep's driver killed and resumed. The sweeps run as a user runs
them: ``mllm4wtal sweep`` with ``RAY_ADDRESS`` set to the cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import TINY
from mllm4wtal.config import parse_override
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.mlflow_store import prepare_store
from mllm4wtal.sweep.tracker import SweepTracker
from mllm4wtal.sweep.tune_callback import MlflowTuneCallback
from sweep_checks import assert_one_record_per_trial, finished_children, sweep_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs" / "cluster"))
from local_cluster import LocalCluster, node_ip  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(workers=2, cpus_per_node=4, gpus_per_worker=2, dashboard=False) as c:
        yield c


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    """One storage for the module's sweeps: one MLflow store, created once."""
    return tmp_path_factory.mktemp("multinode") / "sweeps"


def space_file(folder: Path, name: str, iterations: int, eval_interval: int = 2) -> Path:
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"train.iterations": iterations, "train.eval_interval": eval_interval,
                      "train.device": "auto", "text.cache_dir": str(folder / "cache")})
    doc = {"name": name, "base": "synthetic", "overrides": overrides,
           "metric": "loss/match", "mode": "min",
           "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
           "searcher": {"sampler": "random", "seed": 0}, "scheduler": {"type": "none"},
           "trials": {"num_samples": 1, "max_concurrent": 1, "max_failures": 0},
           "resources": {"cpu": 1, "gpu": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sweep_args(path: Path, storage: Path, edits: list[str]) -> list[str]:
    return [*sweep_cli(), "sweep", str(path), "--storage", str(storage),
            *(a for e in edits for a in ("--space-set", e))]


def client_env(cluster: LocalCluster) -> dict[str, str]:
    return {**cluster.env, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}


def start_driver(cmd: list[str], cluster: LocalCluster, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=log.parent, env=client_env(cluster),
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    return text


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a driver this test started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float
               ) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the driver ended before {what}:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.2)


def results(trial_dir: Path) -> list[dict]:
    """The results Ray recorded for a trial (its ``result.json``, one per report)."""
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def reported(exp: Path) -> list[Path]:
    """The trial folders of ``exp`` whose trials have reported."""
    return [p.parent for p in exp.glob("*/result.json") if p.stat().st_size > 0]


def test_a_trials_placement_becomes_the_tags_of_its_run(tmp_path):
    """The placement a trial reports (node id and IP, GPU ids, device) is tagged on its run,
    and tagged again when a retry reports from another node."""
    uri, _ = prepare_store(None, "placement", tmp_path)
    tracker = SweepTracker(tmp_path / "exp", "placement", uri)
    cb = MlflowTuneCallback(tracker, dict, 4, strict=True)
    trial = SimpleNamespace(trial_id="t1", config={}, experiment_tag="1_", last_result={})
    cb.on_trial_start(0, [], trial)
    first = {"node_id": "ab12", "node_ip": "127.0.0.3", "gpu_ids": "1", "device": "cpu"}
    moved = {**first, "node_id": "cd34", "node_ip": "127.0.0.4", "gpu_ids": "0"}
    tags = []
    for result in ({"iteration": 2, "placement": first}, {"iteration": 4},
                   {"iteration": 4, "placement": moved}):
        cb.on_trial_result(0, [], trial, result)
        run = tracker.client.get_run(tracker.child_run_id("t1"))
        tags.append({k: run.data.tags.get(k) for k in ("ray.node_id", "ray.node_ip",
                                                       "ray.gpu_ids", "device")})
    assert tags[0] == tags[1] == {"ray.node_id": "ab12", "ray.node_ip": "127.0.0.3",
                                  "ray.gpu_ids": "1", "device": "cpu"}
    assert tags[2] == {"ray.node_id": "cd34", "ray.node_ip": "127.0.0.4",
                       "ray.gpu_ids": "0", "device": "cpu"}


@pytest.mark.cluster
@pytest.mark.slow  # a cluster of three nodes; 16 trials
def test_fractional_gpus_pack_16_trials_across_both_nodes(cluster, storage, tmp_path):
    """16 trials at gpu 0.25 on 2 x 2 declared GPUs all run at once, 8 per node, each on a
    GPU id Ray gave it, on the CPU (no CUDA here), and their runs say where."""
    edits = ["trials.num_samples=16", "trials.max_concurrent=16", "resources.cpu=0.5",
             "resources.gpu=0.25"]
    # long enough that the first trials still run when the 16th starts
    path = space_file(tmp_path, "packing", iterations=60, eval_interval=30)
    started = time.time()
    finish(start_driver(sweep_args(path, storage, edits), cluster, tmp_path / "driver.log"),
           tmp_path / "driver.log", timeout=900)
    wall = time.time() - started
    space = runner.load(path, [], str(storage), None, edits)
    runs = assert_one_record_per_trial(space, 16)

    tags = [r.data.tags for r in runs.values()]
    workers = {node_ip(i) for i in range(2)}
    assert {t["device"] for t in tags} == {"cpu"}  # CUDA absent: the fallback, said so
    per_node = Counter(t["ray.node_ip"] for t in tags)
    assert set(per_node) == workers and set(per_node.values()) == {8}, per_node
    assert len({t["ray.node_id"] for t in tags}) == 2
    per_gpu = Counter((t["ray.node_ip"], t["ray.gpu_ids"]) for t in tags)
    assert set(per_gpu.values()) == {4} and len(per_gpu) == 4, per_gpu  # 4 x 0.25 per GPU
    # every trial's run was RUNNING at one moment: 16 at a time
    spans = [(r.info.start_time, r.info.end_time) for r in runs.values()]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    print(f"packing: 16 trials at once, {dict(per_node)} per node, {wall:.0f} s")


@pytest.mark.cluster
@pytest.mark.slow
def test_killed_driver_resumes_on_the_cluster(cluster, storage, tmp_path):
    """SIGKILL the sweep's driver once two trials have finished; ``--resume`` against the
    same cluster finishes the sweep: one MLflow run and one Optuna trial per trial, nothing
    RUNNING, the finished trials not rerun."""
    edits = ["trials.num_samples=6", "trials.max_concurrent=4"]
    path = space_file(tmp_path, "driverkill", iterations=6)
    space = runner.load(path, [], str(storage), None, edits)
    log = tmp_path / "driver.log"
    started = time.time()
    proc = start_driver(sweep_args(path, storage, edits), cluster, log)
    try:
        wait_until(lambda: finished_children(space.mlflow.tracking_uri,
                                           space.mlflow.experiment) >= 2, proc, log,
                   "two finished trials", 600)
    finally:
        kill_group(proc)
    exp = Path(space.experiment_dir)
    before = {p.parent.name: len(results(p.parent)) for p in exp.glob("*/result.json")}
    resume = [*sweep_cli(), "sweep", "--resume", str(exp)]
    out = finish(start_driver(resume, cluster, tmp_path / "resume.log"),
                 tmp_path / "resume.log", timeout=900)
    assert "6 trials: 0 pruned by ASHA, 0 failed" in out, out[-3000:]
    runs = assert_one_record_per_trial(space, 6)
    finished = {t for t, r in runs.items() if r.data.tags.get("outcome") == "finished"}
    for trial_dir, count in before.items():  # a trial that had finished was not trained again
        if count == 3:  # its three reports: 2, 4, 6
            rows = results(exp / trial_dir)
            # killed after its last report but before Ray saved its end, Ray resumes it from
            # its last checkpoint (iteration 6), which reports that evaluation once more
            assert len(rows) <= 4 and all(r["iteration"] == 6 for r in rows[3:]), rows
    assert len(finished) == 6
    print(f"driver kill + resume: {time.time() - started:.0f} s")


@pytest.mark.cluster
# last: it leaves the cluster with one worker node
@pytest.mark.slow
def test_killed_worker_node_resumes_the_trial_on_the_other(cluster, storage, tmp_path):
    """SIGKILL the raylet (and the processes) of the node a trial runs on, after its first
    checkpoint: Ray Tune retries the trial (``max_failures``) on the other node from that
    checkpoint, and it finishes; one MLflow run, one Optuna trial."""
    edits = ["trials.max_failures=2"]
    path = space_file(tmp_path, "nodekill", iterations=12)
    space = runner.load(path, [], str(storage), None, edits)
    exp = Path(space.experiment_dir)
    log = tmp_path / "driver.log"
    started = time.time()
    proc = start_driver(sweep_args(path, storage, edits), cluster, log)
    try:
        # a result in result.json: its checkpoint is stored (the trial stores it first)
        wait_until(lambda: reported(exp), proc, log, "report", 600)
        (trial_dir,) = reported(exp)
        first = results(trial_dir)
        node = first[-1]["placement"]["node_ip"]
        cluster.kill_worker([node_ip(i) for i in range(2)].index(node))
        killed_at = first[-1]["iteration"]
        finish(proc, log, timeout=600)
    finally:
        kill_group(proc)
    runs = assert_one_record_per_trial(space, 1)
    after = [r for r in results(trial_dir) if r["placement"]["node_ip"] != node]
    assert after, "the trial never ran on the other node"
    resumed_from = after[0]["iteration"] - 2  # the checkpoint it restored: one report back
    assert resumed_from >= killed_at > 0  # not from scratch
    assert after[-1]["iteration"] == 12
    assert after[0]["iterations_since_restore"] == 1  # a restore, not the same process
    (run,) = runs.values()
    assert run.data.tags["ray.node_ip"] == after[0]["placement"]["node_ip"]
    print(f"node kill: resumed from iteration {resumed_from} on "
          f"{after[0]['placement']['node_ip']}, {time.time() - started:.0f} s")
