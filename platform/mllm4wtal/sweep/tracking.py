"""MLflow tracking of a sweep, written only from the Ray Tune driver.

Every MLflow write of a sweep happens in the driver process: :class:`MlflowTuneCallback` is a
``ray.tune.Callback`` and Ray calls its hooks in the driver's tuning loop, one at a time, so
concurrent trials never race on the tracking store (a sqlite file in particular). Trials
themselves never import or call MLflow. All calls go through an explicit
``mlflow.MlflowClient``; the global ``mlflow.start_run`` state is never used.

Layout in the store: one *parent* run per sweep, its id kept in
``<experiment_dir>/mlflow_parent_run.json`` so that a resumed sweep re-attaches to it, and one
*child* run per Ray trial (tags ``mlflow.parentRunId`` and ``trial_id``, run name = trial id),
found again by those tags when the sweep resumes. Children hold the flattened training config
as params, whitelisted metrics (``map/*``, ``loss/*``, ``iteration``, ``lr``) with
``step = iteration``, and on their end the tags ``pruned``/``pruned_at_iteration``/``error``.

Non-finite metric values are logged as they are: MLflow stores NaN as NaN and +-inf as the
largest finite double, which keeps a diverging trial visible in the UI instead of silently
dropping its last points.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import numbers
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from ray.tune import Callback

from mllm4wtal.errors import UserError

logger = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run.json"
ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "trial_id"
ROLE_TAG = "mllm4wtal.role"
METRIC_PREFIXES = ("map/", "loss/")
METRIC_KEYS = ("iteration", "lr")
TRIAL_ARTIFACTS = ("best.pt", "predictions.json", "config.yaml", "metrics.jsonl")
VERSION_PACKAGES = ("torch", "ray", "optuna", "mlflow", "mllm4wtal", "numpy")
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
END_TAGS = ("pruned", "pruned_at_iteration", "last_iteration", "error")
SEED_KEY = "train.seed"

# MLflow's limits (mlflow.utils.validation); kept here so values are cut the same way on
# every run and a re-attached run compares equal to what was logged before.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-./ ]")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---------------------------------------------------------------------------------------------
# names, values, environment


def mlflow_name(key: str) -> str:
    """A metric/param/tag name MLflow accepts on every platform, derived deterministically.

    ``@`` becomes ``_at_`` (``map@0.5`` -> ``map_at_0.5``); any other character outside
    letters, digits, ``_ - . /`` and space becomes ``_`` (colons too: Windows refuses them);
    empty, ``.`` and ``..`` path segments are dropped or escaped, since MLflow refuses names
    that normalise to another path; names over 250 characters keep a prefix and a hash.
    Legal names are returned unchanged.
    """
    name = _ILLEGAL.sub("_", str(key).replace("@", "_at_"))
    parts = [p if p != ".." else "__" for p in name.split("/") if p not in ("", ".")]
    name = "/".join(parts) or "_"
    if len(name) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_KEY_LENGTH - 9]}-{digest}"
    return name


def _truncate(text: str, limit: int, keep: str = "head") -> str:
    if len(text) <= limit:
        return text
    marker = "...[truncated]"
    if keep == "tail":
        return marker + text[-(limit - len(marker)):]
    return text[:limit - len(marker)] + marker


def _flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}{sep}", sep))
        else:
            out[f"{prefix}{key}"] = value
    return out


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param (tuples like lists, cut to 6000)."""
    if isinstance(value, tuple):
        value = list(value)
    return _truncate(str(value), MAX_PARAM_VALUE_LENGTH)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Dotted config keys (nested dicts are flattened) to MLflow-legal names and strings."""
    out: dict[str, str] = {}
    for key, value in sorted(_flatten(params).items()):
        out.setdefault(mlflow_name(key), param_value(value))
    return out


def _is_metric_key(key: str) -> bool:
    return key.startswith(METRIC_PREFIXES) or key in METRIC_KEYS


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the repository the ``mllm4wtal`` package runs from, else ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def environment_tags() -> dict[str, str]:
    """Tags on every run of a sweep: the git commit and the versions that matter."""
    commit = git_commit()
    tags = {"git_commit": commit}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    tags.update({f"version.{p}": _version(p) for p in VERSION_PACKAGES})
    return tags


def _seed_tags(params: Mapping[str, Any] | None) -> dict[str, str]:
    flat = _flatten(params or {})
    return {"seed": str(flat[SEED_KEY])} if SEED_KEY in flat else {}


# ---------------------------------------------------------------------------------------------
# the store


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


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def _check_server(uri: str) -> None:
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
    experiment keeps the artifact location it was created with.
    """
    if not experiment or not str(experiment).strip():
        raise UserError("mlflow.experiment must be a non-empty name")
    experiment_dir = Path(experiment_dir).resolve()
    experiment_dir.mkdir(parents=True, exist_ok=True)
    uri = normalize_tracking_uri(tracking_uri, experiment_dir)
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    artifact_location = ((experiment_dir / ARTIFACT_DIR).as_uri() if _is_local_store(uri)
                         else None)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                return uri, client.create_experiment(experiment,
                                                     artifact_location=artifact_location)
            except MlflowException as e:  # created concurrently by another sweep
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise e from None
        if exp.lifecycle_stage == "deleted":
            logger.warning("restoring deleted MLflow experiment '%s'", experiment)
            client.restore_experiment(exp.experiment_id)
        return uri, exp.experiment_id
    except MlflowException as e:
        raise UserError(f"MLflow tracking store '{uri}': cannot open experiment "
                        f"'{experiment}': {e.message}; fix mlflow.tracking_uri") from None


