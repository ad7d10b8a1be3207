"""How a sweep or study reads in MLflow's UI: run names a person can read, and a saved view
of the runs table that shows the trials ranked by the sweep's score, with the address that
opens it.

What decides the page (read off MLflow 3.17's UI bundle and checked in a browser by
``jobs/ui/check_mlflow_ui.py``):

- An experiment opens on its GenAI overview unless the address carries
  ``workflowType=machine_learning`` (the UI's "GenAI | Model training" switch, otherwise
  remembered per browser); UIs without that switch read the experiment tag
  ``mlflow.experimentKind`` instead (``mlflow_store.ensure_training_kind`` sets it).
- The runs table shows no metric column until one is chosen, per browser, unless the address
  names a saved view (``viewStateShareKey=<id>``): the experiment tag
  ``mlflow.sharedViewState.<id>`` = ``{name, createdAt, updatedAt, state}``, ``state`` the
  JSON of the table's search facets and column state. Within a group, metric columns are
  sorted by name; ``columnOrder`` orders the groups and gives widths. The view also appears
  in the page's "Views" menu.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow

from mllm4wtal.config import flatten
from mllm4wtal.sweep.mlflow_names import truncate
from mllm4wtal.sweep.mlflow_tags import (
    KIND_ABLATION,
    KIND_TAG,
    OUTCOME_TAG,
    SAVED_VIEW_TAG_PREFIX,
    SEED_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
)
from mllm4wtal.sweep.spaces.values import show

RUN_NAME_COLUMN = "attributes.`Run Name`"
RUN_NAME_WIDTH = 380  # pixels: "trial 12: lambda1=1.23 mask_ratio=0.333 ..." stays readable
METRIC_WIDTH = 170  # pixels: "best/map/avg_0.1-0.7" whole
MAX_RUN_NAME = 250  # MLflow's runs table column
MAX_VALUE = 30  # characters of one value in a run name
UI_PORT = 5000


# -- run names -------------------------------------------------------------------------------

def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last segment (``loss.lambda1`` -> ``lambda1``), with more
    segments where two keys would otherwise read the same (``ksm.dim``, ``csr.dim``)."""
    split = {k: str(k).split(".") for k in keys}
    out = {}
    for key, parts in split.items():
        n = 1
        while n < len(parts) and any(o != key and p[-n:] == parts[-n:] for o, p in split.items()):
            n += 1
        out[key] = ".".join(parts[-n:])
    return out


def compact(value: Any) -> str:
    """A value short: floats to 3 significant digits, YAML words for booleans and lists,
    at most 30 characters."""
    if isinstance(value, float):
        text = format(value, ".3g")
    else:
        text = value if isinstance(value, str) else show(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def trial_run_name(number: int | None, sampled: Mapping[str, Any]) -> str:
    """``trial 3: lambda1=1.2 mask_ratio=0.333``: the trial's number and sampled values
    (nested dicts by their dotted keys)."""
    head = "trial" if number is None else f"trial {number}"
    flat = flatten(dict(sampled))
    names = short_names(list(flat))
    body = " ".join(f"{names[k]}={compact(v)}" for k, v in flat.items())
    return truncate(f"{head}: {body}" if body else head, MAX_RUN_NAME)


def cell_run_name(variant: Any, seed: Any) -> str:
    """``<variant> seed <n>``: one cell of an ablation study."""
    return truncate(f"{variant} seed {seed}", MAX_RUN_NAME)


def ray_trial_number(trial: Any) -> int | None:
    """Ray's count of a trial, in creation order (the head of its ``experiment_tag``, e.g.
    ``3_loss.lambda1=1.2``: also in its folder name); None when Ray gave none."""
    match = re.match(r"(\d+)(?:_|$)", str(getattr(trial, "experiment_tag", "") or ""))
    return int(match.group(1)) if match else None


def run_name(trial: Any, tags: Mapping[str, Any]) -> str:
    """The run name of a Ray trial: a study's cell by its variant and seed (its tags), a
    sweep's trial by its number and sampled parameters (``trial.config``)."""
    if VARIANT_TAG in tags and SEED_TAG in tags:
        return cell_run_name(tags[VARIANT_TAG], tags[SEED_TAG])
    config = getattr(trial, "config", None) or {}
    return trial_run_name(ray_trial_number(trial), config)


# -- the saved view of the runs table --------------------------------------------------------

def metric_column(key: str) -> str:
    return f"metrics.`{key}`"


def param_column(key: str) -> str:
    return f"params.`{key}`"


def tag_column(key: str) -> str:
    return f"tags.`{key}`"


@dataclass(frozen=True)
class RunsView:
    """A saved view of an experiment's runs table: the runs ``search_filter`` finds, sorted
    on ``order_by``, with ``columns`` (MLflow column ids) right after the run's name."""

    view_id: str
    name: str
    search_filter: str
    order_by: str
    ascending: bool
    columns: tuple[str, ...]

    def state(self) -> dict[str, Any]:
        """The UI's state of the table (its search facets and column state)."""
        return {"searchFilter": self.search_filter, "orderByKey": self.order_by,
                "orderByAsc": self.ascending, "startTime": "ALL", "lifecycleFilter": "Active",
                "datasetsFilter": [], "modelVersionFilter": "All Runs",
                "selectedColumns": list(self.columns),
                "columnOrder": [RUN_NAME_COLUMN, *self.columns],
                "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH,
                                 **{c: METRIC_WIDTH for c in self.columns
                                    if c.startswith("metrics.")}},
                "runsExpanded": {}}

    def tag_value(self, created_ms: int, updated_ms: int) -> str:
        return json.dumps({"name": self.name, "createdAt": created_ms, "updatedAt": updated_ms,
                           "state": json.dumps(self.state())})


