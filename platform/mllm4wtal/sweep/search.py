"""Optuna search and ASHA pruning for a sweep, with honest records in the Optuna study.

Ray Tune's ``OptunaSearch`` reports intermediate values at Ray's report count and tells the
study COMPLETE for every trial Tune stopped, pruned or not. ``PruningAwareOptunaSearch``
reports at the training iteration instead and tells a trial that stopped before
``total_iterations`` without an error as PRUNED, with ``pruned_at_iteration`` as a user
attribute: so TPE and anyone reading the study with Optuna's own tools see what happened.
The study lives in an RDB storage (sqlite next to the experiment by default).
"""

from __future__ import annotations

import functools
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from mllm4wtal.sweep.spaces import SearchSpaceFile, make_sampler, suggest

TIME_ATTR = "iteration"


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records ASHA-stopped trials as PRUNED (see module docstring)."""

    def __init__(self, *args: Any, total_iterations: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total_iterations = total_iterations
        self._reported: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        step = int(result[TIME_ATTR])
        steps = self._reported.setdefault(trial_id, set())
        if step not in steps:  # a resumed trial repeats the steps after its checkpoint
            self._ot_trials[trial_id].report(result[self.metric], step)
            steps.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        if result and not error:  # Tune hands the last result (the rung's) only here
            self.on_trial_result(trial_id, result)
        reached = int(result.get(TIME_ATTR, 0)) if result else 0
        if error or not result or reached >= self.total_iterations:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("pruned_at_iteration", reached)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def optuna_storage_url(space: SearchSpaceFile) -> str:
    return space.searcher.storage or f"sqlite:///{space.experiment_dir}/optuna.db"


def make_searcher(space: SearchSpaceFile) -> Searcher:
    """Define-by-run OptunaSearch over the file's space, seeded sampler, RDB study named
    after the sweep, the paper defaults first, at most ``max_concurrent`` trials at once."""
    storage = optuna.storages.RDBStorage(optuna_storage_url(space))
    search = PruningAwareOptunaSearch(
        space=functools.partial(suggest, space), metric=space.metric, mode=space.mode,
        points_to_evaluate=[dict(p) for p in space.points_to_evaluate] or None,
        sampler=make_sampler(space), study_name=space.name, storage=storage,
        total_iterations=space.base_config.train.iterations)
    return ConcurrencyLimiter(search, max_concurrent=space.trials.max_concurrent)


def make_scheduler(space: SearchSpaceFile) -> TrialScheduler:
    """ASHA with rungs in training iterations, or FIFO (no pruning)."""
    s = space.scheduler
    if s.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, metric=space.metric, mode=space.mode,
                         max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def load_study(space: SearchSpaceFile) -> optuna.Study:
    return optuna.load_study(study_name=space.name, storage=optuna_storage_url(space))
