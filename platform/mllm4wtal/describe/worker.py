"""A describe worker: answers for one video at a time. It reads the video's frames, asks its
backend P_key (eq. 1) and P_complete (eq. 11) for each labelled class, and returns the
records; it never writes the store. It runs in this process (threads) or as a Ray actor, one
backend (one model) per worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mllm4wtal.describe.backends import Backend, BackendSpec, FatalBackendError, make_backend
from mllm4wtal.describe.backends.frames import read_frames
from mllm4wtal.errors import UserError
from mllm4wtal.text.store import DescriptionRecord, StoreError


@dataclass
class VideoResult:
    """One video's answer: its records (as dicts), or ``error`` ("Type: message") when it
    could not be described; the job notes the failure and goes on."""

    video: str
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class DescribeWorker:
    """Answers for one video at a time with one backend, here or in a Ray actor."""

    def __init__(self, spec: BackendSpec, vocabulary: Mapping[str, Any] | None,
                 num_frames: int, max_side: int) -> None:
        self.spec = spec
        self.backend: Backend = make_backend(spec, vocabulary)
        self.num_frames = num_frames
        self.max_side = max_side
        self._lock: Any = (contextlib.nullcontext() if self.backend.thread_safe
                           else threading.Lock())

    def ready(self) -> dict[str, Any]:
        """What the driver checks before handing out videos (in a Ray actor: its id)."""
        info: dict[str, Any] = {"model": self.backend.model, "host": socket.gethostname(),
                                "pid": os.getpid()}
        import ray

        if ray.is_initialized():
            info["actor_id"] = ray.get_runtime_context().get_actor_id()
        return info

    def describe_video(self, video: str, classes: Sequence[str],
                       path: str | None) -> VideoResult:
        """The records of ``video``'s classes; an error that only this video has (a broken
        file, a backend failure) comes back as the result's ``error``. Errors every video
        would repeat (``FatalBackendError``, a store error) are raised: the job stops."""
        try:
            return VideoResult(video, records=self._records(video, classes, path))
        except (FatalBackendError, StoreError):
            raise
        except Exception as e:  # one video: the job notes it and goes on
            return VideoResult(video, error=f"{type(e).__name__}: {e}")

    def _records(self, video: str, classes: Sequence[str],
                 path: str | None) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        frames = None
        if self.backend.needs_frames:
            if path is None:
                raise UserError(f"backend {self.spec.name!r} needs the video of {video!r}")
            frames = read_frames(path, self.num_frames, self.max_side, video=video)
        decoding = time.perf_counter() - t0
        with self._lock:  # one generate at a time; the next video decodes meanwhile
            t1 = time.perf_counter()  # (the wait for the lock is no one's time)
            answers = self.backend.describe(video, list(classes), frames)
            asking = time.perf_counter() - t1
        share = (decoding + asking) / max(1, len(answers))
        records = []
        for a in answers:
            extra = {"frames_hash": frames.digest if frames is not None else "",
                     "num_frames": len(frames) if frames is not None else 0,
                     "finish": {"key": a.key.finish, "complete": a.complete.finish},
                     "seconds": round(share, 4)}
            records.append(DescriptionRecord(
                video=video, cls=a.cls, key=a.key.text, complete=a.complete.text,
                backend=self.spec.name, model=self.backend.model, prompt=a.prompt,
                extra=extra).to_dict())
        return records

    def close(self) -> None:
        self.backend.close()
