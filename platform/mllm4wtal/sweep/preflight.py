"""What the start of a sweep (or study) would refuse, found before anything is written.

One function, :func:`check`, serves ``mllm4wtal sweep FILE --check`` and the real start
alike, so the two cannot disagree. It lists every problem, not the first:

- the experiment directory: a new sweep never reuses one that holds a sweep or a study (a
  study reuses its own, never a sweep's); it must be writable;
- the MLflow tracking store: a server must answer within seconds, a sqlite or file store's
  folder must be writable;
- the resources per trial must fit one node: without ``$RAY_ADDRESS`` that is this machine
  (``os.cpu_count()``, ``torch.cuda.device_count()``) or the Ray this process already runs;
  a cluster is only known once the sweep joins it, so there Ray checks them at the start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import ray

from mllm4wtal import files
from mllm4wtal.errors import UserError
from mllm4wtal.sweep.mlflow_store import check_server, normalize_tracking_uri
from mllm4wtal.sweep.runner import SPACE_COPY, STUDY_COPY
from mllm4wtal.sweep.spaces.sections import URI_RE

TRACKING_FIX = "mlflow.tracking_uri, or --tracking-uri"


class PreflightError(UserError):
    """The start of a sweep or study would be refused; the message has one line a problem."""


@dataclass(frozen=True)
class Capacity:
    """The most CPUs and GPUs one trial can get, and where that was measured."""

    cpus: float
    gpus: float
    where: str


@dataclass
class Preflight:
    """The problems the start would refuse, and what was checked and found fine."""

    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def refuse(self) -> None:
        """Raise :class:`PreflightError` naming every problem, if there is one."""
        if len(self.problems) == 1:
            raise PreflightError(self.problems[0])
        if self.problems:
            raise PreflightError("\n  ".join([f"{len(self.problems)} problems; nothing was "
                                               "started or written:", *self.problems]))

    def report(self) -> str:
        """What ``--check`` prints when nothing is refused."""
        lines = ["check: nothing the start would refuse"]
        lines += [f"  {line}" for line in self.passed]
        return "\n".join(lines)


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def cluster_address() -> str | None:
    """The Ray cluster a sweep started now would join (``ray_session.start_ray``), or None
    for a private Ray on this machine."""
    address = os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def capacity() -> Capacity | None:
    """The largest node a trial can run on: the Ray this process already runs, else this
    machine; None when the sweep will join a cluster (``$RAY_ADDRESS``)."""
    if ray.is_initialized():
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        return Capacity(cpus=max((n.get("CPU", 0.0) for n in nodes), default=0.0),
                        gpus=max((n.get("GPU", 0.0) for n in nodes), default=0.0),
                        where="the Ray this process runs")
    if cluster_address() is not None:
        return None
    import torch

    return Capacity(cpus=float(os.cpu_count() or 1), gpus=float(torch.cuda.device_count()),
                    where="this machine")


def experiment_problem(target: Any, resume: bool, study: bool, passed: list[str]
                       ) -> str | None:
    """The experiment directory is free (or this study's own), and writable."""
    exp_dir = str(target.experiment_dir)
    if URI_RE.match(exp_dir):
        passed.append(f"experiment directory: {exp_dir} (remote; not checked here)")
        return None
    exp = Path(exp_dir)
    at = f"{target.where}: {exp}"
    if not resume and (exp / SPACE_COPY).exists():
        if study:
            return (f"{at} holds the sweep '{target.name}'; give the study another name (key "
                    "`name:`) or storage (--storage)")
        return (f"{at} already holds the sweep '{target.name}'; continue it with `mllm4wtal "
                f"sweep --resume {exp}`, or give the new one another name (key `name:`) or "
                "storage (--storage)")
    if not resume and not study and (exp / STUDY_COPY).exists():
        return (f"{at} holds the ablation study '{target.name}'; give the sweep another name "
                "(key `name:`) or storage (--storage)")
    try:
        files.check_writable(exp, "--storage")
    except UserError as e:
        return f"{target.where}: storage: {e}"
    state = "continued" if resume or (exp / STUDY_COPY).exists() else "new"
    passed.append(f"experiment directory: {exp} ({state}, writable)")
    return None


def tracking_problem(target: Any, passed: list[str]) -> str | None:
    """The MLflow tracking store answers (server) or can be written (sqlite, file)."""
    uri = normalize_tracking_uri(target.mlflow.tracking_uri, Path(target.experiment_dir))
    where = f"{target.where}: mlflow.tracking_uri = {uri}"
    if uri.startswith(("http://", "https://")):
        try:
            check_server(uri)
        except UserError as e:
            return f"{where}: {e}"
        passed.append(f"MLflow: the server {uri} answers")
        return None
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = Path(uri.removeprefix("sqlite:///"))
    elif uri.startswith("file:"):
        path = Path(url2pathname(urlparse(uri).path))
    else:
        passed.append(f"MLflow: {uri} (not checked here)")
        return None
    try:
        files.check_writable(path, TRACKING_FIX)
    except UserError as e:
        return f"{where}: {e}"
    passed.append(f"MLflow: {uri} (writable)")
    return None


def resources_problems(target: Any, cap: Capacity | None, study: bool, passed: list[str]
                       ) -> list[str]:
    """Each trial's ``resources`` fit the largest node it can run on."""
    r = target.resources
    asked = f"{_count(r.cpu, 'CPU')} + {_count(r.gpu, 'GPU')} per trial"
    if cap is None:
        passed.append(f"resources: {asked}, checked when the {'study' if study else 'sweep'} "
                      f"joins the Ray cluster at {cluster_address()} (Ray warns after 60 s "
                      "when no node can hold a trial)")
        return []
    out = []
    how = "in the file" if study else "in the file, or --space-set resources.{key}={n:g}"
    if r.cpu > cap.cpus:
        out.append(f"{target.where}: resources.cpu = {r.cpu:g} per trial, but {cap.where} has "
                   f"{_count(cap.cpus, 'CPU')}; lower it to {cap.cpus:g} or less "
                   f"({how.format(key='cpu', n=cap.cpus)}) or run on a Ray cluster with "
                   "larger nodes (RAY_ADDRESS)")
    if r.gpu > cap.gpus:
        if cap.gpus == 0:
            has = (f"no GPU; set it to 0 ({how.format(key='gpu', n=0)}; train.device auto or "
                   "cpu)")
        else:
            has = (f"{_count(cap.gpus, 'GPU')}; lower it to {cap.gpus:g} or less "
                   f"({how.format(key='gpu', n=cap.gpus)})")
        out.append(f"{target.where}: resources.gpu = {r.gpu:g} per trial, but {cap.where} has "
                   f"{has} or run where GPUs are (RAY_ADDRESS)")
    if not out:
        fits = [int(cap.cpus // r.cpu) if r.cpu else None,
                int(cap.gpus // r.gpu) if r.gpu else None]
        at_once = min(n for n in fits if n is not None)
        passed.append(f"resources: {asked} fit {cap.where} ({_count(cap.cpus, 'CPU')}, "
                      f"{_count(cap.gpus, 'GPU')}: {at_once} at a time, max_concurrent "
                      f"{target.trials.max_concurrent})")
    return out


def check(target: Any, *, resume: bool = False, study: bool = False) -> Preflight:
    """Everything the start of ``target`` (a ``SearchSpaceFile``, or with ``study`` a
    ``Study``) would refuse; ``resume``: it continues its experiment directory."""
    result = Preflight()
    folder = experiment_problem(target, resume, study, result.passed)
    store = tracking_problem(target, result.passed)
    uri = target.mlflow.tracking_uri
    if folder and store and uri.startswith("sqlite:///") and \
            uri.removeprefix("sqlite:///").startswith(target.storage_path.rstrip("/") + "/"):
        store = None  # the store lies in the storage folder: one cause, said once
    found = [folder, store, *resources_problems(target, capacity(), study, result.passed)]
    result.problems = [p for p in found if p]
    return result


__all__ = ["Capacity", "Preflight", "PreflightError", "capacity", "check", "cluster_address",
           "experiment_problem", "resources_problems", "tracking_problem"]
