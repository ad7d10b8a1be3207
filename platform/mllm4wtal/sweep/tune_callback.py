"""``MlflowTuneCallback``: Ray Tune's trial events -> the MLflow runs of ``SweepTracker``.

Every MLflow write of a sweep happens in the driver process: the callback is a
``ray.tune.Callback`` and Ray calls its hooks in the driver's tuning loop, one at a time, so
concurrent trials never race on the tracking store (a sqlite file in particular). Trials
themselves never import or call MLflow.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mllm4wtal.sweep.faults import traceback_reason
from mllm4wtal.sweep.tracker import SweepTracker

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


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
    is tagged as pruned at that iteration.

    Tracking never stops a sweep: an MLflow failure in a hook is logged as a warning
    (``strict=True`` raises instead, for tests). The sweep ends the parent run itself with
    ``tracker.finish(status)`` once ``Tuner.fit`` returns.
    """

    def __init__(self, tracker: SweepTracker, params_for: Callable[[dict], Mapping[str, Any]],
                 total_iterations: int,
                 run_dir_for: Callable[[Any], Path | None] | None = None,
                 strict: bool = False,
                 tags_for: Callable[[dict], Mapping[str, Any]] | None = None) -> None:
        self.tracker = tracker
        self.params_for = params_for
        self.tags_for = tags_for
        self.total_iterations = int(total_iterations)
        self.run_dir_for = run_dir_for
        self.strict = strict
        self._last_iteration: dict[str, int] = {}

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

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard("start", trial, lambda: self.tracker.trial_run(
            trial.trial_id, self.params_for(trial.config),
            self.tags_for(trial.config) if self.tags_for is not None else None))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get("iteration") is not None:
            self._last_iteration[trial.trial_id] = int(result["iteration"])
        self._guard("result", trial, lambda: self.tracker.log_result(trial.trial_id, result))

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
