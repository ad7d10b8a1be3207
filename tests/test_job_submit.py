"""The README's cluster commands ("On a cluster: `ray job submit`"), run literally with bash in
an environment holding only PATH (the venv's bin first, as an activated venv has it), a fresh
HOME and what the README sets: a token-auth head on 127.0.0.1, a sweep submitted to it that
succeeds, tagged with the checkout's commit and dirty flag; a missing or wrong token refused
in one line naming the variable to set.

What the test changes, and why: the port numbers only (free ones: other Rays run on this
machine), flags of the kinds the README shows being passed (`--space-set`, `--set`) to keep the
sweep tiny, and TMPDIR (Ray's temp dir goes under it, not into the machine's shared /tmp/ray;
no part of the commands). The head it started is stopped by PID, never with `ray stop`.
"""

from __future__ import annotations

import subprocess

import mlflow
import pytest
from conftest import TINY
from mllm4wtal.sweep.mlflow_names import GIT_COMMIT_ENV, GIT_DIRTY_ENV, git_state
from readme_cluster import ROOT, clean_env, git, readme_commands, with_ports

# the sweep, shrunk through the flags the README's submit line passes (--space-set, --set)
SHRINK = [f"--set {o}" for o in TINY] + [
    f"--space-set {o}" for o in ("trials.num_samples=2", "trials.max_concurrent=2",
                                 "scheduler.grace_period=2", "scheduler.max_t=4",
                                 "searcher.n_startup_trials=1")]


def test_git_state_from_the_submitter(tmp_path, monkeypatch):
    """Where there is no .git (a job's working directory), the commit the submitter passed;
    a checkout, where there is one, wins."""
    commit = git("rev-parse", "HEAD").strip()
    monkeypatch.setenv(GIT_COMMIT_ENV, commit)
    monkeypatch.setenv(GIT_DIRTY_ENV, "false")
    git_state.cache_clear()
    assert git_state(tmp_path) == (commit, "false")
    monkeypatch.setenv(GIT_COMMIT_ENV, "not-a-commit")
    git_state.cache_clear()
    assert git_state(tmp_path) == ("unknown", "unknown")
    assert git_state(ROOT)[0] == commit


@pytest.mark.cluster
@pytest.mark.slow  # a Ray head, a job and its trials: a few minutes
def test_readme_cluster_commands():
    commands, ports = with_ports(readme_commands())
    submit = commands[-1]
    assert "jobs/submit_sweep.sh" in submit and "--space-set" in submit and "--set" in submit
    commands[-1] = submit = f"{submit} {' '.join(SHRINK)}"
    commit, dirty = git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
    with clean_env() as (env, home):
        out = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=ROOT, env=env,
                             timeout=900, capture_output=True, text=True)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-6000:]
        assert "succeeded" in log, log[-6000:]

        # the job wrote where the script told it (~/mllm4wtal/sweeps), not into its temporary
        # working directory
        storage = home / "mllm4wtal" / "sweeps"
        client = mlflow.MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("quickstart")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(runs) == 3 and len(parents) == 1
        assert all(r.info.status == "FINISHED" for r in runs)
        # the job's copy of the code has no .git: the commit came through the runtime env
        tags = parents[0].data.tags
        assert tags["git_commit"] == commit and tags["git_dirty"] == str(dirty).lower(), tags

        # the same submit line with a wrong token, or with none, is refused in one line
        for extra, says in (({"RAY_AUTH_TOKEN": "0" * 32}, "refused this client's token"),
                            ({"HOME": str(home / "nobody")}, "has no token")):
            refused = subprocess.run(["bash", "-e", "-c", submit], cwd=ROOT, timeout=180,
                                     env={**env, **extra}, capture_output=True, text=True)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert refused.stderr.startswith("submit_sweep.sh: error: "), refused.stderr
            assert refused.stderr.count("\n") == 1 and says in refused.stderr
            assert "set RAY_AUTH_TOKEN" in refused.stderr
        # and submitted nothing: the cluster ran one job
        jobs = subprocess.run(["ray", "job", "list", "--address",
                               f"http://127.0.0.1:{ports[8265]}"], cwd=ROOT, timeout=120,
                              env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                              text=True)
        assert jobs.returncode == 0, jobs.stderr[-2000:]
        assert jobs.stdout.count("submission_id='raysubmit_") == 1, jobs.stdout[-3000:]
