"""A sweep's experiment directory on a URI storage (``s3://bucket/prefix``, ``gs://...``).

Ray Tune writes its experiment state and the trial checkpoints there itself, through
pyarrow. The driver's own small files (the copy of the search-space file, its settings, the
parent MLflow run's id) are written to a local mirror of the experiment directory and copied
to the storage, so that ``mllm4wtal sweep --resume <uri>`` works from any machine that can
reach it; the summary stays in the mirror and on the parent MLflow run (whose artifacts a
team server keeps in its own store). The endpoint and keys come from the environment, as
pyarrow and boto3 read them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

from mllm4wtal.errors import UserError
from mllm4wtal.sweep.spaces.sections import URI_RE

#: the local mirrors of remote experiment directories, below the user's home
MIRROR = Path(".cache") / "mllm4wtal" / "remote"
KEYS_HINT = ("check the address and the keys of the object store (for s3://: AWS_ENDPOINT_URL, "
             "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)")
_ERRORS = (OSError, ValueError, pyarrow.ArrowException)


def is_remote(path: str | Path) -> bool:
    """Whether an experiment directory or storage path is a URI (kept as written)."""
    return bool(URI_RE.match(str(path)))


def local_dir(experiment_dir: str | Path) -> Path:
    """The local folder of an experiment directory: itself, or the mirror of a remote one
    (``~/.cache/mllm4wtal/remote/<scheme>/<bucket>/<prefix>/<name>``)."""
    if not is_remote(experiment_dir):
        return Path(experiment_dir)
    scheme, rest = str(experiment_dir).split("://", 1)
    return Path.home() / MIRROR / scheme / rest.strip("/")


def _fail(uri: str, action: str, error: BaseException) -> UserError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return UserError(f"storage {uri}: cannot {action} ({reason}); {KEYS_HINT}")


def _filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        return pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
    except _ERRORS as e:
        raise _fail(uri, "open it", e) from None


def holds(uri: str, name: str) -> bool:
    """Whether the remote directory ``uri`` holds the file ``name`` (one request; an
    unreachable store is one line)."""
    fs, root = _filesystem(uri)
    try:
        return fs.get_file_info(f"{root}/{name}").type == pyarrow.fs.FileType.File
    except _ERRORS as e:
        raise _fail(uri, "read it", e) from None


def push(local: Path, uri: str, names: Iterable[str]) -> list[str]:
    """Copy the files ``names`` present in ``local`` to the remote directory ``uri``;
    returns those copied."""
    fs, root = _filesystem(uri)
    done = []
    for name in names:
        src = local / name
        if not src.is_file():
            continue
        try:
            with fs.open_output_stream(f"{root}/{name}") as out:
                out.write(src.read_bytes())
        except _ERRORS as e:
            raise _fail(uri, f"write {name}", e) from None
        done.append(name)
    return done


def pull(uri: str, local: Path, names: Iterable[str]) -> list[str]:
    """Copy the files ``names`` the remote directory ``uri`` holds into ``local`` (replacing
    the mirror's copies: the storage is the truth); returns those copied."""
    fs, root = _filesystem(uri)
    local.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        try:
            if fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.File:
                continue
            with fs.open_input_stream(f"{root}/{name}") as src:
                data = src.read()
        except _ERRORS as e:
            raise _fail(uri, f"read {name}", e) from None
        (local / name).write_bytes(data)
        done.append(name)
    return done


def forget(uri: str) -> None:
    """Drop the mirror of a remote directory that no longer holds a sweep (a cache, stale)."""
    shutil.rmtree(local_dir(uri), ignore_errors=True)


def fetch_checkpoint(checkpoint: Any, names: Iterable[str], into: Path | None
                     ) -> Path | None:
    """The folder holding a Ray Tune checkpoint's files: its own path when it is local, else
    ``into`` with the files ``names`` copied from the storage (the artifacts MLflow gets;
    None without ``into``)."""
    if checkpoint is None:
        return None
    fs = checkpoint.filesystem
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        path = Path(checkpoint.path)
        return path if path.is_dir() else None
    if into is None:
        return None
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for name in names:
        src = f"{checkpoint.path.rstrip('/')}/{name}"
        try:
            if fs.get_file_info(src).type != pyarrow.fs.FileType.File:
                continue
            pyarrow.fs.copy_files(src, str(into / name), source_filesystem=fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
        except _ERRORS as e:
            raise _fail(checkpoint.path, f"read {name}", e) from None
    return into


__all__ = ["KEYS_HINT", "MIRROR", "fetch_checkpoint", "forget", "holds", "is_remote",
           "local_dir", "pull", "push"]