# ---------------------------------------------------------------------------------------------
# the tracker


class SweepTracker:
    """The parent run of one sweep and the child run of each of its trials.

    Creating a tracker on an ``experiment_dir`` that already holds ``mlflow_parent_run.json``
    re-attaches to that parent run (``resumed`` is then True, and the parent is RUNNING again);
    otherwise a new parent run is created and its id written there. Child runs are found
    again by their ``trial_id`` tag, never duplicated.

    The tracker pickles as its constructor arguments (Ray Tune stores the callbacks of a
    sweep in ``tuner.pkl``); an unpickled tracker re-attaches to the same parent on first use.
    """

    def __init__(self, experiment_dir: Path, experiment: str = "mllm4wtal",
                 tracking_uri: str | None = None, *, sweep_name: str | None = None,
                 base_params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        self.experiment_dir = Path(experiment_dir).resolve()
        self.experiment = experiment
        self.sweep_name = sweep_name or self.experiment_dir.name
        self.base_params = dict(base_params or {})
        self.extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.tracking_uri, self.experiment_id = prepare_store(tracking_uri, experiment,
                                                              self.experiment_dir)
        self._reset()
        self._attach()

    # -- pickling: constructor arguments only; re-attach lazily ------------------------------

    def _reset(self) -> None:
        self._client: mlflow.MlflowClient | None = None
        self._parent_run_id: str | None = None
        self._children: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self.resumed = False

    def __getstate__(self) -> dict[str, Any]:
        keep = ("experiment_dir", "experiment", "sweep_name", "base_params", "extra_tags",
                "tracking_uri", "experiment_id")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> mlflow.MlflowClient:
        if self._client is None:
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def parent_run_id(self) -> str:
        if self._parent_run_id is None:
            self._attach()
        assert self._parent_run_id is not None
        return self._parent_run_id

    @property
    def parent_file(self) -> Path:
        return self.experiment_dir / PARENT_RUN_FILE

    def _base_tags(self, params: Mapping[str, Any] | None) -> dict[str, str]:
        return {**environment_tags(), **_seed_tags(params), **self.extra_tags}

    def _attach(self) -> None:
        path = self.parent_file
        if path.exists():
            self._parent_run_id = self._reattach_parent(path)
            self.resumed = True
            self._children = self._search_children()
            return
        tags = {**self._base_tags(self.base_params), ROLE_TAG: "parent",
                "sweep_dir": str(self.experiment_dir)}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_name, tags=tags)
        record = {"run_id": run.info.run_id, "experiment_id": self.experiment_id,
                  "experiment": self.experiment, "tracking_uri": self.tracking_uri}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
        self._parent_run_id = run.info.run_id
        self.resumed = False
        self._children = {}

    def _reattach_parent(self, path: Path) -> str:
        fix = (f"point mlflow.tracking_uri/experiment at the store this sweep started with, or "
               f"delete {path} to start a new parent run")
        try:
            run_id = str(json.loads(path.read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a parent-run record ({e}); {fix}") from None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise UserError(f"{path}: parent run {run_id} is not in the tracking store "
                            f"'{self.tracking_uri}'; {fix}") from None
        if run.info.experiment_id != self.experiment_id:
            raise UserError(f"{path}: parent run {run_id} belongs to experiment id "
                            f"{run.info.experiment_id}, not to '{self.experiment}' "
                            f"({self.experiment_id}); {fix}")
        if run.info.lifecycle_stage == "deleted":
            self.client.restore_run(run_id)
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _search(self, extra_filter: str = "") -> list[Any]:
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'" + extra_filter
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query,
                                           max_results=1000, order_by=["attributes.start_time ASC"],
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _search_children(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for run in self._search():  # oldest first: a duplicate (there should be none) loses
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is not None:
                found.setdefault(trial_id, run.info.run_id)
        return found

    def children(self) -> dict[str, str]:
        """``{trial_id: run_id}`` of every child run of the parent, read from the store."""
        self._children.update(self._search_children())
        return dict(self._children)

    def child_run_id(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            hits = self._search(f" and tags.`{TRIAL_TAG}` = '{trial_id}'")
            if hits:
                self._children[trial_id] = hits[0].info.run_id
        return self._children.get(trial_id)

    def _require(self, trial_id: str) -> str:
        run_id = self.child_run_id(trial_id)
        if run_id is None:
            raise KeyError(f"trial '{trial_id}' has no MLflow run; call trial_run first")
        return run_id

    # -- children --------------------------------------------------------------------------

    def trial_run(self, trial_id: str, params: Mapping[str, Any],
                  tags: Mapping[str, Any] | None = None) -> str:
        """The child run of a trial: created once, re-attached (status RUNNING) afterwards.

        ``params`` is the training config of the trial (dotted keys; nested dicts are
        flattened). They are logged in one ``log_batch``; on re-attach only missing keys are
        logged, since MLflow refuses to change a param (a changed value is named in the tag
        ``param_conflicts`` and a warning, and the logged value stays). ``tags`` are set on
        a new run besides the usual ones (an ablation's study, variant and seed).
        """
        trial_id = str(trial_id)
        flat = flatten_params(params)
        run_id = self.child_run_id(trial_id)
        existing: dict[str, str] = {}
        if run_id is None:
            tags = {**self._base_tags(params),
                    **{str(k): _truncate(str(v), MAX_TAG_VALUE_LENGTH)
                       for k, v in (tags or {}).items()},
                    PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, ROLE_TAG: "trial"}
            run = self.client.create_run(self.experiment_id, run_name=trial_id, tags=tags)
            run_id = run.info.run_id
            self._children[trial_id] = run_id
            self._last_step[trial_id] = -1
        else:
            run = self.client.get_run(run_id)
            existing = dict(run.data.params)
            if run.info.lifecycle_stage == "deleted":
                self.client.restore_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            for tag in END_TAGS:
                if tag in run.data.tags:
                    self.client.delete_tag(run_id, tag)
            if trial_id not in self._last_step:
                history = self.client.get_metric_history(run_id, "iteration")
                self._last_step[trial_id] = max((m.step for m in history), default=-1)
        conflicts = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if conflicts:
            logger.warning("trial %s: params %s differ from those logged before; MLflow keeps "
                           "the first values", trial_id, ", ".join(conflicts))
            self.client.set_tag(run_id, "param_conflicts",
                                _truncate(",".join(conflicts), MAX_TAG_VALUE_LENGTH))
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        if new:
            self.client.log_batch(run_id, params=new)
        return run_id

    def log_result(self, trial_id: str, result: Mapping[str, Any]) -> dict[str, float]:
        """Log the whitelisted metrics of one result at ``step = int(result["iteration"])``.

        Keys starting with ``map/`` or ``loss/``, ``iteration`` and ``lr`` (nested dicts are
        flattened with ``/``) whose values are real numbers; names made MLflow-legal by
        :func:`mlflow_name`. A step already logged for this trial (a resumed trial replaying
        the iterations after its checkpoint) is skipped. Returns what was logged.
        """
        trial_id = str(trial_id)
        run_id = self._require(trial_id)
        if result.get("iteration") is None:
            logger.warning("trial %s: result without 'iteration'; not logged", trial_id)
            return {}
        step = int(result["iteration"])
        if step <= self._last_step.get(trial_id, -1):
            return {}
        logged: dict[str, float] = {}
        flat = _flatten(result, sep="/")
        for key in sorted(flat):
            value = _as_float(flat[key])
            if value is None or not _is_metric_key(key):
                continue
            name = mlflow_name(key)
            if name in logged:
                logger.warning("trial %s: metric '%s' maps to '%s', already logged; skipped",
                               trial_id, key, name)
                continue
            logged[name] = value
        if logged:
            ts = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step)
                                                   for k, v in logged.items()])
        self._last_step[trial_id] = step
        return logged

    def end_trial(self, trial_id: str, status: str = "FINISHED", pruned: bool = False,
                  rung: int | None = None, error: str | None = None) -> None:
        """Tag a trial's end (``pruned``, ``pruned_at_iteration``, ``last_iteration``,
        ``error``, the message cut to MLflow's 8000 characters keeping its end, where the
        exception is) and set its status (FINISHED, FAILED or KILLED)."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        run_id = self._require(str(trial_id))
        tags = {"pruned": "true" if pruned else "false"}
        if rung is not None:
            tags["last_iteration"] = str(int(rung))
            if pruned:
                tags["pruned_at_iteration"] = str(int(rung))
        if error:
            tags["error"] = _truncate(error.strip(), MAX_TAG_VALUE_LENGTH, keep="tail")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def log_trial_artifacts(self, trial_id: str, run_dir: Path | None,
                            names: Iterable[str] = TRIAL_ARTIFACTS) -> list[str]:
        """Log ``best.pt``, ``predictions.json``, ``config.yaml``, ``metrics.jsonl`` of a
        trial's run directory, those present; returns the names logged."""
        if run_dir is None:
            return []
        run_id = self._require(str(trial_id))
        logged = []
        for name in names:
            path = Path(run_dir) / name
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
                logged.append(name)
        return logged

    def log_trial_file(self, trial_id: str, path: Path, name: str | None = None) -> None:
        """Log one file as an artifact of a trial's run (e.g. Ray's error file)."""
        run_id = self._require(str(trial_id))
        path = Path(path)
        if name is None or name == path.name:
            self.client.log_artifact(run_id, str(path))
            return
        self.client.log_text(run_id, path.read_text(errors="replace"), name)

    # -- parent ----------------------------------------------------------------------------

    def log_parent_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        self.client.log_batch(self.parent_run_id, metrics=[
            Metric(mlflow_name(k), float(v), ts, step) for k, v in metrics.items()])

    def set_parent_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.parent_run_id, tags=[
            RunTag(mlflow_name(k), _truncate(str(v), MAX_TAG_VALUE_LENGTH))
            for k, v in tags.items()])

    def log_parent_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_run_id, str(path), artifact_path)

    def running_trials(self) -> list[str]:
        """Trial ids whose child run is still RUNNING (interrupted, or not yet ended)."""
        return [run.data.tags.get(TRIAL_TAG, run.info.run_id)
                for run in self._search(" and attributes.status = 'RUNNING'")]

    def finish(self, status: str = "FINISHED") -> list[str]:
        """End the sweep: children still RUNNING become KILLED, then the parent gets
        ``status``. Returns the trial ids that were killed. A later tracker on the same
        experiment dir re-opens both."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        killed = []
        for run in self._search(" and attributes.status = 'RUNNING'"):
            self.client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.data.tags.get(TRIAL_TAG, run.info.run_id))
        self.client.set_terminated(self.parent_run_id, status=status)
        return killed


# ---------------------------------------------------------------------------------------------
# Ray Tune


def trial_error_message(trial: Any) -> str | None:
    """The last failure Ray recorded for a trial (its ``error.txt``, colours removed), else None.

    Ray appends ``Failure # n (occurred at ...)`` and ``str(exception)`` (a ``RayTaskError``
    whose text ends with the user's exception) to ``trial.error_file`` (on the driver, under
    ``trial.local_path``) before calling ``on_trial_error``; ``trial.get_error()`` reads the
    same file from the experiment's storage.
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
    return blocks[-1].strip() or text.strip()


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


