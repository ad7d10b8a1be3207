"""A sweep's progress lines: the pure functions exactly, the reporter's rate, and a real tiny
sweep run as a user runs it, whose printed lines name the metric, the counts and the leader
that MLflow holds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.progress import (
    Goal,
    SweepProgress,
    TrialView,
    duration,
    eta_s,
    leader,
    progress_lines,
    status_line,
    sweep_reporter,
    trial_view,
)
from test_sweep import TOTAL, children, space_file

ROOT = Path(__file__).resolve().parents[1]
GOAL = Goal(name="small", metric="loss/match", mode="min", score="best", num_samples=6,
            max_concurrent=2, iterations=8, pruning=True)


def view(trial_id: str, state: str, iteration: int = 0, score: float | None = None,
         wall_s: float = 0.0) -> TrialView:
    return TrialView(trial_id=trial_id, state=state, iteration=iteration, score=score,
                     wall_s=wall_s)  # type: ignore[arg-type]


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0, 44.6, 60, 185, 3599, 3600, 7440)] == [
        "0s", "45s", "1m00s", "3m05s", "59m59s", "1h00m", "2h04m"]


def test_eta_is_unknown_until_a_trial_ended_then_shares_the_work_left():
    running = [view("a", "running", 2, 0.5, 5.0), view("b", "running", 2, 0.6, 30.0)]
    assert eta_s(running, 6, 2) is None
    assert eta_s([view("x", "failed", 0, None, 0.5), *running], 6, 2) is None
    views = [view("c", "finished", 8, 0.4, 20.0), view("d", "pruned", 2, 0.9, 10.0), *running]
    # mean of ended: 15 s; 2 not started (15 s each); a has 10 s left, b is past the mean
    assert eta_s(views, 6, 2) == pytest.approx((2 * 15 + 10 + 0) / 2)
    # one slot when one trial is left, whatever the concurrency
    last = [view(t, "finished", 8, 0.5, 12.0) for t in "abcde"] + [view("f", "running",
                                                                         4, 0.5, 2.0)]
    assert eta_s(last, 6, 4) == pytest.approx(10.0)


def test_leader_is_ranked_as_the_records_are():
    views = [view("t2", "running", 4, 0.30), view("t1", "failed", 2, 0.30),
             view("t3", "finished", 8, 0.35), view("t4", "waiting")]
    assert leader(views, "min").trial_id == "t1"  # ties: the lower trial id
    assert leader(views, "max").trial_id == "t3"
    assert leader([view("t4", "waiting")], "min") is None


def test_status_line_names_metric_counts_leader_and_eta():
    views = [view("t1", "finished", 8, 0.42, 20.0), view("t2", "pruned", 2, 0.61, 4.0),
             view("t3", "failed", 0, None, 0.5), view("t4", "running", 4, 0.40, 6.0)]
    assert status_line(views, GOAL, elapsed_s=65, concurrency=2) == (
        "sweep 'small': 3/6 trials ended (1 finished, 1 pruned, 1 failed), 1 running, "
        "2 waiting; leader: trial t4 best/loss/match = 0.4000 (min); 1m05s elapsed, "
        "ETA 15s")  # t1 and t2 took 12 s on average (not t3, failed): 2 trials not started
    # and t4's 6 s left, on 2 slots
    assert status_line(views[3:], GOAL, 5, 2).endswith("5s elapsed, ETA unknown")
    assert status_line([], GOAL, 0, 2) == (
        "sweep 'small': 0/6 trials ended (0 finished, 0 pruned, 0 failed), 0 running, "
        "6 waiting; leader: none yet; 0s elapsed, ETA unknown")
    last = Goal(**{**GOAL.__dict__, "score": "last", "mode": "max"})
    assert status_line(views, last, 125, 2, done=True) == (
        "sweep 'small': 3/6 trials ended (1 finished, 1 pruned, 1 failed), 1 running, "
        "2 waiting; leader: trial t2 last/loss/match = 0.6100 (max); done in 2m05s")


def test_progress_lines_show_ended_trials_then_status_then_running():
    views = [view("t1", "pruned", 2, 0.61, 10.0), view("t2", "running", 4, 0.40, 6.0),
             view("t3", "waiting")]
    lines = progress_lines(views, GOAL, 40, 2, newly_ended=["t1"])
    assert lines[0] == "  trial t1 pruned at iteration 2/8: best/loss/match = 0.6100"
    assert lines[1].startswith("sweep 'small': 1/6 trials ended (0 finished, 1 pruned, 0 "
                               "failed), 1 running, 4 waiting; leader: trial t2")
    assert lines[2] == "  trial t2 running, iteration 4/8: best/loss/match = 0.4000"
    assert len(lines) == 3
    done = progress_lines(views, GOAL, 40, 2, done=True)
    assert len(done) == 1 and done[0].endswith("done in 40s")


def ray_trial(trial_id: str, status: str, iteration: int, history: list[float],
              wall_s: float = 3.0) -> SimpleNamespace:
    """What a ``ray.tune.experiment.Trial`` offers the reporter."""
    analysis = ({"loss/match": {"max": max(history), "min": min(history),
                                "last": history[-1]}} if history else {})
    return SimpleNamespace(trial_id=trial_id, status=status, metric_analysis=analysis,
                           last_result={"iteration": iteration, "time_total_s": wall_s}
                           if iteration else {})


def test_a_ray_trial_becomes_a_view_by_the_sweep_rules():
    t = ray_trial("x", "TERMINATED", 2, [0.7, 0.5, 0.6])
    assert trial_view(t, GOAL) == view("x", "pruned", 2, 0.5, 3.0)
    assert trial_view(t, Goal(**{**GOAL.__dict__, "score": "last"})).score == 0.6
    assert trial_view(t, Goal(**{**GOAL.__dict__, "mode": "max"})).score == 0.7
    # without a scheduler a short trial is no pruned one; a full-length one finished
    assert trial_view(t, Goal(**{**GOAL.__dict__, "pruning": False})).state == "finished"
    assert trial_view(ray_trial("y", "TERMINATED", 8, [0.4]), GOAL).state == "finished"
    assert trial_view(ray_trial("z", "ERROR", 0, []), GOAL) == view("z", "failed")
    assert trial_view(ray_trial("w", "PENDING", 0, []), GOAL).state == "waiting"
    assert trial_view(ray_trial("v", "RUNNING", 4, [0.9]), GOAL).state == "running"


def test_the_reporter_prints_at_start_on_each_end_and_at_its_rate(capsys):
    rep = SweepProgress(GOAL, every_s=3600)
    rep.setup(start_time=None, total_samples=6, metric="loss/match", mode="min")
    trials = [ray_trial("a", "RUNNING", 2, [0.9]), ray_trial("b", "PENDING", 0, [])]
    assert rep.should_report(trials)  # the first report says what the lines show
    rep.report(trials, False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("sweep 'small' progress (min loss/match; a trial's score best/loss/match "
                      "is its best evaluation during the run, what best.pt holds), every "
                      "3600 s and when a trial ends:")
    assert out[1].startswith("sweep 'small': 0/6 trials ended") and "ETA unknown" in out[1]
    assert not rep.should_report(trials)  # not on every result
    trials[0] = ray_trial("a", "TERMINATED", 8, [0.9, 0.3], wall_s=40.0)
    assert rep.should_report(trials)  # a trial ended
    rep.report(trials, False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  trial a finished at iteration 8/8: best/loss/match = 0.3000"
    assert "1/6 trials ended (1 finished" in out[1] and "leader: trial a " in out[1]
    assert "ETA unknown" not in out[1]
    assert not rep.should_report(trials)
    assert rep.should_report(trials, done=True)
    rep.every_s = 0.0
    assert rep.should_report(trials)  # its rate


def test_the_reporter_switches_tune_to_the_engine_that_calls_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    rep = sweep_reporter(runner.load(space_file(tmp_path, "goal", score="last"), []))
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert rep.goal == Goal(name="goal", metric="loss/match", mode="min", score="last",
                            num_samples=8, max_concurrent=2, iterations=TOTAL, pruning=True)


STATUS = re.compile(r"^sweep 'watched': (\d+)/5 trials ended \((\d+) finished, (\d+) pruned, "
                    r"(\d+) failed\), (\d+) running, (\d+) waiting; (.*)$")


@pytest.mark.slow
def test_a_real_sweep_prints_its_progress_on_plain_stdout(tmp_path):
    """The sweep as a user (or ``ray job submit``) runs it, stdout a pipe, not a terminal."""
    path = space_file(tmp_path, "watched",
                      trials={"num_samples": 5, "max_concurrent": 2, "max_failures": 0})
    space = runner.load(path, [])
    proc = subprocess.run([str(ROOT / ".venv/bin/mllm4wtal"), "sweep", str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "\x1b[" not in proc.stdout  # no terminal control codes
    intro = [ln for ln in lines if ln.startswith("sweep 'watched' progress")]
    assert intro == ["sweep 'watched' progress (min loss/match; a trial's score "
                     "best/loss/match is its best evaluation during the run, what best.pt "
                     "holds), every 30 s and when a trial ends:"]
    status = [m for m in map(STATUS.match, lines) if m]
    assert status[0].group(7).endswith("ETA unknown")
    assert not any("map/0.1" in ln for ln in lines)  # not Ray's own table
    final = status[-1]
    assert final.group(7).startswith("leader: trial ") and " done in " in final.group(7)
    ended, finished, pruned, failed, running, waiting = map(int, final.groups()[:6])
    assert (ended, running, waiting) == (5, 0, 0)
    # each trial's end was printed once, as it happened
    ends = [ln for ln in lines if re.match(r"^  trial \S+ (finished|pruned|failed) at", ln)]
    assert len(ends) == 5
    assert any("ETA " in m.group(7) and "unknown" not in m.group(7) for m in status)

    # the counts and the leader are MLflow's
    runs = children(mlflow.MlflowClient(space.mlflow.tracking_uri), space)
    assert len(runs) == 5
    assert failed == sum(r.info.status == "FAILED" for r in runs.values())
    assert pruned == sum(r.data.tags.get("pruned") == "true" for r in runs.values())
    assert finished == 5 - failed - pruned
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)
    scores = {}
    for t, r in runs.items():
        history = [m.value for m in client.get_metric_history(r.info.run_id, "loss/match")]
        if history:
            scores[t] = min(history)
    best = min(scores, key=lambda t: (scores[t], t))
    assert final.group(7).startswith(f"leader: trial {best} best/loss/match = "
                                     f"{scores[best]:.4f} (min)")
