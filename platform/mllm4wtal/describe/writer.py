"""The one writer of a ``describe`` job: the store's lock, what is already in it, and the
appending of each video's records as they come back (with the tally and the progress bar).

Workers (threads or Ray actors) only answer; this process alone writes the store, one record
at a time (one write + fsync, ``mllm4wtal.text.store.append_record``), so a crash loses at
most the videos in flight.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mllm4wtal.describe.worker import VideoResult
from mllm4wtal.errors import UserError
from mllm4wtal.text.store import (
    DescriptionRecord,
    Pair,
    append_record,
    read_store,
    repair_store,
    tail_is_corrupt,
)

Echo = Callable[[str], None]


@contextlib.contextmanager
def store_lock(out: Path) -> Iterator[None]:
    """One ``describe`` job per store: an exclusive lock on ``.<store>.lock`` beside it."""
    lock_path = out.with_name(f".{out.name}.lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, blocking=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"another `mllm4wtal describe` is writing {out} (it holds "
                        f"{lock_path}); wait for it to end, or write to another --out"
                        ) from None
    try:
        yield
    finally:
        lock.release()


def open_store(out: Path, echo: Echo) -> tuple[dict[Pair, DescriptionRecord], Path | None]:
    """The records already in ``out`` (none if it does not exist). A last line cut by a
    crash is moved aside to ``<store>.corrupt-<n>`` (and said so); its pair is missing
    afterwards and described again. Any other bad line is an error naming it."""
    if not out.exists():
        return {}, None
    moved = None
    if tail_is_corrupt(out):
        moved = repair_store(out)
        echo(f"note: the last line of {out} was cut off (a crash while it was written); "
             f"moved it to {moved} and will describe that pair again")
    return read_store(out), moved


@dataclass
class DescribeSummary:
    """What a ``describe`` job did (``line()`` for a person, ``summary_dict`` for JSON)."""

    store: str
    needed: int  # (video, class) pairs the dataset's training set has
    present: int  # of those, already in the store when the job began
    written: int = 0  # records this job wrote
    videos_todo: int = 0
    videos_done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video -> why
    missing_videos: list[str] = field(default_factory=list)  # no file / frame folder
    repaired: str | None = None  # where a cut-off last line went
    seconds: float = 0.0
    model: str = ""

    @property
    def complete(self) -> bool:
        return self.present + self.written >= self.needed

    def line(self) -> str:
        left = self.needed - self.present - self.written
        parts = [f"{self.written} record(s) written to {self.store} in {self.seconds:.1f} s",
                 f"{self.present + self.written} of {self.needed} pairs described"]
        if self.failed:
            parts.append(f"{len(self.failed)} video(s) failed: " + "; ".join(
                f"{v}: {m}" for v, m in list(self.failed.items())[:3]))
        if self.missing_videos:
            parts.append(f"{len(self.missing_videos)} video(s) without a file skipped")
        if left > 0:
            parts.append(f"{left} pair(s) left: rerun the same command to go on")
        return "; ".join(parts)


def summary_dict(summary: DescribeSummary) -> dict[str, Any]:
    return {**asdict(summary), "complete": summary.complete}


class Writer:
    """Appends each video's records, notes each failed video, counts, drives the bar."""

    def __init__(self, out: Path, summary: DescribeSummary, total_videos: int,
                 progress: bool, max_failures: int) -> None:
        from tqdm import tqdm

        self.out = out
        self.summary = summary
        self.max_failures = max_failures
        self.bar = tqdm(total=total_videos, unit="video", desc="describe",
                        disable=not progress, dynamic_ncols=True, smoothing=0.05)

    def take(self, result: VideoResult) -> None:
        """A worker's answer about one video: its records, or why it failed."""
        if result.error is not None:
            self.fail(result.video, result.error)
            return
        for d in result.records:
            append_record(self.out, DescriptionRecord.from_dict(d, where="a worker's record"))
            self.summary.written += 1
        self.summary.videos_done += 1
        self.bar.update(1)
        self._postfix()

    def fail(self, video: str, message: str) -> None:
        """Note the video as failed and go on, unless ``max_failures`` videos have."""
        msg = " ".join(message.split())[:300]
        self.summary.failed[video] = msg
        self.bar.update(1)
        self._postfix()
        if len(self.summary.failed) >= self.max_failures:
            raise UserError(f"{len(self.summary.failed)} videos failed (the last, {video}: "
                            f"{msg}); stopping. The {self.summary.written} records written "
                            "are kept: fix the cause and rerun the same command to go on")

    def _postfix(self) -> None:
        self.bar.set_postfix(pairs=self.summary.written, failed=len(self.summary.failed),
                             refresh=False)

    def close(self) -> None:
        self.bar.close()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """A run summary or a check report as JSON (``--json``)."""
    import json

    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
