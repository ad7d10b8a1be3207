"""Read an MLflow experiment of the platform back: a study (``mllm4wtal ablate``) or a sweep.

Both have one parent run per study/sweep (tag ``mllm4wtal.role = parent``) and one child run
per trial (``mllm4wtal.role = trial``) holding the flattened training config as params and
the evaluation metrics with ``step = iteration``. An ablation's children carry the tags
``study``, ``variant`` and ``seed`` and its parent the resolved study (``study.json``
artifact: variants in table order, reference rows, the paper's figures). A sweep's children
are its trials; the report groups those with the same config (but the seed) into one row.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from mllm4wtal.config import did_you_mean
from mllm4wtal.errors import UserError
from mllm4wtal.sweep.ablate import STUDY_JSON
from mllm4wtal.sweep.mlflow_store import check_server, normalize_tracking_uri, search_runs
from mllm4wtal.sweep.mlflow_tags import (
    PARENT_TAG,
    PRUNED_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRIAL,
    SEED_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    VARIANT_TAG,
)

DEFAULT_STORES = ("sweeps/mlflow.db",)
_TIOU_RE = re.compile(r"^map/([0-9]+(?:\.[0-9]+)?)$")


@dataclass
class RunInfo:
    """One trial run of the experiment."""

    run_id: str
    trial_id: str
    variant: str | None  # an ablation's variant (tag), None for a sweep trial
    seed: int | None
    status: str  # FINISHED / FAILED / KILLED / RUNNING
    pruned: bool
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric (the last evaluation)
    tags: dict[str, str]

    @property
    def finished(self) -> bool:
        """Trained to the end: FINISHED and not stopped by a scheduler."""
        return self.status == "FINISHED" and not self.pruned


@dataclass
class ExperimentData:
    name: str
    experiment_id: str
    tracking_uri: str
    kind: str  # "ablation" or "sweep"
    title: str  # the study's or sweep's name
    study: dict[str, Any] | None  # an ablation's study.json
    parent_run_id: str | None  # the parent the report's artifacts go to
    parent_tags: dict[str, str]
    runs: list[RunInfo]  # every trial run, oldest first
    client: Any = field(repr=False)
    parent_metrics: dict[str, float] = field(default_factory=dict)  # a sweep's select/, test/
    _histories: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict,
                                                                        repr=False)

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of a metric of a run, by step (cached)."""
        if (run_id, key) not in self._histories:
            pts = {m.step: float(m.value) for m in self.client.get_metric_history(run_id, key)}
            self._histories[(run_id, key)] = sorted(pts.items())
        return self._histories[(run_id, key)]

    def tious(self) -> tuple[float, ...]:
        """The tIoUs of the experiment's mAP columns (the study's, else the logged ones)."""
        if self.study and self.study.get("tious"):
            return tuple(float(t) for t in self.study["tious"])
        found: set[float] = set()
        for r in self.finished or self.runs:
            for key in r.metrics:
                m = _TIOU_RE.match(key)
                if m:
                    found.add(float(m.group(1)))
        return tuple(sorted(found))

    def download(self, run_id: str, name: str, dst: Path) -> Path | None:
        """An artifact of a run, or None when the run has none of that name."""
        try:
            names = {a.path for a in self.client.list_artifacts(run_id)}
        except Exception:
            return None
        if name not in names:
            return None
        dst.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars
        return Path(self.client.download_artifacts(run_id, name, str(dst)))


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``--tracking-uri`` as given (a bare path: a sqlite file, or a folder holding
    ``mlflow.db``), else ``$MLFLOW_TRACKING_URI``, else ``./sweeps/mlflow.db`` (where
    ``sweep`` and ``ablate`` put it by default). A local store that does not exist is an
    error, not a new empty store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        for candidate in DEFAULT_STORES:
            if Path(candidate).is_file():
                uri = candidate
                break
        else:
            raise UserError("no MLflow store given and none at ./sweeps/mlflow.db; pass "
                            "--tracking-uri (the URI `mllm4wtal ablate`/`sweep` printed, or "
                            "the path of its mlflow.db)")
    uri = normalize_tracking_uri(uri, Path.cwd())
    if uri.startswith(("http://", "https://")):
        try:
            check_server(uri)
        except UserError:  # its fix names the sweep's key; here it is --tracking-uri
            raise UserError(f"MLflow tracking server '{uri}' is not reachable; start it, or "
                            "pass --tracking-uri with the path of the mlflow.db the study or "
                            "sweep wrote") from None
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise UserError(f"no MLflow store at {path}; pass --tracking-uri with the store "
                            "the study or sweep wrote (e.g. sweeps/mlflow.db)")
    return uri


