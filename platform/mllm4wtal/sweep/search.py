"""Optuna search and ASHA pruning for a sweep, with honest records in the Optuna study.

Ray Tune's ``OptunaSearch`` reports intermediate values at Ray's report count and tells the
study COMPLETE for every trial Tune stopped, pruned or not. ``PruningAwareOptunaSearch``
reports at the training iteration instead and tells a trial that stopped before
``total_iterations`` without an error as PRUNED, with ``pruned_at_iteration`` as a user
attribute: so TPE and anyone reading the study with Optuna's own tools see what happened.
The study lives in an RDB storage (sqlite next to the experiment by default).

Ray offers no public way to reach the Optuna trial behind a Tune trial; every use of
``OptunaSearch``'s private state is in :class:`OptunaSearchState`, which refuses a Ray it
was not tested with (``ray_session.TESTED_RAY``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from mllm4wtal.ray_session import check_ray_version
from mllm4wtal.sweep.spaces.optuna_space import make_sampler, suggest
from mllm4wtal.sweep.spaces.search_space import SearchSpaceFile

TIME_ATTR = "iteration"
class OptunaSearchState:
    """The one adapter to ``OptunaSearch``'s private state (``_ot_trials``, ``_ot_study``,
    ``_completed_trials``), for Ray ``ray_session.TESTED_RAY``.x only."""

    def __init__(self, search: OptunaSearch) -> None:
        check_ray_version()
        self.search = search

    def finished(self, trial_id: str) -> bool:
        """Whether the study was already told the trial's end."""
        return trial_id in self.search._completed_trials

    def trial(self, trial_id: str) -> optuna.Trial:
        """The Optuna trial behind a Tune trial."""
        return self.search._ot_trials[trial_id]

    def failed(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The study's FAIL trials, by Tune trial id."""
        numbers = {t.number: t for t in self.search._ot_study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        return {tid: numbers[trial.number] for tid, trial in self.search._ot_trials.items()
                if trial.number in numbers}

    def mark_finished(self, trial_id: str) -> None:
        self.search._completed_trials.add(trial_id)

    def tell_pruned(self, trial_id: str, iteration: int) -> None:
        """Tell the study the trial was pruned at ``iteration`` (a user attribute)."""
        trial = self.trial(trial_id)
        trial.set_user_attr("pruned_at_iteration", iteration)
        self.search._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self.search._completed_trials.add(trial_id)


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records ASHA-stopped trials as PRUNED (see module docstring).

    A trial whose Optuna record is FAIL (it failed, or :func:`fail_running` closed it when
    the sweep stopped on a fault) and that ``--resume`` runs again gets a second record when
    it ends: the same parameters, its intermediate values and end, and ``retry_of`` the
    first one. Optuna cannot reopen a finished trial.
    """

    def __init__(self, *args: Any, total_iterations: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total_iterations = total_iterations
        self._reported: dict[str, set[int]] = {}
        self._retried: dict[str, dict[str, Any]] = {}
        check_ray_version()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        retried = getattr(self, "_retried", {})  # a state saved before retries existed
        for tid, closed in self.state.failed().items():
            retried.setdefault(tid, {"of": closed.number, "params": closed.params,
                                     "distributions": closed.distributions,
                                     "values": dict(closed.intermediate_values)})
        self._retried = retried

    def _retry_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            self._retried[trial_id]["values"][int(result[TIME_ATTR])] = result[self.metric]

    def _retry_end(self, trial_id: str, result: dict | None, error: bool) -> None:
        if result and not error:
            self._retry_result(trial_id, result)
        retry = self._retried.pop(trial_id)
        reached = int(result.get(TIME_ATTR, 0)) if result else 0
        value = result.get(self.metric) if result and not error else None
        attrs: dict[str, Any] = {"retry_of": retry["of"]}
        if error or value is None:
            state = optuna.trial.TrialState.FAIL
        elif reached >= self.total_iterations:
            state = optuna.trial.TrialState.COMPLETE
        else:
            state, value = optuna.trial.TrialState.PRUNED, None
            attrs["pruned_at_iteration"] = reached
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=retry["params"],
            distributions=retry["distributions"], user_attrs=attrs,
            intermediate_values=retry["values"]))
        self.state.mark_finished(trial_id)

    @property
    def state(self) -> OptunaSearchState:
        # made per use, never stored: Tune pickles the searcher's __dict__ to resume it
        return OptunaSearchState(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._retried:
            self._retry_result(trial_id, result)
            return
        if self.state.finished(trial_id) or self.metric not in result:
            return
        step = int(result[TIME_ATTR])
        steps = self._reported.setdefault(trial_id, set())
        if step not in steps:  # a resumed trial repeats the steps after its checkpoint
            self.state.trial(trial_id).report(result[self.metric], step)
            steps.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._retried:
            self._retry_end(trial_id, result, error)
            return
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
    url = optuna_storage_url(space)
    # a server (PostgreSQL, MySQL) may drop idle connections during a long sweep
    storage = optuna.storages.RDBStorage(
        url, engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True})
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


def fail_running(space: SearchSpaceFile, reason: str, note: str = "stopped_by") -> list[int]:
    """Close the study's RUNNING trials as FAIL and note ``reason`` on the study (user
    attribute ``note``: ``stopped_by`` for a sweep that stopped on a fault or was
    interrupted; ``superseded`` for the orphans of a killed driver, trials Optuna opened
    after Ray last saved its state, whose suggestions the resumed sweep asked for again);
    returns their numbers."""
    url = optuna_storage_url(space)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []  # the sweep stopped before its study was created
    try:
        study = load_study(space)
    except KeyError:
        return []
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    if running or note == "stopped_by":
        study.set_user_attr(note, f"{reason}: trials {[t.number for t in running]}"
                            if note != "stopped_by" else reason)
    return [t.number for t in running]
