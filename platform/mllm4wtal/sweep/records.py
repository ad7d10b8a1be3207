"""One record per Ray Tune trial of a finished (or interrupted) sweep or study.

``trial_record`` is the one builder, from Ray Tune's ``Result``: the sweep keeps its records
for the summary (``report.summary``), a study for its cells. ``mark_killed`` then tells the
trials an interruption stopped from those the scheduler pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # records stay light to import: no MLflow
    from mllm4wtal.sweep.tracker import SweepTracker


class TrialRecord(TypedDict, total=False):
    """One trial of a sweep or study."""

    trial_id: str
    config: dict[str, Any]   # the trial's overrides of the base config, dotted keys
    metric: float | None     # its best reported value of the sweep's metric (None: no metric)
    iterations: int          # training iterations it ran
    pruned: bool
    status: str              # FINISHED / FAILED / KILLED
    wall_s: float            # its wall-clock seconds
    gpus: float              # GPUs it held (fractional)
    variant: str             # a study's cell
    seed: int


def trial_record(result: Any, config: Mapping[str, Any], *, total_iterations: int,
                 metric: str | None = None, mode: str = "max", gpus: float = 0.0,
                 pruning: bool = True) -> TrialRecord:
    """The record of one ``ray.tune.Result``; ``config`` is the trial's overrides.

    ``metric`` is the best value of ``metric`` (by ``mode``) the trial reported, the one its
    ``best.pt`` holds. With ``pruning`` (a scheduler that stops trials), a trial that stopped
    without error before ``total_iterations`` was pruned (``mark_killed`` then tells
    interrupted ones apart); without, no trial is.
    """
    metrics = result.metrics or {}
    iterations = int(metrics.get("iteration", 0) or 0)
    failed = result.error is not None
    best = None
    if metric is not None:
        history = (result.metrics_dataframe.to_dict("records")
                   if result.metrics_dataframe is not None else [])
        values = [h[metric] for h in history if h.get(metric) is not None]
        pick = max if mode == "max" else min
        best = pick(values) if values else metrics.get(metric)
    return TrialRecord(
        trial_id=str(metrics.get("trial_id", "")), config=dict(config), metric=best,
        iterations=iterations, pruned=pruning and not failed and iterations < total_iterations,
        status="FAILED" if failed else "FINISHED",
        wall_s=float(metrics.get("time_total_s", 0.0) or 0.0), gpus=float(gpus))


def mark_killed(records: list[TrialRecord], tracker: SweepTracker) -> bool:
    """Records of trials whose MLflow run is still RUNNING become KILLED (not pruned);
    returns whether any run is still RUNNING (the sweep or study was interrupted)."""
    running = set(tracker.running_trials())
    for r in records:
        if r["trial_id"] in running:
            r["status"], r["pruned"] = "KILLED", False
    return bool(running)