def _seed(run: Any) -> int | None:
    raw = run.data.tags.get(SEED_TAG, run.data.params.get("train.seed"))
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def read_experiment(name: str, tracking_uri: str | None = None, study: str | None = None
                    ) -> ExperimentData:
    """Every trial run of the MLflow experiment ``name`` and what the report needs besides.

    ``study`` picks one study when the experiment holds runs of several."""
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"MLflow store {uri} has no experiment '{name}'"
                        f"{did_you_mean(name, names)} (experiments: {', '.join(names)})")
    runs = search_runs(client, exp.experiment_id)
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL
                or (PARENT_TAG in r.data.tags and r.data.tags.get(ROLE_TAG) != ROLE_PARENT)]
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_PARENT]
    if not children:
        raise UserError(f"experiment '{name}' in {uri} has no trial runs (made by "
                        "`mllm4wtal ablate` or `mllm4wtal sweep`); nothing to report")
    studies = sorted({r.data.tags[STUDY_TAG] for r in children
                      if STUDY_TAG in r.data.tags and VARIANT_TAG in r.data.tags})
    kind = "ablation" if studies else "sweep"
    title = name
    study_def = None
    if kind == "ablation":
        if study is not None:
            if study not in studies:
                raise UserError(f"experiment '{name}' holds no runs of study '{study}' "
                                f"(studies: {', '.join(studies)})")
            studies = [study]
        if len(studies) > 1:
            raise UserError(f"experiment '{name}' holds runs of the studies "
                            f"{', '.join(studies)}; pick one with --study")
        title = studies[0]
        children = [r for r in children if r.data.tags.get(STUDY_TAG) == title]
        parents = [p for p in parents if p.data.tags.get(STUDY_TAG) == title]
    elif parents:
        title = parents[-1].data.tags.get(SWEEP_TAG, name)
    parent = parents[-1] if parents else None
    data = ExperimentData(
        name=name, experiment_id=exp.experiment_id, tracking_uri=uri, kind=kind, title=title,
        study=None, parent_run_id=parent.info.run_id if parent else None,
        parent_tags=dict(parent.data.tags) if parent else {},
        parent_metrics=dict(parent.data.metrics) if parent else {},
        runs=[RunInfo(run_id=r.info.run_id,
                      trial_id=r.data.tags.get(TRIAL_TAG, r.info.run_name or r.info.run_id),
                      variant=r.data.tags.get(VARIANT_TAG) if kind == "ablation" else None,
                      seed=_seed(r), status=r.info.status,
                      pruned=r.data.tags.get(PRUNED_TAG) == "true",
                      start_time=int(r.info.start_time or 0), params=dict(r.data.params),
                      metrics={k: float(v) for k, v in r.data.metrics.items()
                               if v is not None and math.isfinite(float(v))},
                      tags=dict(r.data.tags))
              for r in children],
        client=client)
    if kind == "ablation" and parent is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = data.download(parent.info.run_id, STUDY_JSON, Path(tmp))
            if path is not None:
                study_def = json.loads(path.read_text())
    data.study = study_def
    return data


__all__ = ["RunInfo", "ExperimentData", "read_experiment", "resolve_tracking_uri"]
