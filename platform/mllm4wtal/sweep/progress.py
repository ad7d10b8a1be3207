"""A sweep's progress on the console and in a Ray job's log (plain stdout lines, no terminal
control): the sweep's own metric as each trial's score (``space.score``: its best or its last
evaluation), trials finished / pruned / failed / running / waiting, the leader and an ETA.

The lines are computed by pure functions over :class:`TrialView` (plain data), so tests can
assert them exactly; :class:`SweepProgress` is the Ray Tune ``ProgressReporter`` that turns
Ray's trials into views and prints at a sensible rate: every ``every_s`` seconds, when a
trial ends, and at the end, never at every report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ray.tune import ProgressReporter

from mllm4wtal.sweep.records import SCORE_RULES, TrialRecord, rank_records

State = Literal["waiting", "running", "finished", "pruned", "failed"]
ENDED: tuple[State, ...] = ("finished", "pruned", "failed")
REFRESH_S = 30.0


@dataclass(frozen=True)
class Goal:
    """What the progress of a sweep is measured against."""

    name: str
    metric: str
    mode: Literal["min", "max"]
    score: Literal["best", "last"]
    num_samples: int
    max_concurrent: int
    iterations: int  # train.iterations: a trial that ends earlier without error was pruned
    pruning: bool  # a scheduler that stops trials (ASHA)

    @property
    def score_name(self) -> str:
        """The trial score's name, as MLflow logs it: ``best/map/avg_0.1-0.7``."""
        return f"{self.score}/{self.metric}"

    @classmethod
    def of(cls, space: Any) -> Goal:
        """The goal of a ``SearchSpaceFile``."""
        return cls(name=space.name, metric=space.metric, mode=space.mode, score=space.score,
                   num_samples=space.trials.num_samples,
                   max_concurrent=space.trials.max_concurrent,
                   iterations=space.base_config.train.iterations,
                   pruning=space.scheduler.type != "none")


@dataclass(frozen=True)
class TrialView:
    """One trial as the progress lines see it."""

    trial_id: str
    state: State
    iteration: int  # the training iteration of its last report
    score: float | None  # its score so far (``Goal.score``); None before its first one
    wall_s: float  # seconds it has run


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h04m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def counts(views: Iterable[TrialView]) -> dict[State, int]:
    out: dict[State, int] = dict.fromkeys(("finished", "pruned", "failed", "running",
                                           "waiting"), 0)
    for v in views:
        out[v.state] += 1
    return out


def leader(views: Iterable[TrialView], mode: str) -> TrialView | None:
    """The trial with the best score so far (any state), ranked as the sweep's records are
    (``records.rank_records``), or None."""
    by_id = {v.trial_id: v for v in views}
    ranked = rank_records([TrialRecord(trial_id=v.trial_id, metric=v.score)
                           for v in by_id.values()], mode)
    return by_id[str(ranked[0]["trial_id"])] if ranked else None


def eta_s(views: Sequence[TrialView], num_samples: int, concurrency: int) -> float | None:
    """Seconds until the sweep ends, or None before a trial finished or was pruned.

    Their mean wall time (pruned ones included: ASHA keeps pruning at the same rate; failed
    ones not: a config that fails at its start says nothing of the others) is what each trial
    not started yet costs and what each running one costs in all; the work left is shared by
    ``concurrency`` slots (fewer when fewer trials are left)."""
    ended = [v for v in views if v.state in ENDED]
    ran = [v.wall_s for v in ended if v.state != "failed"]
    if not ran:
        return None
    mean = sum(ran) / len(ran)
    running = [v for v in views if v.state == "running"]
    not_started = max(0, num_samples - len(ended) - len(running))
    work = not_started * mean + sum(max(0.0, mean - v.wall_s) for v in running)
    slots = max(1, min(concurrency, num_samples - len(ended)))
    return work / slots


def status_line(views: Sequence[TrialView], goal: Goal, elapsed_s: float, concurrency: int,
                done: bool = False) -> str:
    """The sweep's one progress line."""
    n = counts(views)
    ended = n["finished"] + n["pruned"] + n["failed"]
    waiting = max(0, goal.num_samples - ended - n["running"])  # pending or not created yet
    parts = [f"sweep '{goal.name}': {ended}/{goal.num_samples} trials ended "
             f"({n['finished']} finished, {n['pruned']} pruned, {n['failed']} failed), "
             f"{n['running']} running, {waiting} waiting"]
    best = leader(views, goal.mode)
    parts.append("leader: none yet" if best is None else
                 f"leader: trial {best.trial_id} {goal.score_name} = {best.score:.4f} "
                 f"({goal.mode})")
    if done:
        parts.append(f"done in {duration(elapsed_s)}")
    else:
        eta = eta_s(views, goal.num_samples, concurrency)
        parts.append(f"{duration(elapsed_s)} elapsed, "
                     + ("ETA unknown" if eta is None else f"ETA {duration(eta)}"))
    return "; ".join(parts)


