"""Names and values as MLflow takes them: legal metric/param/tag names, params cut to
MLflow's limits, the whitelist of a result's metrics, and the environment tags of a run.

Non-finite metric values are kept as they are: MLflow stores NaN as NaN and +-inf as the
largest finite double, which keeps a diverging trial visible in the UI instead of silently
dropping its last points.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import numbers
import os
import re
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from mllm4wtal.config import flatten
from mllm4wtal.sweep.mlflow_tags import (
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    MLFLOW_GIT_COMMIT_TAG,
    SEED_TAG,
    VERSION_TAG_PREFIX,
)

logger = logging.getLogger(__name__)

METRIC_PREFIXES = ("map/", "loss/", "test/")  # test/: a study cell's one test evaluation
METRIC_KEYS = ("iteration", "lr")
VERSION_PACKAGES = ("torch", "ray", "optuna", "mlflow", "mllm4wtal", "numpy")
SEED_KEY = "train.seed"
# the commit and dirty flag of the code, for runs whose working directory has no .git (set by
# jobs/submit_sweep.sh through the job's runtime environment)
GIT_COMMIT_ENV = "MLLM4WTAL_GIT_COMMIT"
GIT_DIRTY_ENV = "MLLM4WTAL_GIT_DIRTY"

# MLflow's limits (mlflow.utils.validation); kept here so values are cut the same way on
# every run and a re-attached run compares equal to what was logged before.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-./ ]")


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


def truncate(text: str, limit: int, keep: str = "head") -> str:
    """``text`` cut to ``limit`` characters with a marker, keeping its head (or its tail)."""
    if len(text) <= limit:
        return text
    marker = "...[truncated]"
    if keep == "tail":
        return marker + text[-(limit - len(marker)):]
    return text[:limit - len(marker)] + marker


def tag_value(value: Any) -> str:
    """How a tag value is written (cut to MLflow's 8000 characters)."""
    return truncate(str(value), MAX_TAG_VALUE_LENGTH)


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param (tuples like lists, cut to 6000)."""
    if isinstance(value, tuple):
        value = list(value)
    return truncate(str(value), MAX_PARAM_VALUE_LENGTH)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Dotted config keys (nested dicts are flattened) to MLflow-legal names and strings."""
    out: dict[str, str] = {}
    for key, value in sorted(flatten(params).items()):
        out.setdefault(mlflow_name(key), param_value(value))
    return out


def as_float(value: Any) -> float | None:
    """A real number (not a bool) as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def result_metrics(result: Mapping[str, Any], *, label: str = "") -> dict[str, float]:
    """The whitelisted metrics of a Ray Tune result, by MLflow-legal name.

    Top-level keys starting with ``map/`` or ``loss/``, ``iteration`` and ``lr`` whose values
    are real numbers (the training loop reports flat metrics; Ray's nested ``config`` is not
    a metric); two keys that map to one name keep the first (sorted) and a warning names the
    other.
    """
    logged: dict[str, float] = {}
    for key in sorted(result):
        value = as_float(result[key])
        if value is None or not (key.startswith(METRIC_PREFIXES) or key in METRIC_KEYS):
            continue
        name = mlflow_name(key)
        if name in logged:
            logger.warning("%s: metric '%s' maps to '%s', already logged; skipped", label,
                           key, name)
            continue
        logged[name] = value
    return logged


def git_output(where: Path, *args: str) -> str | None:
    """``git -C where args``'s stdout, or None when that is no git checkout (or no git)."""
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def git_state(where: Path | None = None) -> tuple[str, str]:
    """``(commit, dirty)`` of the checkout at ``where`` (default: the one this package runs
    from); ``dirty`` is ``true`` when tracked files differ from the commit or untracked ones
    exist (they are shipped and run too). Where there is no checkout, e.g. the working
    directory of a ``ray job submit`` (it leaves ``.git`` out), what the submitter passed in
    ``$MLLM4WTAL_GIT_COMMIT`` / ``$MLLM4WTAL_GIT_DIRTY``; else ``unknown``."""
    here = where or Path(__file__).resolve().parent
    commit = (git_output(here, "rev-parse", "HEAD") or "").strip()
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        status = git_output(here, "status", "--porcelain")
        return commit, "unknown" if status is None else str(bool(status.strip())).lower()
    commit = os.environ.get(GIT_COMMIT_ENV, "")
    dirty = os.environ.get(GIT_DIRTY_ENV, "")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return "unknown", "unknown"
    return commit, dirty if dirty in ("true", "false") else "unknown"


def git_commit() -> str:
    """The commit of the code that runs (:func:`git_state`), else ``unknown``."""
    return git_state()[0]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def environment_tags() -> dict[str, str]:
    """Tags on every run of a sweep: the git commit and the versions that matter."""
    commit, dirty = git_state()
    tags = {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: dirty}
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT_TAG] = commit
    tags.update({f"{VERSION_TAG_PREFIX}{p}": _version(p) for p in VERSION_PACKAGES})
    return tags


def seed_tags(params: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"seed": ...}`` when the config sets ``train.seed``."""
    flat = flatten(params or {})
    return {SEED_TAG: str(flat[SEED_KEY])} if SEED_KEY in flat else {}
