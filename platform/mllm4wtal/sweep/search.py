"""Optuna search and ASHA pruning for a sweep, with honest records in the Optuna study.

Ray Tune's ``OptunaSearch`` reports intermediate values at Ray's report count and tells the
study COMPLETE for every trial Tune stopped, pruned or not. ``PruningAwareOptunaSearch``
reports at the training iteration instead and tells a trial that stopped before
``total_iterations`` without an error as PRUNED, with ``pruned_at_iteration`` as a user
attribute: so TPE and anyone reading the study with Optuna's own tools see what happened.
The study lives in an RDB storage (sqlite next to the experiment by default).

Ray offers no public way to reach the Optuna trial behind a Tune trial; every use of
``OptunaSearch``'s private state is in :class:`OptunaSearchState`, which refuses a Ray it
was not tested with (:data:`TESTED_RAY`).
"""

from __future__ import annotations

import functools
from typing import Any

import optuna
import ray
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from mllm4wtal.errors import UserError
from mllm4wtal.sweep.spaces.optuna_space import make_sampler, suggest
from mllm4wtal.sweep.spaces.search_space import SearchSpaceFile

TIME_ATTR = "iteration"
#: the Ray release series whose ``OptunaSearch`` internals :class:`OptunaSearchState` reads
TESTED_RAY = "2.60"


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray whose ``OptunaSearch`` internals were not tested (``version``: default
    ``ray.__version__``)."""
    version = ray.__version__ if version is None else version
    if version != TESTED_RAY and not version.startswith(TESTED_RAY + "."):
        raise UserError(
            f"mllm4wtal sweep records pruned trials through internals of Ray "
            f"{TESTED_RAY}.x's OptunaSearch, and Ray {version} is installed; install the tested "
            f"Ray (pip install 'ray[tune,default]=={TESTED_RAY}.*') or, to support Ray "
            f"{version}, check OptunaSearchState in mllm4wtal/sweep/search.py against its "
            "OptunaSearch and update TESTED_RAY")


class OptunaSearchState:
    """The one adapter to ``OptunaSearch``'s private state (``_ot_trials``, ``_ot_study``,
    ``_completed_trials``), for Ray :data:`TESTED_RAY`.x only."""

    def __init__(self, search: OptunaSearch) -> None:
        check_ray_version()
        self.search = search

    def finished(self, trial_id: str) -> bool:
        """Whether the study was already told the trial's end."""
        return trial_id in self.search._completed_trials

    def trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial behind a Tune trial."""
        return self.search._ot_trials[trial_id]

    def tell_pruned(self, trial_id: str, iteration: int) -> None:
        """Tell the study the trial was pruned at ``iteration`` (a user attribute)."""
        trial = self.trial(trial_id)
        trial.set_user_attr("pruned_at_iteration", iteration)
        self.search._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self.search._completed_trials.add(trial_id)


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records ASHA-stopped trials as PRUNED (see module docstring)."""

    def __init__(self, *args: Any, total_iterations: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total_iterations = total_iterations
        self._reported: dict[str, set[int]] = {}
        check_ray_version()

    @property
    def state(self) -> OptunaSearchState:
        # made per use, never stored: Tune pickles the searcher's __dict__ to resume it
        return OptunaSearchState(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.state.finished(trial_id) or self.metric not in result:
            return
        step = int(result[TIME_ATTR])
        steps = self._reported.setdefault(trial_id, set())
        if step not in steps:  # a resumed trial repeats the steps after its checkpoint
            self.state.trial(trial_id).report(result[self.metric], step)
            steps.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if self.state.finished(trial_id):
            return
        if result and not error:  # Tune hands the last result (the rung's) only here
            self.on_trial_result(trial_id, result)
        reached = int(result.get(TIME_ATTR, 0)) if result else 0
        if error or not result or reached >= self.total_iterations:
            super().on_trial_complete(trial_id, result, error)
            return
        self.state.tell_pruned(trial_id, reached)


def optuna_storage_url(space: SearchSpaceFile) -> str:
    return space.searcher.storage or f"sqlite:///{space.experiment_dir}/optuna.db"


def make_searcher(space: SearchSpaceFile) -> Searcher:
    """Define-by-run OptunaSearch over the file's space, seeded sampler, RDB study named
    after the sweep, the paper defaults first, at most ``max_concurrent`` trials at once."""
    check_ray_version()  # before the study is created
    storage = optuna.storages.RDBStorage(optuna_storage_url(space))
    search = PruningAwareOptunaSearch(
        space=functools.partial(suggest, space.params), metric=space.metric, mode=space.mode,
        points_to_evaluate=[dict(p) for p in space.points_to_evaluate] or None,
        sampler=make_sampler(space.searcher, space.has_conditionals), study_name=space.name,
        storage=storage, total_iterations=space.base_config.train.iterations)
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
