"""Storage faults of a sweep or study (disk full, read-only, I/O error): one line naming the
path and the free space, and the space kept to close the records when one strikes.

A full disk reaches the driver in many shapes: an ``OSError`` from Ray's storage layer, an
Optuna ``StorageInternalError`` or an ``MlflowException`` over sqlite's "database or disk
is full". :func:`storage_fault` finds the fault in an exception's chain; :func:`fault_line`
words it. The stores usually live on the full disk themselves, so a sweep holds a small
:class:`SpaceReserve` in its experiment directory and frees it before it marks its runs
FAILED (closing a sqlite record needs a few pages).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from mllm4wtal.errors import UserError
from mllm4wtal.files import free_space, os_error, short_path

#: the errno values that mean "the storage refuses writes", not "this input is bad" (a
#: permission error may be an unreadable input: it keeps its own path to the user)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: sqlite's words for the same faults (it reports them without an errno)
_SQLITE = {"database or disk is full": errno.ENOSPC,
           "attempt to write a readonly database": errno.EROFS,
           "disk i/o error": errno.EIO}

RESERVE_FILE = ".space_reserve"
RESERVE_BYTES = 2 * 1024 * 1024
#: the last exception line of a Python traceback: ``pkg.mod.SomeError: message``
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:\([\w.]*\))?): (\S.*)$")


def resume_hint(experiment_dir: str | Path) -> str:
    """What :func:`fault_line` tells to do once the fault is fixed, for a sweep."""
    return f"continue the sweep with `mllm4wtal sweep --resume {experiment_dir}`"


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line; the user's exception inside a Ray task error."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def traceback_reason(text: str) -> str:
    """The exception a traceback ends with, as ``Type: message`` on one line (the first
    line of a message of several); the last line when none is recognised."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return f"{match[1]}: {match[2].strip()}"
    return lines[-1].strip() if lines else ""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and the user exception inside a Ray error."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError
        todo += [c for c in (cause, e.__cause__, e.__context__)
                 if isinstance(c, BaseException)]


def _store_of(error: BaseException, stores: Mapping[str, str | Path]) -> Path | None:
    """The store an exception came from (``stores``: library name -> its sqlite file)."""
    for e in _chain(error):
        library = type(e).__module__.split(".")[0]
        if library in stores:
            return Path(stores[library])
    return None


def storage_fault(error: BaseException, stores: Mapping[str, str | Path] | None = None
                  ) -> tuple[Path | None, OSError] | None:
    """The storage fault behind ``error``, as (the path it names or None, an ``OSError``
    with its errno); None when ``error`` is not one. ``stores`` maps ``"optuna"`` and
    ``"mlflow"`` to their sqlite files, to name the file behind a sqlite error."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return (Path(os.fsdecode(e.filename)) if e.filename is not None else None), e
        text = str(e).lower()
        for words, code in _SQLITE.items():
            if words in text and (isinstance(e, sqlite3.Error) or "sqlite" in text):
                where = _store_of(error, stores or {})
                return where, OSError(code, os.strerror(code))
    return None


def fault_line(path: str | Path, error: OSError, resume: str) -> str:
    """One line: what could not be written, why (with the free space for a full disk), and
    how to go on (``resume``: e.g. :func:`resume_hint`)."""
    if error.errno in _FULL:
        return (f"cannot write {short_path(path)}: no space left on the device "
                f"({free_space(path)}); free some space there, then {resume}")
    return str(os_error(path, error, f"fix that, then {resume}"))


class SpaceReserve:
    """A few MiB held in ``folder`` while a sweep runs: released on a storage fault so that
    the FAILED records can still be written on a full disk. Random bytes, so that a
    compressing or deduplicating filesystem keeps them on disk."""

    def __init__(self, folder: str | Path | None, resume: str, size: int = RESERVE_BYTES
                 ) -> None:
        self.path = Path(folder) / RESERVE_FILE if folder is not None else None
        self.resume = resume
        self.size = size

    def hold(self) -> None:
        """Write the reserve; a disk already too full for it is refused at once."""
        if self.path is None:  # remote storage: not ours to fill
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as fh:
                fh.write(os.urandom(self.size))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            self.release()
            raise UserError(fault_line(e.filename or self.path, e, self.resume)) from None

    def release(self) -> None:
        if self.path is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only disk: nothing to free anyway
            pass