def runs_view(view_id: str, title: str, tags: Mapping[str, str], order_by: str, mode: str,
              metrics: Sequence[str], params: Sequence[str] = ()) -> RunsView:
    """The view of one sweep's (or study's) runs: those with its ``sweep`` (``study``) tag,
    best first on the ``order_by`` metric (``mode``), with the ``metrics`` columns first
    (``order_by`` among them: metric columns are sorted by name), how each run ended, a
    study's variant and seed, then ``params``."""
    kind = "study" if tags.get(KIND_TAG) == KIND_ABLATION else "sweep"
    name = tags.get(STUDY_TAG if kind == "study" else SWEEP_TAG, "")
    # a name a filter cannot quote leaves the filter out: all runs of the experiment
    where = (f"tags.`{STUDY_TAG if kind == 'study' else SWEEP_TAG}` = '{name}'"
             if name and "'" not in name else "")
    columns = [metric_column(m) for m in sorted(dict.fromkeys(metrics))]
    columns.append(tag_column(OUTCOME_TAG))  # beside the score: a pruned trial's is early
    if kind == "study":
        columns += [tag_column(VARIANT_TAG), tag_column(SEED_TAG)]
    columns += [param_column(p) for p in params]
    return RunsView(view_id=view_id, name=f"{kind} {title}: trials by {order_by}",
                    search_filter=where, order_by=metric_column(order_by),
                    ascending=mode == "min", columns=tuple(columns))


def save_view(client: mlflow.MlflowClient, experiment_id: str, view: RunsView) -> None:
    """Write (or rewrite, keeping its creation time) the view as an experiment tag."""
    key = SAVED_VIEW_TAG_PREFIX + view.view_id
    now = int(time.time() * 1000)
    created = now
    old = client.get_experiment(experiment_id).tags.get(key)
    if old:
        try:
            created = int(json.loads(old)["createdAt"])
        except (ValueError, KeyError, TypeError):
            pass
    client.set_experiment_tag(experiment_id, key, view.tag_value(created, now))


def ui_base(tracking_uri: str, port: int = UI_PORT) -> str:
    """Where the UI of a store is: the server itself, or ``mlflow ui`` on this machine."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def runs_url(base: str, experiment_id: str, view_id: str | None = None) -> str:
    """The address that opens an experiment on its runs table (MLflow 3.17 and later), in
    the saved view ``view_id`` when given."""
    query = f"viewStateShareKey={view_id}&" if view_id else ""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
            "workflowType=machine_learning")


def sweep_runs_url(tracking_uri: str, parent_run_id: str, port: int = UI_PORT,
                   client: mlflow.MlflowClient | None = None) -> str:
    """The address that opens a sweep's (or study's) experiment on its runs, in its saved
    view when there is one (its id is the parent run's: ``SweepTracker.show_runs``)."""
    client = client or mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    saved = SAVED_VIEW_TAG_PREFIX + parent_run_id in client.get_experiment(experiment_id).tags
    return runs_url(ui_base(tracking_uri, port), experiment_id,
                    parent_run_id if saved else None)
