"""What the start of a sweep (or study) would refuse, found before anything is written.

One function, :func:`check`, serves ``mllm4wtal sweep FILE --check`` and the real start
alike, so the two cannot disagree. It lists every problem, not the first:

- the experiment directory: a new sweep never reuses one that holds a sweep or a study (a
  study reuses its own, never a sweep's); it must be writable;
- the MLflow tracking store: a server must answer within seconds, a sqlite or file store's
  folder must be writable;
- the resources per trial must fit one node (a trial never spans two): without
  ``$RAY_ADDRESS`` that is this machine as the sweep's private Ray will see it (Ray's own
  count: container CPU limits, ``CUDA_VISIBLE_DEVICES``) or the Ray this process already
  runs; with a cluster address, the live nodes of that cluster (``--check`` connects);
- a resumed sweep's Ray state verifies against its signatures (``sweep.trust``), a new
  sweep's signing key is usable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import ray

from mllm4wtal import files
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import cluster_address, start_ray
from mllm4wtal.sweep.faults import one_line
from mllm4wtal.sweep.mlflow_store import check_server, normalize_tracking_uri
from mllm4wtal.sweep.runner import SPACE_COPY, STUDY_COPY
from mllm4wtal.sweep.spaces.sections import URI_RE
from mllm4wtal.sweep.trust import key_path, key_problem, verify

TRACKING_FIX = "mlflow.tracking_uri, or --tracking-uri"


class PreflightError(UserError):
    """The start of a sweep or study would be refused; the message has one line a problem."""


@dataclass(frozen=True)
class Capacity:
    """The most CPUs and GPUs one trial can get (the largest node of each), where that was
    measured, and each live node's (CPUs, GPUs) (none given: one node of ``cpus``,
    ``gpus``); ``cluster``: a cluster the sweep joins, not this machine."""

    cpus: float
    gpus: float
    where: str
    nodes: tuple[tuple[float, float], ...] = field(default=(), compare=False)
    cluster: bool = field(default=False, compare=False)

    def node_list(self) -> tuple[tuple[float, float], ...]:
        return self.nodes or ((self.cpus, self.gpus),)


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


class ClusterUnreachable(PreflightError):
    """The Ray cluster a sweep would join cannot be asked for its nodes."""


def _ray_nodes(where: str, **extra: bool) -> Capacity:
    """The live nodes of the Ray this process is connected to."""
    nodes = tuple((float(r.get("CPU", 0.0)), float(r.get("GPU", 0.0)))
                  for r in (n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")))
    return Capacity(cpus=max((c for c, _ in nodes), default=0.0),
                    gpus=max((g for _, g in nodes), default=0.0), where=where, nodes=nodes,
                    **extra)


def local_resources() -> tuple[float, float]:
    """The CPUs and GPUs a private Ray started here gets: Ray's own count (a container's
    CPU limit, ``CUDA_VISIBLE_DEVICES``, ``RAY_OVERRIDE_RESOURCES``), found without starting
    it; ``os.sched_getaffinity`` and torch if Ray's resolver cannot be reached."""
    try:  # the resolver ray.init runs for a local node
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        spec = ResourceAndLabelSpec().resolve(is_head=True, node_ip_address="127.0.0.1")
        return float(spec.num_cpus), float(spec.num_gpus)
    except Exception:  # another Ray release: the plain count
        import torch

        return float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count())


@contextmanager
def _joined(address: str) -> Iterator[None]:
    """Connected to the cluster at ``address`` for the block, as the sweep will be; a
    connection that fails is one line."""
    try:
        started = start_ray(address)
    except UserError as e:  # start_ray's one line: malformed, or nothing answers there
        raise ClusterUnreachable(str(e)) from None
    except Exception as e:  # Ray's own connection errors: one line
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {address} ({one_line(e)}); "
                                 "start it, or fix RAY_ADDRESS (or --address)") from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def capacity(address: str | None = None) -> Capacity:
    """The nodes a trial can run on: the Ray this process already runs, else the cluster
    at ``address`` / ``$RAY_ADDRESS`` (connected to, asked, left), else this machine as a
    private Ray sees it. :class:`ClusterUnreachable` when the cluster cannot be asked."""
    if ray.is_initialized():
        return _ray_nodes("the Ray this process runs")
    address = cluster_address(address)
    if address is None:
        cpus, gpus = local_resources()
        return Capacity(cpus=cpus, gpus=gpus, where="this machine")
    with _joined(address):
        return _ray_nodes(f"the largest node of the Ray cluster at {address}", cluster=True)


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


