"""The MLflow writes of a sweep, in order, kept while the tracking server is unreachable.

MLflow's HTTP client retries a refused connection 7 times with exponential backoff (about
four minutes per call, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_BACKOFF_FACTOR``) and waits
120 s for an answer (``MLFLOW_HTTP_REQUEST_TIMEOUT``); the driver of a sweep would sit there
while no trial result is handled. Every call the tracker makes runs under :func:`fail_fast`
instead: no retry, no backoff, an answer within 5 s (a file upload keeps MLflow's timeout),
set in this process for the duration of the call only (the user's environment and other
programs keep their settings).

A write that fails on the connection or with a 5xx answer (:func:`is_outage`; any other
MLflow error still surfaces) is queued with every write after it, in order, and the driver
warns once on stderr. Once the server is found down (by a write or a read), nothing is sent
to it but a probe of its ``/health`` (1 s) at most every ``RETRY_S`` seconds from the driver
loop; once it answers, the queue is written
for at most ``FLUSH_S`` seconds per driver call, so trials never wait on MLflow for more
than about a second. At most ``MAX_IN_MEMORY`` writes wait in memory; more go, in order, to
``<experiment_dir>/mlflow_queue.jsonl`` (the disk is the bound), files to log beside it in
``mlflow_queue_files/`` (hard links or copies, since Ray deletes old checkpoints). When the
sweep ends with the server still down the whole queue goes to that file; the next tracker
on the experiment (``--resume``, or a study run again) writes it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import RestException

from mllm4wtal.errors import UserError

QUEUE_FILE = "mlflow_queue.jsonl"
QUEUE_FILES = "mlflow_queue_files"
MAX_IN_MEMORY = 10_000
RETRY_S = 5.0
FLUSH_S = 1.0
PROBE_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 5
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S)}

Op = dict[str, Any]
Apply = Callable[[Op], Any]


@contextlib.contextmanager
def fail_fast(timeout: bool = True) -> Iterator[None]:
    """MLflow's HTTP calls of this process, in the block, fail at once instead of retrying
    for minutes (MLflow reads these variables on every request), and wait at most
    ``REQUEST_TIMEOUT_S`` for an answer unless ``timeout`` is False; restored afterwards."""
    env = {k: v for k, v in FAIL_FAST_ENV.items()
           if timeout or k != "MLFLOW_HTTP_REQUEST_TIMEOUT"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the server cannot be reached or failed (connection refused
    or reset, timeout, 5xx), rather than refusing the request (a real MLflow error)."""
    import requests
    import urllib3

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RestException) and e.get_http_status_code() >= 500:
            return True
        if isinstance(e, requests.HTTPError) and e.response is not None:
            if e.response.status_code >= 500:
                return True
        elif isinstance(e, requests.RequestException | urllib3.exceptions.HTTPError
                        | ConnectionError | TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


def server_answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the tracking server answers ``/health`` (a refusal below 500 counts)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


class TrackingQueue:
    """The writes of one experiment to one tracking server, applied in order.

    ``submit(op, apply)`` applies ``op`` (a JSON-able dict) now when nothing waits, else
    queues it; ``sync(apply)`` retries what waits (when due); ``close(apply)`` ends a sweep:
    what still waits goes to the spill file; ``replay(apply)`` writes a spill file an
    earlier process left. ``apply`` is the tracker's own writer, which runs under
    :func:`fail_fast`. One queue per experiment and server in a process (``queue_for``), so
    that the callback's tracker and the runner's write in one order.
    """

    def __init__(self, experiment_dir: Path, uri: str, max_in_memory: int = MAX_IN_MEMORY
                 ) -> None:
        self.uri = uri
        self.path = Path(experiment_dir) / QUEUE_FILE
        self.files = Path(experiment_dir) / QUEUE_FILES
        self.max_in_memory = max_in_memory
        self.online = True
        self.warned = False
        self.written = 0  # queued writes written since the outage began
        self.known: dict[str, Any] = {}  # what the writers of this queue share
        self._ops: deque[Op] = deque()  # newer than everything in the file
        self._head: deque[tuple[Op, int]] = deque()  # read from the file: (op, end offset)
        self._read_at = 0  # file offset read into _head
        self._done_at = 0  # file offset written to MLflow
        self._last_try = 0.0

    # -- the queue: the spill file first (oldest), then memory -------------------------------

    def _file_size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def __len__(self) -> int:
        """Writes waiting in memory (the spill file is counted by :meth:`spilled_ops`)."""
        return len(self._ops)

    @property
    def waiting(self) -> bool:
        return bool(self._ops or self._head or self._read_at < self._file_size())

    def spilled_ops(self) -> int:
        """Writes waiting in the spill file."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            f.seek(self._done_at)
            return sum(1 for _ in f)

    def _peek(self) -> Op:
        if not self._head and self._read_at < self._file_size():
            with open(self.path, "rb") as f:
                f.seek(self._read_at)
                for _ in range(min(self.max_in_memory, 1000)):
                    line = f.readline()
                    if not line:
                        break
                    self._read_at += len(line)
                    if line.strip():
                        self._head.append((json.loads(line), self._read_at))
        return self._head[0][0] if self._head else self._ops[0]

    def _pop(self) -> None:
        if self._head:
            op, self._done_at = self._head.popleft()
        else:
            op = self._ops.popleft()
        kept = op.get("kept")
        if kept:
            shutil.rmtree(Path(kept).parent, ignore_errors=True)

    def _keep_file(self, op: Op) -> Op:
        """A file to log waits as a hard link (or copy) under ``mlflow_queue_files/``."""
        if "path" not in op or op.get("kept"):
            return op
        src = Path(op["path"])
        if not src.is_file():
            return op
        folder = self.files / f"{time.time_ns()}"
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return {**op, "path": str(dst), "kept": str(dst)}

    def push(self, op: Op) -> None:
        self._ops.append(self._keep_file(op))
        if len(self._ops) >= self.max_in_memory:
            self.spill()

    def spill(self) -> Path | None:
        """Append the writes waiting in memory to the spill file; returns the file, or None
        when nothing waits."""
        if self._ops:
            with open(self.path, "a", encoding="utf-8") as f:
                for op in self._ops:
                    f.write(json.dumps(op) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._ops.clear()
        return self.path if self.waiting else None

    def _trim_file(self) -> None:
        """Drop from the spill file what was written to MLflow (so that a crash repeats
        little); remove it and the kept files when all is written."""
        if self._done_at == 0:
            return
        size = self._file_size()
        if self._done_at >= size:
            self.path.unlink(missing_ok=True)
            if self.files.is_dir() and not any(self.files.iterdir()):
                self.files.rmdir()
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                src.seek(self._done_at)
                shutil.copyfileobj(src, dst)
            os.replace(tmp, self.path)
        self._head.clear()
        self._read_at = self._done_at = 0

    # -- writing -----------------------------------------------------------------------------

    def _down(self) -> None:
        if self.online:
            self.written = 0
        self.online = False
        self._last_try = time.monotonic()
        if not self.warned:
            self.warned = True
            print(f"warning: MLflow server {self.uri} unreachable: queueing its writes (the "
                  f"trials go on); will retry every {RETRY_S:g} s", file=sys.stderr,
                  flush=True)

    def _up(self, force: bool = False) -> bool:
        """Whether the server is taken to answer; once found down, its ``/health`` is
        probed again at most every ``RETRY_S`` s (``force``: now)."""
        if self.online:
            return True
        now = time.monotonic()
        if not force and now - self._last_try < RETRY_S:
            return False
        self._last_try = now
        self.online = server_answers(self.uri)
        return self.online

    def _try(self, fn: Callable[[], Any], op: Op | None = None) -> tuple[bool, Any]:
        """``(True, fn())``, or ``(False, None)`` when the server is down (a real MLflow
        error is raised). A file upload keeps MLflow's own timeout (a large checkpoint)."""
        try:
            with fail_fast(timeout=op is None or "path" not in op):
                return True, fn()
        except Exception as e:
            if not is_outage(e):
                raise
            self._down()
            return False, None

    def submit(self, op: Op, apply: Apply) -> Any:
        """Apply ``op`` now (returns what ``apply`` returns) or queue it (returns None)."""
        if self.sync(apply):
            done, value = self._try(lambda: apply(op), op)
            if done:
                return value
        self.push(op)
        return None

    def read(self, fn: Callable[[], Any], offline: Any, apply: Apply) -> Any:
        """``fn()`` (a read from the server) when it answers and no write waits, else
        ``offline``."""
        if self.sync(apply):
            done, value = self._try(fn)
            if done:
                return value
        return offline

    def sync(self, apply: Apply, budget: float | None = FLUSH_S) -> bool:
        """Write what waits, for at most ``budget`` seconds (None: all of it, probing the
        server now), when the server answers. Returns whether it answers and nothing waits.
        A queued write MLflow refuses (not an outage) is dropped with a warning, as a
        failing hook is."""
        if not self._up(force=budget is None):
            return False
        if not self.waiting:
            return True
        start = time.monotonic()
        try:
            while self.waiting:
                op = self._peek()
                try:
                    done, _ = self._try(lambda: apply(op), op)  # noqa: B023 (called at once)
                except Exception as e:
                    done = True
                    print(f"warning: MLflow refused a queued write ({op.get('op')}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                          "dropped", file=sys.stderr, flush=True)
                if not done:
                    return False
                self._pop()
                self.written += 1
                if budget is not None and time.monotonic() - start > budget:
                    return False
        finally:
            self._trim_file()
        if self.files.is_dir() and not any(self.files.iterdir()):
            self.files.rmdir()
        print(f"MLflow server {self.uri} answers again: wrote the {self.written} queued "
              "writes", file=sys.stderr, flush=True)
        return True

    def close(self, apply: Apply) -> Path | None:
        """The end of a sweep: write all that waits if the server answers now, else move it
        to the spill file. Returns the spill file, or None when everything was written."""
        if self.sync(apply, budget=None):
            return None
        return self.spill()

    def replay(self, apply: Apply) -> None:
        """Write a spill file left by an earlier process, all of it, before anything new."""
        if not self.path.exists():
            return
        self.online = False  # probe first: the file says the server was down
        if not self.sync(apply, budget=None):
            raise UserError(f"MLflow tracking server '{self.uri}' is not reachable: the "
                            f"{self.spilled_ops()} writes kept in {self.path} wait for it; "
                            "start it and run again")


_QUEUES: dict[tuple[str, str], TrackingQueue] = {}


def queue_for(experiment_dir: Path, uri: str) -> TrackingQueue:
    """The one queue of an experiment and server in this process."""
    key = (str(Path(experiment_dir).resolve()), uri)
    if key not in _QUEUES:
        _QUEUES[key] = TrackingQueue(Path(key[0]), uri)
    return _QUEUES[key]


def pending_line(experiment_dir: Path, uri: str) -> str | None:
    """The line a sweep ends with when MLflow writes wait in the spill file, else None."""
    path = Path(experiment_dir) / QUEUE_FILE
    if not path.exists():
        return None
    n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return (f"MLflow server {uri} still unreachable: its {n} pending writes are kept in "
            f"{path} (no summary yet); once it answers, `mllm4wtal sweep --resume "
            f"{experiment_dir}` writes them and the summary")
