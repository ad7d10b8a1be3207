"""One record per Ray Tune trial of a finished (or interrupted) sweep or study.

``trial_record`` is the one builder, from Ray Tune's ``Result``: the sweep keeps its records
for the summary (``report.summary``), a study for its cells. ``mark_killed`` then tells the
trials an interruption stopped from those the scheduler pruned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # records stay light to import: no MLflow
    from mllm4wtal.sweep.tracker import SweepTracker


#: a sweep's ``score`` rule in words, wherever a score is shown
SCORE_RULES = {"best": "best evaluation during the run, what best.pt holds",
               "last": "last evaluation, what last.pt holds"}


class TrialRecord(TypedDict, total=False):
    """One trial of a sweep or study."""

    trial_id: str
    config: dict[str, Any]   # the trial's overrides of the base config, dotted keys
    metric: float | None     # its score: best or last reported value of the sweep's metric
    #                          (the sweep's ``score`` rule; None: no metric)
    iterations: int          # training iterations it ran
    pruned: bool
    status: str              # FINISHED / FAILED / KILLED
    wall_s: float            # its wall-clock seconds
    gpus: float              # GPUs it held (fractional)
    variant: str             # a study's cell
    seed: int


def trial_record(result: Any, config: Mapping[str, Any], *, total_iterations: int,
                 metric: str | None = None, mode: str = "max", score: str = "best",
                 gpus: float = 0.0, pruning: bool = True) -> TrialRecord:
    """The record of one ``ray.tune.Result``; ``config`` is the trial's overrides.

    ``metric``: the trial's score, by the sweep's ``score`` rule: its best value of
    ``metric`` (by ``mode``) during the run, what its ``best.pt`` holds (``best``), or its
    last reported value, what ``last.pt`` holds (``last``). With ``pruning`` (a scheduler
    that stops trials), a trial that stopped without error before ``total_iterations`` was
    pruned (``mark_killed`` then tells interrupted ones apart); without, no trial is.
    """
    metrics = result.metrics or {}
    iterations = int(metrics.get("iteration", 0) or 0)
    failed = result.error is not None
    value = None
    if metric is not None:
        history = (result.metrics_dataframe.to_dict("records")
                   if result.metrics_dataframe is not None else [])
        values = [h[metric] for h in history if h.get(metric) is not None]
        value = trial_score(values, mode, score) if values else metrics.get(metric)
    return TrialRecord(
        trial_id=str(metrics.get("trial_id", "")), config=dict(config), metric=value,
        iterations=iterations, pruned=pruning and not failed and iterations < total_iterations,
        status="FAILED" if failed else "FINISHED",
        wall_s=float(metrics.get("time_total_s", 0.0) or 0.0), gpus=float(gpus))


def trial_score(values: list[float], mode: str, score: str) -> float:
    """A trial's score from the values of the metric it reported, in order: the best by
    ``mode`` (NaN never best) for ``score == "best"``, the last for ``"last"``."""
    if score == "last":
        return values[-1]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return values[-1]
    return max(finite) if mode == "max" else min(finite)


def rank_records(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Records with a finite score, best first (``mode`` max or min); ties by trial id."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    scored = [r for r in records if isinstance(r.get("metric"), int | float)
              and math.isfinite(float(r["metric"]))]  # type: ignore[arg-type]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(scored, key=lambda r: (sign * float(r["metric"]),  # type: ignore[arg-type]
                                         str(r.get("trial_id"))))


def mark_killed(records: list[TrialRecord], tracker: SweepTracker) -> bool:
    """Records of trials whose MLflow run is still RUNNING become KILLED (not pruned);
    returns whether any run is still RUNNING (the sweep or study was interrupted)."""
    running = set(tracker.running_trials())
    for r in records:
        if r["trial_id"] in running:
            r["status"], r["pruned"] = "KILLED", False
    return bool(running)


def drop_orphans(records: list[TrialRecord], tracker: SweepTracker) -> list[str]:
    """RUNNING child runs of trials Ray does not know (the driver was killed after it made
    the trial but before Ray saved its experiment state, so a resumed sweep ran that
    suggestion again under a new trial id): they are duplicates, deleted (MLflow keeps them
    in its trash) with the tag ``superseded``. Call only with the records of every trial
    Ray knows. Returns their trial ids."""
    known = {r["trial_id"] for r in records}
    orphans = [t for t in tracker.running_trials() if t not in known]
    for trial_id in orphans:
        run_id = tracker.child_run_id(trial_id)
        if run_id is not None:
            tracker.client.set_tag(run_id, "superseded", "the driver stopped before Ray saved "
                                   "this trial; the resumed sweep ran its suggestion again")
            tracker.client.set_terminated(run_id, status="KILLED")
            tracker.client.delete_run(run_id)
    return orphans