# ---------------------------------------------------------------------------------------------
# the summary of a sweep


class TrialRecord(TypedDict, total=False):
    """One trial of a finished sweep, as :func:`write_summary` reads it."""

    trial_id: str
    config: dict[str, Any]   # the trial's overrides of the base config, dotted keys
    metric: float | None     # its final (reported) value of the sweep's metric
    iterations: int          # training iterations it ran
    pruned: bool
    status: str              # FINISHED / FAILED / KILLED
    wall_s: float            # its wall-clock seconds
    gpus: float              # GPUs it held (fractional)


def _finite(value: Any) -> float | None:
    v = _as_float(value)
    return v if v is not None and math.isfinite(v) else None


def rank_records(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Records with a finite metric, best first (``mode`` max or min); ties by trial id."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    scored = [r for r in records if _finite(r.get("metric")) is not None]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(scored, key=lambda r: (sign * float(r["metric"]),  # type: ignore[arg-type]
                                         str(r.get("trial_id"))))


def gpu_accounting(records: list[TrialRecord], total_iterations: int) -> dict[str, float]:
    """GPU hours used and saved by pruning, and trial-iterations with and without pruning.

    Saved: each pruned trial that ran ``run`` of ``total`` iterations in ``wall`` seconds on
    ``gpus`` GPUs would have needed ``wall * (total - run) / run`` more seconds.
    """
    used = saved = 0.0
    iters_used = iters_full = 0
    for r in records:
        wall, gpus = float(r.get("wall_s") or 0.0), float(r.get("gpus") or 0.0)
        run = int(r.get("iterations") or 0)
        used += wall * gpus
        iters_used += run
        if r.get("pruned") and 0 < run < total_iterations:
            saved += wall * (total_iterations - run) / run * gpus
            iters_full += total_iterations
        else:
            iters_full += run
    return {"gpu_hours_used": used / 3600.0, "gpu_hours_saved_by_pruning": saved / 3600.0,
            "trial_iterations_used": float(iters_used),
            "trial_iterations_without_pruning": float(iters_full)}


