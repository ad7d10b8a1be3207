"""Faults a sweep meets: errors that cross Ray keep their message, and a full disk ends a
sweep with one line and FAILED records, then ``--resume`` finishes it (a real tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import json
import os
import pickle
import pkgutil
import shutil
import sqlite3
import subprocess
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mllm4wtal
import optuna
import pytest
import yaml
from conftest import TINY
from mllm4wtal.config import parse_override
from mllm4wtal.errors import DivergenceError, UserError
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.faults import SpaceReserve, storage_fault, traceback_reason
from mllm4wtal.sweep.search import load_study
from sweep_checks import child_runs, statuses, sweep_cli

#: sample arguments, by annotation, for errors whose ``__init__`` is not the message alone
SAMPLES: dict[object, object] = {int: 2, float: float("inf"), str: "focal"}


def project_errors() -> list[type[BaseException]]:
    """Every subclass of the project's two error roots (and the roots), found by importing
    every module of the package: a new class is covered without editing this test."""
    for info in pkgutil.walk_packages(mllm4wtal.__path__, "mllm4wtal."):
        if not info.name.endswith("__main__"):  # runs the CLI
            importlib.import_module(info.name)
    found: list[type[BaseException]] = []
    todo: list[type[BaseException]] = [UserError, DivergenceError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("mllm4wtal") and cls not in found:
            found.append(cls)
            todo += cls.__subclasses__()
    return found


def sample(cls: type[BaseException]) -> BaseException:
    defined_in = next(k for k in cls.__mro__ if "__init__" in vars(k))
    if defined_in.__module__ == "builtins":  # the message alone
        return cls("data.root: '/x' does not exist; pass the folder of the features")
    hints = typing.get_type_hints(cls.__init__)
    args = []
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        if hints.get(name) not in SAMPLES:
            pytest.fail(f"{cls.__qualname__}.__init__({name}: {hints.get(name)}): add a "
                        "sample argument of that type to SAMPLES")
        args.append(SAMPLES[hints[name]])
    return cls(*args)


def test_every_project_error_pickles_with_its_message():
    classes = project_errors()
    assert {UserError, DivergenceError} < set(classes) and len(classes) > 5
    for cls in classes:
        error = sample(cls)
        error.args = (error.args[0] + "; the last good checkpoint is run/last.pt",)  # as the
        copy = pickle.loads(pickle.dumps(error))  # training loop extends a divergence
        assert type(copy) is cls, cls
        assert str(copy) == str(error) and copy.args == error.args, cls
        assert copy.__dict__ == error.__dict__, cls
    div = pickle.loads(pickle.dumps(DivergenceError(3, "focal", float("nan"))))
    assert (div.iteration, div.term) == (3, "focal") and str(div.value) == "nan"


def test_a_traceback_gives_its_reason_in_one_line():
    ray_text = ("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=1.2.3.4)\n"
                '  File "/x/loop.py", line 3, in train\n    raise DivergenceError(...)\n'
                "mllm4wtal.errors.DivergenceError: training diverged at iteration 0: loss "
                "term 'focal' = inf; lower train.lr\n")
    assert traceback_reason(ray_text) == ("DivergenceError: training diverged at iteration "
                                          "0: loss term 'focal' = inf; lower train.lr")
    assert traceback_reason("Traceback ...\nKeyError: 'x'\n") == "KeyError: 'x'"


def test_storage_faults_are_found_behind_library_errors(tmp_path):
    try:  # what Optuna and MLflow raise over sqlite: the fault is in the chain
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.Error as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised") from e
    except optuna.exceptions.StorageInternalError as e:
        path, os_err = storage_fault(e, {"optuna": tmp_path / "optuna.db"})
    assert path == tmp_path / "optuna.db" and os_err.errno == errno.ENOSPC
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.pt"))
    try:
        raise RuntimeError("Ray's wrapper") from full
    except RuntimeError as e:
        assert storage_fault(e) == (tmp_path / "x.pt", full)
    assert storage_fault(OSError(errno.ENOENT, "missing")) is None  # a bad input, no fault


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own (the tests run as root)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its filesystem is full (it may be already)."""
    path = folder / "ballast"
    try:
        fh = open(path, "wb")
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        return path
    with fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\1" * 65536)
                fh.flush()
    return path


def test_a_disk_too_full_for_the_reserve_is_refused_at_the_door(tmp_path):
    with tmpfs(tmp_path / "fs", "1m") as fs:
        fill(fs)
        with pytest.raises(UserError, match=r"^cannot write .*fs/exp/\.space_reserve: no space "
                                             r"left on the device \(0 B free of 1\.0 MiB\); "
                                             r"free some space there, then resume"):
            SpaceReserve(fs / "exp", "resume").hold()
        assert not (fs / "exp" / ".space_reserve").exists()


def space_file(tmp_path: Path, name: str, iterations: int, **changes: object) -> Path:
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"train.iterations": iterations, "train.eval_interval": 2,
                      "text.cache_dir": str(tmp_path / "cache")})
    doc = {"name": name, "base": "synthetic", "overrides": overrides,
           "metric": "loss/match", "mode": "min",
           "space": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}},
           "searcher": {"sampler": "random", "seed": 0}, "scheduler": {"type": "none"},
           "trials": {"num_samples": 3, "max_concurrent": 1, "max_failures": 0},
           "resources": {"cpu": 1, "gpu": 0}, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow
