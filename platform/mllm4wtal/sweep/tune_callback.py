"""``MlflowTuneCallback``: Ray Tune's trial events -> the MLflow runs of ``SweepTracker``.

Every MLflow write of a sweep happens in the driver process: the callback is a
``ray.tune.Callback`` and Ray calls its hooks in the driver's tuning loop, one at a time, so
concurrent trials never race on the tracking store (a sqlite file in particular). Trials
themselves never import or call MLflow.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mllm4wtal.sweep.faults import traceback_reason
from mllm4wtal.sweep.mlflow_names import as_float
from mllm4wtal.sweep.mlflow_tags import (
    DEVICE_TAG,
    GPU_IDS_TAG,
    NODE_ID_TAG,
    NODE_IP_TAG,
    TRIAL_NUMBER_TAG,
)
from mllm4wtal.sweep.mlflow_view import ray_trial_number, run_name
from mllm4wtal.sweep.records import trial_score
from mllm4wtal.sweep.tracker import SweepTracker
from mllm4wtal.sweep.trainable import PLACEMENT

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: a trial's ``placement`` (``sweep.trainable``) -> the tags of its run
PLACEMENT_TAGS = {"node_id": NODE_ID_TAG, "node_ip": NODE_IP_TAG, "gpu_ids": GPU_IDS_TAG,
                  "device": DEVICE_TAG}


def trial_error_message(trial: Any) -> str | None:
    """The reason of the last failure Ray recorded for a trial, one line (``Type:
    message``, from its ``error.txt``, colours removed), else None.

    Ray appends ``Failure # n (occurred at ...)`` and ``str(exception)`` (a ``RayTaskError``
    whose text ends with the user's exception) to ``trial.error_file`` (on the driver, under
    ``trial.local_path``) before calling ``on_trial_error``; ``trial.get_error()`` reads the
    same file from the experiment's storage. The whole text is logged as an artifact.
    """
    text = None
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    else:
        try:
            text = trial.get_error()
        except Exception:  # storage may be gone; the message is a nicety
            text = None
    if not text:
        return None
    text = _ANSI.sub("", str(text))
    blocks = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", text, flags=re.M)
    return traceback_reason(blocks[-1]) or traceback_reason(text) or None


class MlflowTuneCallback(Callback):
    """Mirror a Ray Tune run into MLflow, from the driver.

    ``params_for(trial.config)`` turns Ray's sampled config into the flat training config
    that is logged as params; ``run_dir_for(trial)`` names the training run directory of a
    trial (for its artifacts) or None; ``tags_for(trial.config)`` gives extra tags of a
    trial's run (an ablation's study, variant, seed). A trial that completes with its last
    reported ``iteration`` below ``total_iterations`` was stopped by the scheduler (ASHA) and
    is tagged as pruned at that iteration. Runs are named ``trial <n>: <sampled values>``
    (``n``: Ray's count of the trial) or, for a study's cell, ``<variant> seed <n>``.

    With ``metric``, every result also logs the trial's score so far as
    ``<score>/<metric>`` (``score`` ``best``: its best value by ``mode`` yet; ``last``: this
    one); a re-attached trial goes on from the last score its run holds. At the start the
    experiment gets a saved view in MLflow's UI: the sweep's runs best first on that score,
    with ``view_params`` as columns (``tracker.show_runs``; ``tracker.runs_url`` opens it).

    A result's ``placement`` (``sweep.trainable.placement``: Ray's node id and IP, the GPU
    ids Ray assigned, the device trained on) becomes the tags ``ray.node_id``,
    ``ray.node_ip``, ``ray.gpu_ids`` and ``device`` of the run, set again when a retried
    trial reports from another node.

    Tracking never stops a sweep: an MLflow failure in a hook is logged as a warning
    (``strict=True`` raises instead, for tests). The sweep ends the parent run itself with
    ``tracker.finish(status)`` once ``Tuner.fit`` returns.
    """

    def __init__(self, tracker: SweepTracker, params_for: Callable[[dict], Mapping[str, Any]],
                 total_iterations: int,
                 run_dir_for: Callable[[Any], Path | None] | None = None,
                 strict: bool = False,
                 tags_for: Callable[[dict], Mapping[str, Any]] | None = None, *,
                 metric: str | None = None, mode: str = "max", score: str = "best",
                 view_params: Sequence[str] = ()) -> None:
        if mode not in ("max", "min") or score not in ("best", "last"):
            raise ValueError(f"mode must be max or min and score best or last, not {mode!r}, "
                             f"{score!r}")
        self.tracker = tracker
        self.params_for = params_for
        self.tags_for = tags_for
        self.total_iterations = int(total_iterations)
        self.run_dir_for = run_dir_for
        self.strict = strict
        self.metric, self.mode, self.score = metric, mode, score
        self.view_params = list(view_params)
        self._last_iteration: dict[str, int] = {}
        self._score: dict[str, float] = {}  # a trial's score so far
        self._seeded: set[str] = set()  # trials whose score went on from their run
        self._placed: dict[str, dict] = {}  # the placement each trial's tags hold

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a sweep started by an older version resumes with the callback it pickled
        defaults = {"metric": None, "mode": "max", "score": "best", "view_params": [],
                    "_score": {}, "_seeded": set(), "_placed": {}}
        self.__dict__.update({**defaults, **state})

    @property
    def score_key(self) -> str | None:
        """``best/<metric>`` or ``last/<metric>``: the score's MLflow metric."""
        return f"{self.score}/{self.metric}" if self.metric else None

    def _guard(self, what: str, trial: Any, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            if self.strict:
                raise
            logger.warning("MLflow tracking failed (%s of trial %s); the sweep goes on",
                           what, trial.trial_id, exc_info=True)
            return None

    def _last(self, trial: Any) -> int | None:
        last = trial.last_result.get("iteration") if trial.last_result else None
        if last is None:
            return self._last_iteration.get(trial.trial_id)
        return int(last)

    def _artifacts(self, trial: Any) -> None:
        if self.run_dir_for is None:
            return
        run_dir = self.run_dir_for(trial)
        if run_dir is not None:
            self.tracker.log_trial_artifacts(trial.trial_id, Path(run_dir))

    def setup(self, **info: Any) -> None:
        key = self.score_key
        if key is None:
            return
        try:
            self.tracker.show_runs(key, self.mode, [key, f"test/{self.metric}"],
                                   self.view_params)
        except Exception:
            if self.strict:
                raise
            logger.warning("MLflow: could not save the runs view; the sweep goes on",
                           exc_info=True)

    def _start(self, trial: Any) -> None:
        tags = dict(self.tags_for(trial.config)) if self.tags_for is not None else {}
        number = ray_trial_number(trial)
        if number is not None:
            tags.setdefault(TRIAL_NUMBER_TAG, number)
        self.tracker.trial_run(trial.trial_id, self.params_for(trial.config), tags,
                               run_name=run_name(trial, tags))
        self._resume_score(trial.trial_id)

    def _resume_score(self, trial_id: str) -> None:
        """Once per trial: go on from the score its run holds (a resumed sweep)."""
        key = self.score_key
        if key is None or trial_id in self._seeded:
            return
        self._seeded.add(trial_id)
        if trial_id not in self._score:
            before = self.tracker.last_value(trial_id, key)
            if before is not None:
                self._score[trial_id] = before

    def _score_so_far(self, trial_id: str, result: Mapping[str, Any]) -> dict[str, float]:
        key = self.score_key
        value = as_float(result.get(self.metric)) if key is not None else None
        if key is None or value is None:
            return {}
        self._resume_score(trial_id)
        before = self._score.get(trial_id)
        values = [value] if before is None else [before, value]
        self._score[trial_id] = trial_score(values, self.mode, self.score)
        return {key: self._score[trial_id]}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # writes queued while the MLflow server was down also go out when no trial reports
        self.tracker.sync()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard("start", trial, lambda: self._start(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get("iteration") is not None:
            self._last_iteration[trial.trial_id] = int(result["iteration"])
        self._guard("result", trial, lambda: self.tracker.log_result(
            trial.trial_id, result, self._score_so_far(trial.trial_id, result)))
        self._guard("placement", trial, lambda: self._tag_placement(trial.trial_id, result))

    def _tag_placement(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """The node and GPUs of the trial as tags of its run, when they change (its first
        result, and the first after a retry on another node)."""
        place = result.get(PLACEMENT)
        if not isinstance(place, Mapping) or self._placed.get(trial_id) == place:
            return
        tags = {tag: place[key] for key, tag in PLACEMENT_TAGS.items() if key in place}
        if self.tracker.log_run(trial_id, tags=tags):  # queued while MLflow is down
            self._placed[trial_id] = dict(place)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                          **info: Any) -> None:
        last = self._last(trial)
        pruned = last is not None and last < self.total_iterations

        def end() -> None:
            self._artifacts(trial)
            self.tracker.end_trial(trial.trial_id, "FINISHED", pruned=pruned, rung=last)
        self._guard("complete", trial, end)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        def end() -> None:
            self._artifacts(trial)
            path = getattr(trial, "error_file", None)
            if path and Path(path).is_file():
                self.tracker.log_trial_file(trial.trial_id, Path(path))
            self.tracker.end_trial(trial.trial_id, "FAILED", pruned=False,
                                   rung=self._last(trial), error=trial_error_message(trial))
        self._guard("error", trial, end)