def _at_once(cpus: float, gpus: float, r: Any) -> int:
    fits = [int(cpus // r.cpu) if r.cpu else None, int(gpus // r.gpu) if r.gpu else None]
    return min(n for n in fits if n is not None)


def resources_problems(target: Any, cap: Capacity, study: bool, passed: list[str]
                       ) -> list[str]:
    """Each trial's ``resources`` fit one node it can run on (a trial never spans nodes)."""
    r = target.resources
    asked = f"{_count(r.cpu, 'CPU')} + {_count(r.gpu, 'GPU')} per trial"
    out = []
    how = "in the file" if study else "in the file, or --space-set resources.{key}={n:g}"
    bigger = ("or add larger nodes to the cluster" if cap.cluster else
              "or run on a Ray cluster with larger nodes (RAY_ADDRESS)")
    gpus_at = "or add GPU nodes to the cluster" if cap.cluster else \
        "or run where GPUs are (RAY_ADDRESS)"
    if r.cpu > cap.cpus:
        out.append(f"{target.where}: resources.cpu = {r.cpu:g} per trial, but {cap.where} has "
                   f"{_count(cap.cpus, 'CPU')}; lower it to {cap.cpus:g} or less "
                   f"({how.format(key='cpu', n=cap.cpus)}) {bigger}")
    if r.gpu > cap.gpus:
        if cap.gpus == 0:
            has = (f"no GPU; set it to 0 ({how.format(key='gpu', n=0)}; train.device auto or "
                   "cpu)")
        else:
            has = (f"{_count(cap.gpus, 'GPU')}; lower it to {cap.gpus:g} or less "
                   f"({how.format(key='gpu', n=cap.gpus)})")
        out.append(f"{target.where}: resources.gpu = {r.gpu:g} per trial, but {cap.where} has "
                   f"{has} {gpus_at}")
    nodes = cap.node_list()
    if not out and not any(c >= r.cpu and g >= r.gpu for c, g in nodes):
        shapes = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in sorted(set(nodes)))
        out.append(f"{target.where}: resources = {asked}, but no node of "
                   f"{cap.where.removeprefix('the largest node of ')} has both (its nodes: "
                   f"{shapes}); lower resources.cpu or resources.gpu to what one node has")
    if not out:
        at_once = sum(_at_once(c, g, r) for c, g in nodes if c >= r.cpu and g >= r.gpu)
        over = f" over its {len(nodes)} nodes" if len(nodes) > 1 else ""
        passed.append(f"resources: {asked} fit {cap.where} ({_count(cap.cpus, 'CPU')}, "
                      f"{_count(cap.gpus, 'GPU')}: {at_once} at a time{over}, max_concurrent "
                      f"{target.trials.max_concurrent})")
    return out


def trust_problem(target: Any, resume: bool, passed: list[str]) -> str | None:
    """A resumed sweep's Ray state verifies against its signatures (nothing unpickled); a
    new sweep can sign (its key exists or can be created)."""
    if resume:
        try:
            signed = verify(target.experiment_dir)
        except UserError as e:
            return str(e)
        passed.append("resume: Ray's state is signed with " + str(key_path()) if signed else
                      "resume: Tune saved no state yet; the trials start afresh")
        return None
    return key_problem()  # a fine key goes unmentioned: it is not the user's concern


def check(target: Any, *, resume: bool = False, study: bool = False,
          address: str | None = None) -> Preflight:
    """Everything the start of ``target`` (a ``SearchSpaceFile``, or with ``study`` a
    ``Study``) would refuse; ``resume``: it continues its experiment directory; ``address``:
    the Ray cluster it will join (default ``$RAY_ADDRESS``; none: a private Ray here)."""
    result = Preflight()
    folder = experiment_problem(target, resume, study, result.passed)
    store = tracking_problem(target, result.passed)
    uri = target.mlflow.tracking_uri
    if folder and store and uri.startswith("sqlite:///") and \
            uri.removeprefix("sqlite:///").startswith(target.storage_path.rstrip("/") + "/"):
        store = None  # the store lies in the storage folder: one cause, said once
    try:
        fits = resources_problems(target, capacity(address), study, result.passed)
    except ClusterUnreachable as e:
        fits = [f"{target.where}: {e}"]
    signed = None if study else trust_problem(target, resume, result.passed)
    result.problems = [p for p in [folder, store, *fits, signed] if p]
    return result


__all__ = ["Capacity", "ClusterUnreachable", "Preflight", "PreflightError", "capacity",
           "check", "cluster_address", "experiment_problem", "local_resources",
           "resources_problems", "tracking_problem", "trust_problem"]