def _overrides_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = str(key).split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return tree


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def _top_table(ranked: list[TrialRecord], metric: str, mode: str, k: int) -> str:
    keys = sorted({key for r in ranked[:k] for key in (r.get("config") or {})})
    head = ["rank", "trial", f"{metric} ({mode})", "iterations", "pruned", "status",
            "wall s", *keys]
    lines = [f"# Top {min(k, len(ranked))} trials by `{metric}` ({mode})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(ranked[:k], 1):
        cfg = r.get("config") or {}
        row = [i, r.get("trial_id", ""), float(r["metric"]),  # type: ignore[arg-type]
               r.get("iterations", ""), "yes" if r.get("pruned") else "no",
               r.get("status", ""), float(r.get("wall_s") or 0.0),
               *[cfg.get(key, "") for key in keys]]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if not ranked:
        lines.append("")
        lines.append("No trial reported a finite value of the metric.")
    return "\n".join(lines) + "\n"


def param_importances(study: Any) -> dict[str, Any]:
    """Optuna's parameter importances, or a note saying why there are none."""
    if study is None:
        return {"importances": {}, "note": "no Optuna study (e.g. a grid or an ablation)"}
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"n_complete_trials": len(complete), "importances": {}}
    if len(complete) < 2:
        out["note"] = (f"{len(complete)} completed trial(s); importances need at least 2 "
                       "completed trials with varying parameters")
        return out
    try:
        imp = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:
        out["note"] = f"importances not computable: {e}"
        return out
    out["importances"] = {k: float(v) for k, v in imp.items()}
    if not imp:
        out["note"] = "no parameter varied across the completed trials"
    return out


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else as category indices (with the labels)."""
    nums = [_as_float(v) for v in values]
    if all(n is not None for n in nums):
        return [float(n) for n in nums], None  # type: ignore[arg-type]
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def plot_parallel_coordinates(records: list[TrialRecord], metric: str, mode: str,
                              path: Path) -> None:
    """One line per trial through its overrides and the metric (scaled to [0, 1] per axis),
    coloured by the metric; pruned trials dashed, trials without a value grey."""
    from matplotlib.figure import Figure

    keys = sorted({k for r in records for k in (r.get("config") or {})})
    axes = [*keys, metric]
    fig = Figure(figsize=(max(6.0, 1.6 * len(axes) + 2), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if not records:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        return
    columns: list[list[float]] = []
    for key in axes:
        raw = ([r.get("metric") for r in records] if key == metric
               else [(r.get("config") or {}).get(key) for r in records])
        ok = [v is not None and not (isinstance(v, float) and not math.isfinite(v))
              for v in raw]
        vals, labels = _axis_values([v for v, good in zip(raw, ok, strict=True) if good])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        log = labels is None and lo > 0 and hi / lo >= 100  # e.g. learning rates
        scaled = [math.log10(v) for v in vals] if log else vals
        s_lo, s_hi = (min(scaled), max(scaled)) if scaled else (0.0, 1.0)
        span = s_hi - s_lo if s_hi > s_lo else 1.0
        it = iter(scaled)
        columns.append([(next(it) - s_lo) / span if good else math.nan for good in ok])
        idx = axes.index(key)
        text = (f"{lo:.3g}..{hi:.3g}{' (log)' if log else ''}" if labels is None
                else ",".join(labels))
        ax.text(idx, -0.08, _truncate(text, 30), ha="center", va="top", fontsize=7)
    scores = [_finite(r.get("metric")) for r in records]
    finite = [s for s in scores if s is not None]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    from matplotlib import colormaps

    cmap = colormaps["viridis" if mode == "max" else "viridis_r"]
    xs = list(range(len(axes)))
    for i, r in enumerate(records):
        ys = [col[i] for col in columns]
        s = scores[i]
        color = "0.7" if s is None else cmap((s - lo) / (hi - lo) if hi > lo else 1.0)
        ax.plot(xs, ys, color=color, linestyle="--" if r.get("pruned") else "-",
                marker="o", markersize=3, linewidth=1.2, alpha=0.9)
    ax.set_xticks(xs)
    ax.set_xticklabels([_truncate(a, 24) for a in axes], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(-0.15, 1.05)
    ax.set_yticks([])
    for x in xs:
        ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
    ax.set_title(f"{len(records)} trials, colour = {metric} ({mode}); dashed = pruned",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def write_summary(tracker: SweepTracker, study: Any, records: list[TrialRecord],
                  out_dir: Path, *, metric: str, mode: str, total_iterations: int,
                  base: str | None = None, top_k: int = 10) -> dict[str, Any]:
    """Write the sweep's summary into ``out_dir`` and log it on the parent run.

    Files: ``best_config.yaml`` (a config YAML: ``base:`` plus the best trial's overrides,
    loadable by ``load_config``), ``top10.md``, ``param_importances.json``,
    ``parallel_coordinates.png`` and ``summary.json``. Parent metrics: ``gpu_hours_used``,
    ``gpu_hours_saved_by_pruning``, ``trial_iterations_used``,
    ``trial_iterations_without_pruning``, ``n_trials``, ``n_pruned``, ``n_failed`` and
    ``best/<metric>``; tags ``best_trial_id`` and ``sweep_metric``. Returns summary.json's
    content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = rank_records(records, mode)
    best = ranked[0] if ranked else None
    import yaml

    best_path = out_dir / "best_config.yaml"
    if best is not None:
        header = (f"# best trial {best.get('trial_id')} of sweep '{tracker.sweep_name}': "
                  f"{metric} = {float(best['metric']):.6g} ({mode})\n")  # type: ignore[arg-type]
        tree = _overrides_tree(best.get("config") or {})
        body = {"base": base, **tree} if base else tree
        best_path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    else:
        best_path.write_text(f"# no trial of sweep '{tracker.sweep_name}' reported a finite "
                             f"{metric}\n{{}}\n")
    (out_dir / "top10.md").write_text(_top_table(ranked, metric, mode, top_k))
    importances = param_importances(study)
    (out_dir / "param_importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    plot_parallel_coordinates(records, metric, mode, out_dir / "parallel_coordinates.png")

    numbers_ = gpu_accounting(records, total_iterations)
    numbers_.update({
        "n_trials": float(len(records)),
        "n_pruned": float(sum(1 for r in records if r.get("pruned"))),
        "n_failed": float(sum(1 for r in records if r.get("status") == "FAILED")),
    })
    summary: dict[str, Any] = {
        "metric": metric, "mode": mode, "total_iterations": int(total_iterations),
        "best_trial_id": best.get("trial_id") if best else None,
        "best_value": float(best["metric"]) if best else None,  # type: ignore[arg-type]
        "best_config": (best.get("config") or {}) if best else None,
        **numbers_,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    parent_metrics = dict(numbers_)
    if best is not None:
        parent_metrics[f"best/{metric}"] = float(best["metric"])  # type: ignore[arg-type]
    tracker.log_parent_metrics(parent_metrics)
    tracker.set_parent_tags({"best_trial_id": summary["best_trial_id"] or "none",
                             "sweep_metric": f"{metric} ({mode})"})
    for name in ("best_config.yaml", "top10.md", "param_importances.json",
                 "parallel_coordinates.png", "summary.json"):
        tracker.log_parent_artifact(out_dir / name)
    return summary
