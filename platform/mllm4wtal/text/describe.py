"""``mllm4wtal describe``: ask a video-language model for the key and complete descriptions of
every (training video, labelled class) pair, and check a store of them.

For each training video and each of its labelled classes the two prompts of MLLM4WTAL,
P_key (eq. 1) and P_complete (eq. 11), go to a backend (``mllm4wtal.text.backends``) with
frames sampled uniformly from the video; one record per pair is appended to a JSONL store
(``mllm4wtal.text.store``): video, class, key, complete, backend, model, prompt, plus
``frames_hash`` (sha256 of the frames shown), ``num_frames``, ``finish`` (per answer:
"stop", "length" = cut at the token limit) and ``seconds`` (the time spent decoding the
video and answering its prompts, shared out over its pairs).

The job:

- **Resumable.** Pairs already in the store are skipped; records are appended one at a time
  (one write + fsync) as each video's answers come back, so a crash loses at most the
  videos in flight. A last line cut by a crash is moved to ``<store>.corrupt-<n>`` (kept, and
  said so) and its pair asked again. One job per store at a time (a lock file).
- **One writer.** Workers (threads here, or Ray actors) only answer; this process writes.
- **Distributed.** With ``use_ray`` a pool of Ray actors, one backend (one model) each,
  ``num_gpus`` per actor, takes the videos; two tasks per actor, so one video's frames are
  decoded while the other's prompts are generated. Actors that die are restarted by Ray and
  their video retried once.
- **Progress.** A bar with videos done, pairs written, rate and ETA.

``check_store`` reports coverage, empty and truncated answers, answers that mention neither
the class nor an action verb, and length statistics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.data.types import Video, WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.text.backends import (
    Backend,
    BackendSpec,
    FatalBackendError,
    backend_class,
    make_backend,
)
from mllm4wtal.text.backends.frames import index_videos, read_frames
from mllm4wtal.text.prompts import humanize
from mllm4wtal.text.store import (
    DescriptionRecord,
    Pair,
    StoreError,
    append_record,
    needed_pairs,
    read_store,
    repair_store,
    tail_is_corrupt,
)
from mllm4wtal.text.templates import gerund, third_person
from mllm4wtal.text.vocab import is_stopword, tokenize

_SHOWN = 5
Echo = Callable[[str], None]


# =========================================================================== the dataset


def _annotation_only(ann_dir: Path, name: str, train_subset: str | None,
                     test_subset: str | None) -> WTALDataset:
    """The dataset of an annotation directory, without features (describe needs names,
    subsets and labels only; THUMOS14's features are gigabytes)."""
    from mllm4wtal.data.wtal_format import infer_subsets, read_annotation_dir

    ann = read_annotation_dir(ann_dir)
    train, test = infer_subsets(ann.subsets, train_subset, test_subset, source=ann.source)
    empty = np.zeros((0, 0), dtype=np.float32)
    videos = [Video(name=n, subset=s, features=empty, labels=lab, segments=seg,
                    duration=float(d or 0.0), fps=25.0)
              for n, s, lab, seg, d in zip(ann.names, ann.subsets, ann.labels, ann.segments,
                                           ann.durations, strict=True)]
    return WTALDataset(name=name, classes=list(ann.classes), videos=videos, train_subset=train,
                       test_subset=test, rgb_dim=0, ambiguous=dict(ann.ambiguous))


def load_describe_dataset(source: str, overrides: Sequence[str] = ()) -> WTALDataset:
    """The dataset whose training pairs are described: a preset or config YAML (with
    ``--set`` overrides, e.g. ``data.root``), or a ``<Name>-Annotations`` directory, or a
    directory holding exactly one. WTAL-layout datasets are read from their annotations
    only; the features are not loaded."""
    from mllm4wtal.config import PRESETS, load_config

    p = Path(source).expanduser()
    if source in PRESETS or (p.is_file() and p.suffix.lower() in (".yaml", ".yml")):
        cfg = load_config(source, list(overrides))
        dc = cfg.data
        if dc.format == "synthetic":
            from mllm4wtal.data.synthetic import make_synthetic

            return make_synthetic(dc.synthetic)
        if not dc.root:
            raise UserError(f"--dataset {source}: data.format = '{dc.format}' needs "
                            "data.root: pass --set data.root=/path/to/the/dataset")
        if dc.format == "wtal":
            from mllm4wtal.data.wtal_format import annotation_dir

            ann = annotation_dir(dc.root, dc.name)
            if not ann.is_dir():
                raise UserError(f"--dataset {source}: no annotation directory {ann}; check "
                                "data.root and data.name")
            return _annotation_only(ann, dc.name, dc.train_subset, dc.test_subset)
        from mllm4wtal.data.load import load_from_config

        return load_from_config(dc)
    if overrides:
        raise UserError("--set applies to a preset or config YAML, not to an annotation "
                        "directory")
    if p.is_dir():
        if (p / "videoname.npy").is_file():
            return _annotation_only(p, p.name.removesuffix("-Annotations"), None, None)
        found = sorted(d for d in p.glob("*-Annotations") if d.is_dir())
        if len(found) == 1:
            return _annotation_only(found[0], found[0].name.removesuffix("-Annotations"),
                                    None, None)
        raise UserError(f"--dataset {p}: expected a <Name>-Annotations directory (with "
                        f"videoname.npy, ...) or a folder holding one; found {len(found)}")
    raise UserError(f"--dataset {source!r} is neither a preset (synthetic, thumos14, "
                    "activitynet12), a config YAML nor an annotation directory")


def plan(dataset: WTALDataset, have: Mapping[Pair, Any] | set[Pair]) -> list[tuple[str, list[str]]]:
    """The videos still to describe, in dataset order, each with its classes not yet in
    the store."""
    todo: dict[str, list[str]] = {}
    for video, cls in needed_pairs(dataset):
        if (video, cls) not in have:
            todo.setdefault(video, []).append(cls)
    return list(todo.items())


# =========================================================================== the store


@contextlib.contextmanager
def store_lock(out: Path) -> Iterator[None]:
    """One ``describe`` job per store: an exclusive lock on ``.<store>.lock`` beside it."""
    import fcntl

    lock_path = out.with_name(f".{out.name}.lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another `mllm4wtal describe` is writing {out} (it holds "
                            f"{lock_path}); wait for it to end, or write to another --out"
                            ) from None
        yield
    finally:
        fh.close()  # releases the lock


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


# =========================================================================== workers


class DescribeWorker:
    """Answers for one video at a time: reads its frames, asks the backend, returns record
    dicts. Runs in this process (threads) or as a Ray actor; it never writes the store."""

    def __init__(self, spec: BackendSpec, vocabulary: Mapping[str, Any] | None,
                 num_frames: int, max_side: int) -> None:
        self.spec = spec
        self.backend: Backend = make_backend(spec, vocabulary)
        self.num_frames = num_frames
        self.max_side = max_side
        self._lock: Any = (contextlib.nullcontext() if self.backend.thread_safe
                           else threading.Lock())

    def ready(self) -> dict[str, Any]:
        """What the driver checks before handing out videos."""
        return {"model": self.backend.model, "host": socket.gethostname(), "pid": os.getpid()}

    def describe_video(self, video: str, classes: Sequence[str],
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


# =========================================================================== the job


@dataclass
class DescribeSummary:
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


class _Writer:
    """The one writer: appends each video's records, counts, drives the progress bar."""

    def __init__(self, out: Path, summary: DescribeSummary, total_videos: int,
                 progress: bool, max_failures: int) -> None:
        from tqdm import tqdm

        self.out = out
        self.summary = summary
        self.max_failures = max_failures
        self.bar = tqdm(total=total_videos, unit="video", desc="describe",
                        disable=not progress, dynamic_ncols=True, smoothing=0.05)

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for d in records:
            append_record(self.out, DescriptionRecord.from_dict(d, where="a worker's record"))
            self.summary.written += 1
        self.summary.videos_done += 1
        self.bar.update(1)
        self._postfix()

    def fail(self, video: str, error: BaseException) -> None:
        cause = getattr(error, "cause", None) or error  # Ray wraps the worker's exception
        if isinstance(cause, FatalBackendError | StoreError):
            raise cause
        msg = (_ray_message(cause) if type(cause).__module__.startswith("ray.")
               else f"{type(cause).__name__}: {cause}")
        msg = " ".join(msg.split())[:300]
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


def _check_mixed(have: Mapping[Pair, DescriptionRecord], backend: str, model: str,
                 out: Path) -> None:
    other = Counter((r.backend, r.model) for r in have.values()
                    if (r.backend, r.model) != (backend, model))
    if other:
        (b, m), n = other.most_common(1)[0]
        raise UserError(f"{out} already holds {sum(other.values())} record(s) of another "
                        f"backend/model (e.g. {n} of backend={b!r} model={m!r}); this run is "
                        f"backend={backend!r} model={model!r}. Write to another --out, or "
                        "pass --allow-mixed to fill in its missing pairs anyway")


def _run_local(worker: DescribeWorker, todo: Sequence[tuple[str, list[str]]],
               paths: Mapping[str, str], writer: _Writer, workers: int) -> None:
    """Videos to ``workers`` threads; at most ``workers`` in flight (so an interrupt loses
    at most those)."""
    pending = deque(todo)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe")
    inflight: dict[Future, str] = {}
    try:
        while pending or inflight:
            while pending and len(inflight) < workers:
                video, classes = pending.popleft()
                inflight[pool.submit(worker.describe_video, video, classes,
                                     paths.get(video))] = video
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in done:
                video = inflight.pop(fut)
                try:
                    records = fut.result()
                except Exception as e:  # one video: note it, go on
                    writer.fail(video, e)
                else:
                    writer.write(records)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _start_ray(address: str | None) -> bool:
    """Join ``address`` / $RAY_ADDRESS or start Ray in this process; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)
    return True


def _ray_cause(e: BaseException) -> BaseException:
    return getattr(e, "cause", None) or e


def _ray_message(e: BaseException) -> str:
    """The worker's own error of a Ray error, without Ray's traceback: an actor that died in
    its constructor carries only text, whose last 'SomeError: message' line is the one."""
    text = str(getattr(e, "error_msg", "") or e)
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        m = re.match(r"^([\w.]+(?:Error|Exception|Interrupt)): (.+)$", line)
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return " ".join(text.split())[-400:]


def _make_actors(spec: BackendSpec, vocabulary: Mapping[str, Any], num_frames: int,
                 max_side: int, actors: int | None, num_gpus: float | None,
                 num_cpus: float, echo: Echo) -> tuple[list[Any], str]:
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    if num_gpus is None:
        num_gpus = 1.0 if spec.name == "hf" and gpus > 0 else 0.0
    if num_gpus > 0 and gpus < num_gpus:
        raise UserError(f"--num-gpus {num_gpus} per actor, but the Ray cluster has {gpus:g} "
                        "GPU(s); use --num-gpus 0 for CPU actors")
    if actors is None:
        actors = (int(gpus // num_gpus) if num_gpus > 0
                  else max(1, min(4, int(float(resources.get("CPU", 1.0)) // max(num_cpus,
                                                                                  1e-3)))))
    if actors < 1:
        raise UserError("--actors must be at least 1")
    remote = ray.remote(DescribeWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=2, max_restarts=1,
        max_task_retries=1)
    pool = [remote.remote(spec, dict(vocabulary), num_frames, max_side) for _ in range(actors)]
    try:
        infos = ray.get([a.ready.remote() for a in pool])
    except Exception as e:  # the backend failed to load in an actor
        for a in pool:
            ray.kill(a)
        cause = _ray_cause(e)
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"the describe actors failed to start: {_ray_message(cause)}") from None
    hosts = Counter(i["host"] for i in infos)
    echo(f"{actors} Ray actor(s) ({num_gpus:g} GPU, {num_cpus:g} CPU each) on "
         f"{len(hosts)} node(s), backend {spec.name}")
    return pool, str(infos[0]["model"])


def _run_ray(pool: list[Any], todo: Sequence[tuple[str, list[str]]],
             paths: Mapping[str, str], writer: _Writer, per_actor: int = 2) -> None:
    """Videos fanned out to the actors, ``per_actor`` in flight on each."""
    import ray
    from ray.exceptions import RayActorError

    pending = deque(todo)
    load = {i: 0 for i in range(len(pool))}
    alive = set(load)
    inflight: dict[Any, tuple[int, str]] = {}

    def fill(i: int) -> None:
        while i in alive and pending and load[i] < per_actor:
            video, classes = pending.popleft()
            ref = pool[i].describe_video.remote(video, classes, paths.get(video))
            inflight[ref] = (i, video)
            load[i] += 1

    for i in list(alive):
        fill(i)
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        ref = ready[0]
        i, video = inflight.pop(ref)
        load[i] -= 1
        try:
            records = ray.get(ref)
        except RayActorError as e:  # the actor died for good (restarts used up)
            alive.discard(i)
            writer.fail(video, e)
            if not alive:
                raise UserError(f"every describe actor died (the last while describing "
                                f"{video}: {_ray_message(e)[:300]}); the records written "
                                "so far are kept, rerun to go on") from None
        except Exception as e:
            writer.fail(video, e)
        else:
            writer.write(records)
        fill(i)
        if not inflight and pending:  # a dead actor's share goes to the living
            for j in list(alive):
                fill(j)


def run_describe(dataset: WTALDataset, out: str | os.PathLike[str], spec: BackendSpec, *,
                 videos: str | os.PathLike[str] | None = None, num_frames: int = 8,
                 max_side: int = 0, workers: int = 2, use_ray: bool = False,
                 ray_address: str | None = None, actors: int | None = None,
                 num_gpus: float | None = None, num_cpus: float = 1.0,
                 allow_mixed: bool = False, skip_missing_videos: bool = False,
                 max_failures: int = 20, limit: int | None = None, progress: bool = True,
                 echo: Echo = print) -> DescribeSummary:
    """Describe every (training video, labelled class) pair of ``dataset`` not yet in the
    store ``out``. See the module docstring; returns what was done."""
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if num_frames < 1:
        raise UserError("--num-frames must be at least 1")
    if workers < 1 or max_failures < 1:
        raise UserError("--workers and --max-failures must be at least 1")
    needs_frames = backend_class(spec.name).needs_frames
    paths: dict[str, str] = {}
    if needs_frames and videos is None:
        raise UserError(f"backend {spec.name!r} watches the videos: give --videos DIR (one "
                        "<name>.mp4/.avi/... or frame folder per training video)")
    with store_lock(out):
        have, moved = open_store(out, echo)
        summary = DescribeSummary(store=str(out), needed=len(needed_pairs(dataset)),
                                  present=0, repaired=str(moved) if moved else None)
        needed = set(needed_pairs(dataset))
        summary.present = sum(1 for p in have if p in needed)
        todo = plan(dataset, have)
        if needs_frames and todo:
            index = index_videos(videos)  # type: ignore[arg-type]
            missing = [v for v, _ in todo if v not in index]
            if missing and not skip_missing_videos:
                shown = ", ".join(missing[:_SHOWN])
                more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
                raise UserError(f"--videos {videos}: {len(missing)} training video(s) have "
                                f"no file or frame folder: {shown}{more}; add them, or pass "
                                "--skip-missing-videos to describe the others")
            summary.missing_videos = missing
            todo = [(v, c) for v, c in todo if v in index]
            paths = {v: str(index[v]) for v, _ in todo}
        if limit is not None:
            todo = todo[:max(0, limit)]
        summary.videos_todo = len(todo)
        n_pairs = sum(len(c) for _, c in todo)
        echo(f"{out}: {summary.present} of {summary.needed} pairs present; {n_pairs} pair(s) "
             f"of {len(todo)} video(s) to describe with backend {spec.name}"
             + (f" ({spec.model})" if spec.model else ""))
        if not todo:
            summary.seconds = time.perf_counter() - t0
            return summary

        started_ray = False
        pool: list[Any] = []
        worker: DescribeWorker | None = None
        writer: _Writer | None = None
        try:
            if use_ray:
                started_ray = _start_ray(ray_address)
                pool, model = _make_actors(spec, dataset.vocabulary, num_frames, max_side,
                                           actors, num_gpus, num_cpus, echo)
            else:
                worker = DescribeWorker(spec, dataset.vocabulary, num_frames, max_side)
                model = worker.backend.model
            summary.model = model
            if not allow_mixed:
                _check_mixed(have, spec.name, model, out)
            writer = _Writer(out, summary, len(todo), progress, max_failures)
            if use_ray:
                _run_ray(pool, todo, paths, writer)
            else:
                _run_local(worker, todo, paths, writer, workers)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            if writer is not None:
                writer.close()
            echo(f"interrupted: {summary.written} record(s) written to {out} are kept; the "
                 "videos in flight are not. Rerun the same command to go on")
            raise
        finally:
            if writer is not None:
                writer.close()
            if worker is not None:
                worker.close()
            if pool:
                import ray

                for a in pool:
                    ray.kill(a)
            if started_ray:
                import ray

                ray.shutdown()
            summary.seconds = time.perf_counter() - t0
    return summary


# =========================================================================== check

# common action verbs (base forms); with their -ing / -s / -ed forms they make the check's
# "action verb" test, together with the dataset's own per-class verbs
ACTION_VERBS = frozenset("""
accelerate aim approach arch balance bat bend block bounce bowl box brush carry catch chase
chop clap clean climb close crawl crouch cut dance deliver dig dive dodge drag draw dribble
drink drive drop dunk eat extend fall fight flip fly fold follow grab grip hammer hang hit
hold hop hurl jog jump jerk kick kneel knock land lean leap lift lower lunge mix move open
paddle paint pass pedal perform pick pitch place plant play pole pour press pull punch push
putt race raise reach release ride roll rotate row run sail saw score serve shake shoot
shovel skate ski skip slam slide smash spike spin sprint squat stand step stir stretch
strike surf swim swing tackle take tap throw tie toss touch turn twist vault wait walk wash
wave whip wipe wrap write yank rise sit stop start begin end finish launch fire kneel hurdle
bowl flick shuffle juggle
""".split())
_TERMINAL = (".", "!", "?", '"', "'", ")", "]", "\u201d", "\u2019", "\u3002")


def _stems(token: str) -> set[str]:
    """The token and its likely base forms: 'running' -> run, 'vaults' -> vault,
    'carried' -> carry, 'dives' -> dive (a few suffix rules, good enough for a check)."""
    out = {token}
    for suffix in ("ing", "ed", "es", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 2:
            base = token[: -len(suffix)]
            out |= {base, base + "e"}
            if len(base) >= 3 and base[-1] == base[-2]:
                out.add(base[:-1])
            if base.endswith("i"):
                out.add(base[:-1] + "y")
    return out


def _verb_forms(verbs: Sequence[str]) -> set[str]:
    forms: set[str] = set()
    for v in verbs:
        head = v.strip().lower().split(" ")[0] if v.strip() else ""
        if head:
            forms |= {head, gerund(head), third_person(head), head + "ed", head + "d"}
    return forms


def _word_stats(counts: Sequence[int]) -> dict[str, float]:
    if not counts:
        return {}
    a = np.asarray(counts, dtype=np.float64)
    return {"min": int(a.min()), "p5": float(np.percentile(a, 5)),
            "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
            "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def _raw_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def check_store(path: str | os.PathLike[str], dataset: WTALDataset) -> dict[str, Any]:
    """Quality of a description store for ``dataset`` (a JSON-able report; see
    ``format_check``). ``report["ok"]``: every pair present and no empty answer."""
    p = Path(path).expanduser()
    if tail_is_corrupt(p):
        raise StoreError(f"{p}: the last line is cut off (a crash while it was written); "
                         "`mllm4wtal describe` with the same --out moves it aside and "
                         "describes its pair again")
    store = read_store(p)
    needed = needed_pairs(dataset)
    need_set = set(needed)
    missing = [pair for pair in needed if pair not in store]
    extra = sorted(pair for pair in store if pair not in need_set)
    lines = _raw_lines(p)

    class_words = {c: {s for t in tokenize(humanize(c)) if not is_stopword(t)
                       for s in _stems(t)} for c in dataset.classes}
    generic = _verb_forms(sorted(ACTION_VERBS))
    empty: dict[str, list[Pair]] = {"key": [], "complete": []}
    truncated: dict[str, list[Pair]] = {"key": [], "complete": []}
    unrelated: dict[str, list[Pair]] = {"key": [], "complete": []}
    no_class: dict[str, list[Pair]] = {"key": [], "complete": []}
    words: dict[str, list[int]] = {"key": [], "complete": []}
    seconds: list[float] = []
    sources: Counter[tuple[str, str]] = Counter()
    for pair in needed:
        rec = store.get(pair)
        if rec is None:
            continue
        sources[(rec.backend, rec.model)] += 1
        if isinstance(rec.extra.get("seconds"), int | float):
            seconds.append(float(rec.extra["seconds"]))
        finish = rec.extra.get("finish") if isinstance(rec.extra.get("finish"), dict) else {}
        verbs = generic | _verb_forms(dataset.vocabulary.get(rec.cls, {}).get("verbs", []))
        cwords = class_words.get(rec.cls) or {s for t in tokenize(humanize(rec.cls))
                                              for s in _stems(t)}
        for kind in ("key", "complete"):
            text = getattr(rec, kind).strip()
            toks = tokenize(text)
            words[kind].append(len(toks))
            if not text:
                empty[kind].append(pair)
                continue
            how = str(finish.get(kind, ""))
            if how == "length" or (how != "stop" and not text.endswith(_TERMINAL)):
                truncated[kind].append(pair)
            stems = set().union(*(_stems(t) for t in toks)) if toks else set()
            names_class = bool(stems & cwords)
            if not names_class:
                no_class[kind].append(pair)
            if not names_class and not (stems & verbs):
                unrelated[kind].append(pair)

    def pairs(xs: Sequence[Pair]) -> list[list[str]]:
        return [list(x) for x in xs]

    report: dict[str, Any] = {
        "store": str(p), "dataset": dataset.name, "records": len(store), "lines": lines,
        "needed": len(needed), "present": len(needed) - len(missing),
        "missing": pairs(missing), "other_pairs": pairs(extra),
        "sources": [{"backend": b, "model": m, "pairs": n} for (b, m), n in
                    sources.most_common()],
        "empty": {k: pairs(v) for k, v in empty.items()},
        "truncated": {k: pairs(v) for k, v in truncated.items()},
        "no_class_word": {k: pairs(v) for k, v in no_class.items()},
        "unrelated": {k: pairs(v) for k, v in unrelated.items()},
        "words": {k: _word_stats(v) for k, v in words.items()},
        "seconds": ({"total": round(sum(seconds), 2),
                     "mean_per_pair": round(statistics.fmean(seconds), 4)} if seconds else {}),
    }
    report["ok"] = not missing and not empty["key"] and not empty["complete"]
    return report


def _shown(pairs: Sequence[Sequence[str]]) -> str:
    if not pairs:
        return ""
    s = ", ".join(f"({v}, {c})" for v, c in pairs[:_SHOWN])
    return f": {s}" + (f" and {len(pairs) - _SHOWN} more" if len(pairs) > _SHOWN else "")


def format_check(report: Mapping[str, Any]) -> str:
    """The report of ``check_store`` as lines for a person."""
    r = report
    dup = r["lines"] - r["records"]
    out = [f"store {r['store']}: {r['records']} record(s)"
           + (f" ({dup} earlier version(s) of re-described pairs)" if dup > 0 else ""),
           f"dataset {r['dataset']}: {r['needed']} training (video, class) pairs"]
    for s in r["sources"]:
        out.append(f"  backend {s['backend']}" + (f", model {s['model']}" if s["model"] else "")
                   + f": {s['pairs']} pair(s)")
    miss = r["missing"]
    out.append(f"coverage: {r['present']} of {r['needed']} pairs"
               + (f"; {len(miss)} missing{_shown(miss)}" if miss else " (complete)"))
    if r["other_pairs"]:
        out.append(f"records of pairs this dataset does not train on (ignored): "
                   f"{len(r['other_pairs'])}{_shown(r['other_pairs'])}")
    for title, key in (("empty answers", "empty"),
                       ("truncated answers (token limit, or cut mid-sentence)", "truncated"),
                       ("answers naming neither the class nor an action verb", "unrelated"),
                       ("answers that never name the class", "no_class_word")):
        k, c = r[key]["key"], r[key]["complete"]
        line = f"{title}: key {len(k)}, complete {len(c)}"
        if k or c:
            line += _shown([*k, *c])
        out.append(line)
    for kind in ("key", "complete"):
        st = r["words"].get(kind) or {}
        if st:
            out.append(f"{kind} length in words: min {st['min']}, median {st['median']:g}, "
                       f"mean {st['mean']:g}, p95 {st['p95']:g}, max {st['max']}")
    if r["seconds"]:
        out.append(f"time: {r['seconds']['mean_per_pair']:.3f} s per pair, "
                   f"{r['seconds']['total'] / 60:.1f} min in all")
    if r["ok"]:
        out.append("verdict: usable for training (text.backend=file text.store=...)")
    elif miss:
        out.append("verdict: training refuses this store (missing pairs) unless "
                   "text.fallback_to_template=true; describe the missing pairs by rerunning "
                   "`mllm4wtal describe` with this --out")
    else:
        out.append("verdict: empty answers; delete those lines and rerun `mllm4wtal "
                   "describe`, or re-describe them")
    return "\n".join(out)


def summary_dict(summary: DescribeSummary) -> dict[str, Any]:
    return {**asdict(summary), "complete": summary.complete}


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


__all__ = ["ACTION_VERBS", "DescribeSummary", "DescribeWorker", "check_store", "format_check",
           "load_describe_dataset", "open_store", "plan", "run_describe", "store_lock"]
