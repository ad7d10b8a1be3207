"""`--resume` trusts nothing it did not write: every file Ray unpickles on a restore is
checked against the HMAC signatures the sweep's driver wrote with a key outside the
experiment folder. A crafted file (a pickle that would create a marker file) is refused with
one line and exit 2 before anything runs; so is a resume with another key; the untouched
sweep, interrupted with SIGINT, resumes and finishes."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
from pathlib import Path

import mlflow
import optuna
import pytest
from mllm4wtal.sweep import trust
from mllm4wtal.sweep.search import load_study
from test_infeasible import interrupted_sweep, sweep, user_env

pytestmark = pytest.mark.slow  # a sweep, interrupted and resumed


class Touch:
    """Unpickling this creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def crafted(marker: Path, json_wrapped: bool) -> bytes:
    """A file that creates ``marker`` when Ray loads it: a pickle, or for a JSON state file
    Ray's cloudpickle blob inside JSON (what ``experiment_state-*.json`` may hold)."""
    blob = pickle.dumps(Touch(marker))
    if not json_wrapped:
        return blob
    return ('{"trial_data": [], "runner_data": {"_type": "CLOUDPICKLE_FALLBACK", "value": "'
            + blob.hex() + '"}}').encode()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    env = user_env(tmp / "home")
    space, done = interrupted_sweep(tmp, "signed", env)
    assert done.returncode == 130, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, space, env


def test_the_key_is_private_and_outside_the_experiment(interrupted):
    tmp, space, _ = interrupted
    key = tmp / "home" / ".config" / "mllm4wtal" / "resume.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    exp = Path(space.experiment_dir)
    assert key.read_text().strip() not in (exp / trust.SIGNATURES).read_text()


def test_a_crafted_tuner_pkl_is_refused_and_nothing_runs(interrupted):
    tmp, space, env = interrupted
    exp = Path(space.experiment_dir)
    marker = tmp / "pwned"
    evil = crafted(marker, json_wrapped=False)
    pickle.loads(evil)  # the payload is live: loading it is what makes the marker
    assert marker.exists()
    marker.unlink()
    target = exp / trust.TUNER_PKL
    original = target.read_bytes()
    target.write_bytes(evil)
    try:
        out = sweep("--resume", str(exp), cwd=tmp, env=env)
    finally:
        target.write_bytes(original)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mllm4wtal sweep: error: {target} is not the file mllm4wtal wrote (changed or added "
        "by someone else, or cut short by a crash); --resume unpickles it, so nothing was "
        "resumed: start the sweep again under another name (key `name:`) or storage "
        "(--storage)"]
    assert not marker.exists()


@pytest.mark.parametrize("pattern, json_wrapped", [
    ("experiment_state-*.json", True), ("searcher-state-*.pkl", False),
    ("search_gen_state-*.json", False), ("callback-states-2099-01-01_00-00-00.pkl", False),
    ("run_trial_*/error.pkl", False)])
def test_every_other_file_ray_unpickles_is_checked(interrupted, monkeypatch, pattern,
                                                   json_wrapped):
    """Changed in place, or added where Ray looks for it (a newer callback state, an error
    file in a trial folder): refused before Ray reads it."""
    tmp, space, env = interrupted
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    exp = Path(space.experiment_dir)
    found = sorted(exp.glob(pattern))
    if found:
        target = found[-1]
    elif "/" in pattern:  # none yet: add one to the first trial's folder
        target = sorted(exp.glob(str(Path(pattern).parent)))[0] / Path(pattern).name
    else:
        target = exp / pattern
    original = target.read_bytes() if target.exists() else None
    marker = tmp / "pwned"
    target.write_bytes(crafted(marker, json_wrapped))
    try:
        with pytest.raises(trust.TrustError, match=f"^{target} is not the file mllm4wtal"):
            trust.verify(space.experiment_dir)
    finally:
        if original is None:
            target.unlink()
        else:
            target.write_bytes(original)
    assert not marker.exists()
    assert trust.verify(space.experiment_dir)  # as it was: verifies again


def test_a_resume_with_another_key_is_refused(interrupted):
    tmp, space, env = interrupted
    exp = Path(space.experiment_dir)
    other = tmp / "other.key"
    other.write_text("0123456789abcdef" * 4 + "\n")
    os.chmod(other, 0o600)
    out = sweep("--resume", str(exp), cwd=tmp, env={**env, trust.KEY_ENV: str(other)})
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"mllm4wtal sweep: error: {exp / trust.SIGNATURES}: the sweep was "
                           "signed with another key (id ")
    assert line.endswith(f"than {other} (id {trust.key_id(other.read_bytes().strip())}); "
                         f"point {trust.KEY_ENV} (now {other}) at the key file the sweep was "
                         "started with")


def test_the_untouched_interrupted_sweep_resumes_and_finishes(interrupted):
    tmp, space, env = interrupted
    exp = Path(space.experiment_dir)
    copy = tmp / "key-copy"
    shutil.copy2(Path(env["XDG_CONFIG_HOME"]) / "mllm4wtal" / "resume.key", copy)
    # the key named by the variable, as on a cluster where another user resumes
    out = sweep("--resume", str(exp), cwd=tmp, env={**env, trust.KEY_ENV: str(copy)},
                timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 trials: 0 pruned by ASHA, 0 failed" in out.stdout
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(space.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    states = [t.state for t in load_study(space).trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
