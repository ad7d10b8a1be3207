"""The end of a sweep: the trial chosen on ``select`` is evaluated once on ``test``.

A trial's score (its ``metric`` in :class:`TrialRecord`) is measured on the ``select``
videos; the best score chooses one trial, and only that trial's checkpoint (``best.pt`` for
``score: best``, ``last.pt`` for ``score: last``: the model its score describes) meets the
test videos, once. MLflow gets ``select/<metric>`` and ``test/<metric>`` side by side on the
parent run and the chosen child run, with the tag ``select_split`` saying what chose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mllm4wtal.data.splits import assign_roles, describe
from mllm4wtal.data.types import WTALDataset
from mllm4wtal.inference.evaluate import evaluate_on_test
from mllm4wtal.sweep.mlflow_tags import BEST_TRIAL_TAG, SELECT_SPLIT_TAG
from mllm4wtal.sweep.records import TrialRecord, rank_records
from mllm4wtal.sweep.tracker import SweepTracker

SELECT_PREFIX = "select/"


@dataclass
class ChosenTest:
    """The chosen trial, its score on ``select`` and its one evaluation on ``test``."""

    trial_id: str
    metric: str
    mode: str
    score: str  # best | last: which checkpoint was tested
    select_value: float
    select_split: str  # data.splits.describe
    checkpoint: str  # best.pt / last.pt
    test: dict[str, float]  # test/map/0.5, ..., test/<metric>

    @property
    def test_value(self) -> float | None:
        return self.test.get(f"test/{self.metric}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def test_chosen(records: list[TrialRecord], checkpoints: dict[str, Any], dataset: WTALDataset,
                *, metric: str, mode: str, score: str, data_config: Any) -> ChosenTest | None:
    """Evaluate the best-scored trial's checkpoint on ``test``; ``checkpoints`` maps trial
    ids to their Ray ``Checkpoint`` (local or remote storage). None when no trial scored."""
    ranked = [r for r in rank_records(records, mode) if r.get("trial_id") in checkpoints]
    if not ranked:
        return None
    best = ranked[0]
    name = "best.pt" if score == "best" else "last.pt"
    with checkpoints[best["trial_id"]].as_directory() as folder:
        tested = evaluate_on_test(Path(folder) / name, dataset)
    return ChosenTest(trial_id=best["trial_id"], metric=metric, mode=mode, score=score,
                      select_value=float(best["metric"]),  # type: ignore[arg-type]
                      select_split=describe(assign_roles(dataset, data_config)),
                      checkpoint=name, test=tested)


def log_chosen(tracker: SweepTracker, chosen: ChosenTest) -> None:
    """``select/<metric>`` and the ``test/*`` metrics on the parent run and the chosen child
    run; the tags name the chosen trial and the split that chose it."""
    metrics = {f"{SELECT_PREFIX}{chosen.metric}": chosen.select_value, **chosen.test}
    tags = {BEST_TRIAL_TAG: chosen.trial_id, SELECT_SPLIT_TAG: chosen.select_split}
    for trial_id in (None, chosen.trial_id):  # the parent, then the chosen trial's run
        tracker.log_run(trial_id, metrics, tags)