def trial_line(view: TrialView, goal: Goal) -> str:
    """One trial: its state, where it is and its score so far."""
    where = f"{view.iteration}/{goal.iterations}"
    what = {"finished": f"finished at iteration {where}",
            "pruned": f"pruned at iteration {where}",
            "failed": f"failed at iteration {where}",
            "running": f"running, iteration {where}",
            "waiting": "waiting"}[view.state]
    score = "no score yet" if view.score is None else f"{goal.score_name} = {view.score:.4f}"
    return f"  trial {view.trial_id} {what}: {score}"


def intro_line(goal: Goal, every_s: float) -> str:
    """What the progress lines show, printed once before them."""
    return (f"sweep '{goal.name}' progress ({goal.mode} {goal.metric}; a trial's score "
            f"{goal.score_name} is its {SCORE_RULES[goal.score]}), every {every_s:g} s and "
            "when a trial ends:")


def progress_lines(views: Sequence[TrialView], goal: Goal, elapsed_s: float,
                   concurrency: int, newly_ended: Iterable[str] = (), done: bool = False
                   ) -> list[str]:
    """What one report prints: a line per trial that ended since the last report, the
    status line, and (unless ``done``) a line per running trial."""
    by_id = {v.trial_id: v for v in views}
    lines = [trial_line(by_id[t], goal) for t in newly_ended if t in by_id]
    lines.append(status_line(views, goal, elapsed_s, concurrency, done=done))
    if not done:
        lines += [trial_line(v, goal) for v in views if v.state == "running"]
    return lines


# ------------------------------------------------------------------ Ray Tune's side

_RAY_STATE: dict[str, State] = {"PENDING": "waiting", "PAUSED": "waiting",
                                "RUNNING": "running", "ERROR": "failed"}


def trial_view(trial: Any, goal: Goal) -> TrialView:
    """A ``ray.tune.experiment.Trial`` as plain data."""
    result = trial.last_result or {}
    iteration = int(result.get("iteration", 0) or 0)
    state = _RAY_STATE.get(trial.status)
    if state is None:  # TERMINATED
        state = "pruned" if goal.pruning and iteration < goal.iterations else "finished"
    seen = (trial.metric_analysis or {}).get(goal.metric) or {}
    key = "last" if goal.score == "last" else goal.mode
    score = seen.get(key)
    return TrialView(trial_id=str(trial.trial_id), state=state, iteration=iteration,
                     score=None if score is None else float(score),
                     wall_s=float(result.get("time_total_s", 0.0) or 0.0))


class SweepProgress(ProgressReporter):
    """Ray Tune's progress reporter of a sweep (``tune.RunConfig(progress_reporter=...)``)."""

    def __init__(self, goal: Goal, every_s: float = REFRESH_S) -> None:
        self.goal, self.every_s = goal, every_s
        self._start = self._last = time.time()
        self._ended: set[str] = set()
        self._peak = 0
        self._started = False

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        # a resumed sweep brings this reporter back from Tune's state: start afresh
        self._start = self._last = start_time or time.time()
        self._ended, self._peak, self._started = set(), 0, False

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        return (done or not self._started or bool(ended - self._ended)
                or time.time() - self._last >= self.every_s)

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        views = [trial_view(t, self.goal) for t in trials]
        ended = [v.trial_id for v in views if v.state in ENDED]
        self._peak = max(self._peak, sum(v.state == "running" for v in views))
        concurrency = min(self.goal.max_concurrent, self._peak or self.goal.max_concurrent)
        fresh = [t for t in ended if t not in self._ended]
        now = time.time()
        if not self._started:
            print(intro_line(self.goal, self.every_s), flush=True)
            self._started = True
        for line in progress_lines(views, self.goal, now - self._start, concurrency,
                                   newly_ended=fresh, done=done):
            print(line, flush=True)
        self._ended.update(ended)
        self._last = now


def sweep_reporter(space: Any, every_s: float = REFRESH_S) -> SweepProgress:
    """The progress reporter of the sweep ``space``.

    Ray Tune's newer console output (the default) ignores a ``progress_reporter``; its
    legacy output engine calls it, so this switches to that engine for this process."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    return SweepProgress(Goal.of(space), every_s)


__all__ = ["Goal", "TrialView", "SweepProgress", "sweep_reporter", "trial_view",
           "progress_lines", "status_line", "trial_line", "intro_line", "eta_s", "leader",
           "counts", "duration", "REFRESH_S"]