def test_disk_full_fails_the_sweep_in_one_line_and_resume_finishes_it(tmp_path):
    """``--storage`` on a 30 MB filesystem that fills up after the first report: one line
    naming the file and the free space, every record FAILED (MLflow parent and children,
    Optuna), nothing RUNNING; with space back, ``--resume`` finishes the sweep."""
    # two trials of 6 iterations, one at a time: the disk fills while the first one runs
    path = space_file(tmp_path, "full", 6, trials={"num_samples": 2, "max_concurrent": 1,
                                                   "max_failures": 0})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tmpfs(tmp_path / "fs", "30m") as fs:
        space = runner.load(path, [], storage=str(fs))
        exp = Path(space.experiment_dir)
        proc = subprocess.Popen([*sweep_cli(), "sweep", str(path), "--storage", str(fs)],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 180
            while not list(exp.glob("run_trial_*/checkpoint_*")):
                assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
                assert time.time() < deadline, "no trial reported in time"
                time.sleep(0.05)
            ballast = fill(fs)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"mllm4wtal sweep: error: cannot write {fs}/"), last
        assert "no space left on the device (0 B free of 30.0 MiB); free some space there, " \
               f"then continue the sweep with `mllm4wtal sweep --resume {exp}`" in last
        assert "StorageInternalError" not in err

        parent, kids, errors = statuses(space.mlflow.tracking_uri, space.mlflow.experiment)
        assert parent == "FAILED " + last.removeprefix("mllm4wtal sweep: error: ")
        assert kids and "RUNNING" not in kids.values()
        assert "FAILED" in kids.values()
        for t, s in kids.items():
            if s == "FAILED":
                assert "no space left on the device" in errors[t] and "\n" not in errors[t]
        study = load_study(space)
        states = [t.state for t in study.trials]
        assert optuna.trial.TrialState.RUNNING not in states
        assert optuna.trial.TrialState.FAIL in states
        assert "no space left" in study.user_attrs["stopped_by"]

        ballast.unlink(missing_ok=True)  # space is back
        if shutil.disk_usage(fs).free < 8 << 20:  # something else filled it: say what
            listing = subprocess.run(["du", "-ak", str(fs)], capture_output=True, text=True)
            pytest.fail("the disk is still full without the ballast:\n" + listing.stdout[-3000:])
        if not ray_state_readable(exp):  # known gap: Ray cannot restore its own cut state
            pytest.skip("the full disk cut Ray's experiment_state file; Ray then restarts its "
                        "experiment on --resume instead of restoring it (not handled yet)")
        done = subprocess.run([*sweep_cli(), "sweep", "--resume", str(exp)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "2 trials: 0 pruned by ASHA, 0 failed" in done.stdout
        parent, kids, errors = statuses(space.mlflow.tracking_uri, space.mlflow.experiment)
        assert parent == "FINISHED " and len(kids) == 2  # the error tag is gone
        assert set(kids.values()) == {"FINISHED"} and not any(errors.values())
        study = load_study(space)
        retries = [t for t in study.trials if "retry_of" in t.user_attrs]
        failed = {t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL}
        assert retries and {t.user_attrs["retry_of"] for t in retries} <= failed
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 2  # one result per trial of the sweep, retries included
        assert (exp / "summary" / "summary.json").is_file()
        assert not (exp / ".space_reserve").exists()


def ray_state_readable(exp: Path) -> bool:
    """Whether every ``experiment_state-*.json`` Ray Tune wrote is whole JSON."""
    try:
        for state in exp.glob("experiment_state-*.json"):
            json.loads(state.read_text())
    except ValueError:
        return False
    return True


# last in the module: the in-process Ray of ray_session lives until the module ends, and the
# disk-full sweep above runs a Ray of its own
@pytest.mark.slow
def test_a_diverging_trial_keeps_its_reason_across_ray(tmp_path, ray_session):
    """A trial whose L_loc weight overflows float32 diverges at its first iteration: its
    MLflow run ends FAILED with the DivergenceError's own message, one line."""
    path = space_file(tmp_path, "diverge", 2,
                      space={"loss.mu1": {"type": "categorical", "choices": [1.0, 1.0e300]}},
                      points_to_evaluate=[{"loss.mu1": 1.0e300}, {"loss.mu1": 1.0}],
                      trials={"num_samples": 2, "max_concurrent": 2, "max_failures": 0},
                      storage={"path": str(tmp_path / "sweeps")})
    space = runner.load(path, [])
    runner.claim(space, [])
    result = runner.run_sweep(space, verbose=0)
    status = {r["config"]["loss.mu1"]: r["status"] for r in result.records}
    assert status == {1.0e300: "FAILED", 1.0: "FINISHED"}
    runs = child_runs(mlflow.MlflowClient(result.tracking_uri), space.mlflow.experiment)
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert len(failed) == 1
    tag = failed[0].data.tags["error"]
    assert tag.startswith("DivergenceError: training diverged at iteration 0: loss term '")
    assert "= inf; lower train.lr or the weight of that term" in tag
    assert "\n" not in tag and "TypeError" not in tag
