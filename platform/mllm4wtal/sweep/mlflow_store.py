"""The MLflow tracking store of a sweep or study: its URI, its experiment, reading runs back.

A local store is a sqlite file (``<experiment_dir>/mlflow.db`` unless told otherwise), its
artifacts under ``<experiment_dir>/mlartifacts``; a server (``http://``) is checked for
reachability in seconds before anything runs. All access goes through an explicit
``mlflow.MlflowClient``; the global ``mlflow.start_run`` state is never used.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from mllm4wtal.errors import UserError
from mllm4wtal.sweep.mlflow_names import mlflow_name, tag_value
from mllm4wtal.sweep.mlflow_tags import EXPERIMENT_KIND_TAG, KIND_TRAINING

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "mlartifacts"
OLDEST_FIRST = ("attributes.start_time ASC",)
PAGE_SIZE = 1000

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def default_tracking_uri(experiment_dir: Path) -> str:
    """``sqlite:///<absolute experiment_dir>/mlflow.db``."""
    return f"sqlite:///{(Path(experiment_dir).resolve() / 'mlflow.db').as_posix()}"


def normalize_tracking_uri(tracking_uri: str | None, experiment_dir: Path) -> str:
    """A tracking URI with local paths made absolute.

    ``None`` -> the sweep's own sqlite file; ``http(s)://`` and other schemes pass through;
    ``sqlite:///relative.db`` -> absolute; a bare path ending in ``.db``/``.sqlite`` -> a
    sqlite store there; any other bare path is a directory: an existing MLflow file store
    there (``file:`` URI; MLflow 3 only opens those with ``MLFLOW_ALLOW_FILE_STORE=true``,
    its message says so) or else ``<dir>/mlflow.db``.
    """
    if tracking_uri is None or not str(tracking_uri).strip():
        return default_tracking_uri(experiment_dir)
    uri = str(tracking_uri).strip()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve().as_posix()}"
        return uri
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        while path.startswith("//"):
            path = path[1:]
        return Path(path).expanduser().resolve().as_uri()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri):
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix in _SQLITE_SUFFIXES:
        return f"sqlite:///{path.as_posix()}"
    if (path / ".trash").is_dir() or (path / "0" / "meta.yaml").is_file():
        return path.as_uri()
    return f"sqlite:///{(path / 'mlflow.db').as_posix()}"


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def check_server(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a server is unreachable."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (auth or proxies may refuse /health): reachable
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"MLflow tracking server '{uri}' is not reachable ({e}); start it "
                        "(`mlflow server --host 127.0.0.1 --port 5000`) or set "
                        "mlflow.tracking_uri to a sqlite file or leave it empty") from None


def prepare_store(tracking_uri: str | None, experiment: str,
                  experiment_dir: Path) -> tuple[str, str]:
    """Create (or find) the tracking store and the experiment, in the driver, before any trial.

    Returns ``(tracking_uri, experiment_id)``, the URI with local paths made absolute. For
    local stores (sqlite, file) a new experiment keeps its artifacts under
    ``<experiment_dir>/mlartifacts``; a server chooses its own artifact location. An existing
    experiment keeps the artifact location it was created with. Either is marked as an
    experiment of training runs (:func:`ensure_training_kind`).
    """
    if not experiment or not str(experiment).strip():
        raise UserError("mlflow.experiment must be a non-empty name")
    experiment_dir = Path(experiment_dir).resolve()
    experiment_dir.mkdir(parents=True, exist_ok=True)
    uri = normalize_tracking_uri(tracking_uri, experiment_dir)
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    artifact_location = ((experiment_dir / ARTIFACT_DIR).as_uri() if is_local_store(uri)
                         else None)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(
                    experiment, artifact_location=artifact_location,
                    tags={EXPERIMENT_KIND_TAG: KIND_TRAINING})
                return uri, exp_id
            except MlflowException as e:  # created concurrently by another sweep
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise e from None
        if exp.lifecycle_stage == "deleted":
            logger.warning("restoring deleted MLflow experiment '%s'", experiment)
            client.restore_experiment(exp.experiment_id)
        ensure_training_kind(client, exp.experiment_id, exp.tags)
        return uri, exp.experiment_id
    except MlflowException as e:
        raise UserError(f"MLflow tracking store '{uri}': cannot open experiment "
                        f"'{experiment}': {e.message}; fix mlflow.tracking_uri") from None


def ensure_training_kind(client: mlflow.MlflowClient, experiment_id: str,
                         tags: Mapping[str, str]) -> None:
    """Tag an experiment as one of training runs (``mlflow.experimentKind``), which UIs that
    read the tag open on the runs instead of the GenAI traces; experiments made before the
    tag existed get it when their sweep resumes. Another kind is replaced, and said."""
    kind = tags.get(EXPERIMENT_KIND_TAG)
    if kind == KIND_TRAINING:
        return
    if kind:
        logger.info("MLflow experiment %s: kind '%s' -> '%s' (its runs are training runs)",
                    experiment_id, kind, KIND_TRAINING)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, KIND_TRAINING)


def search_runs(client: mlflow.MlflowClient, experiment_id: str, filter_string: str = "",
                order_by: Sequence[str] = OLDEST_FIRST) -> list[Any]:
    """Every run of the experiment that matches ``filter_string``, oldest first: all pages
    of ``MlflowClient.search_runs`` (one call returns at most a page)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=PAGE_SIZE, order_by=list(order_by),
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_run_metrics(client: mlflow.MlflowClient, run_id: str, metrics: Mapping[str, float],
                    step: int = 0) -> None:
    """Metrics of one run in one batch, names made MLflow-legal."""
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(mlflow_name(k), float(v), ts, step)
                                      for k, v in metrics.items()])


def set_run_tags(client: mlflow.MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Tags of one run in one batch, names made MLflow-legal, values cut to 8000."""
    client.log_batch(run_id, tags=[RunTag(mlflow_name(k), tag_value(v))
                                   for k, v in tags.items()])
