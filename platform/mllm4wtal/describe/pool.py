"""Handing the videos out: to threads of this process (one backend), or to a pool of Ray
actors (one backend, one model each; ``ray.util.ActorPool``). Either way each video's result
goes to the one writer as soon as it is back, so a crash loses at most the videos in flight.

Ray: each actor takes two videos at a time (``max_concurrency=2``), so one video's frames are
decoded while the other's prompts are generated. An actor that dies is restarted by Ray and
its video retried once (``max_restarts=1``, ``max_task_retries=1``); one that dies for good
fails its videos in flight, and the living actors take the rest.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from mllm4wtal.describe.backends import BackendSpec
from mllm4wtal.describe.worker import DescribeWorker, VideoResult
from mllm4wtal.describe.writer import Writer
from mllm4wtal.errors import UserError

Todo = Sequence[tuple[str, list[str]]]  # (video, its classes still to describe)
PER_ACTOR = 2  # videos in flight on each actor


def run_local(worker: DescribeWorker, todo: Todo, paths: Mapping[str, str], writer: Writer,
              workers: int) -> None:
    """Videos to ``workers`` threads; at most ``workers`` in flight (so an interrupt loses
    at most those)."""
    pending = deque(todo)
    threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe")
    inflight: set[Future[VideoResult]] = set()
    try:
        while pending or inflight:
            while pending and len(inflight) < workers:
                video, classes = pending.popleft()
                inflight.add(threads.submit(worker.describe_video, video, classes,
                                            paths.get(video)))
            done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                writer.take(fut.result())
    finally:
        threads.shutdown(wait=False, cancel_futures=True)


def ray_message(e: BaseException) -> str:
    """The worker's own error of a Ray error, without Ray's traceback: an actor that died in
    its constructor carries only text, whose last 'SomeError: message' line is the one; an
    actor whose process died says why in its unindented lines (the indented ones are ids)."""
    text = str(getattr(e, "error_msg", "") or e)
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        m = re.match(r"^([\w.]+(?:Error|Exception|Interrupt)): (.+)$", line)
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    said = [ln for ln in text.splitlines() if ln.strip() and not ln[0].isspace()]
    return " ".join(" ".join(said).split())[:400]


def make_actors(spec: BackendSpec, vocabulary: Mapping[str, Any], num_frames: int,
                max_side: int, actors: int | None, num_gpus: float | None, num_cpus: float,
                echo: Callable[[str], None]) -> tuple[list[Any], list[str], str]:
    """Start the actors and wait until each has loaded its backend: (handles, actor ids,
    model). A backend that fails to load is one UserError, before any video."""
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    if num_gpus is None:
        num_gpus = 1.0 if spec.name == "hf" and gpus > 0 else 0.0
    if num_gpus > 0 and gpus < num_gpus:
        raise UserError(f"--num-gpus {num_gpus} per actor, but the Ray cluster has {gpus:g} "
                        "GPU(s); use --num-gpus 0 for CPU actors")
    if actors is None:
        cpus = float(resources.get("CPU", 1.0))
        actors = (int(gpus // num_gpus) if num_gpus > 0
                  else max(1, min(4, int(cpus // max(num_cpus, 1e-3)))))
    if actors < 1:
        raise UserError("--actors must be at least 1")
    remote = ray.remote(DescribeWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=PER_ACTOR, max_restarts=1,
        max_task_retries=1)
    handles = [remote.remote(spec, dict(vocabulary), num_frames, max_side)
               for _ in range(actors)]
    try:
        infos = ray.get([a.ready.remote() for a in handles])
    except Exception as e:  # the backend failed to load in an actor
        for a in handles:
            ray.kill(a)
        cause = getattr(e, "cause", None) or e
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"the describe actors failed to start: {ray_message(cause)}") from None
    hosts = Counter(i["host"] for i in infos)
    echo(f"{actors} Ray actor(s) ({num_gpus:g} GPU, {num_cpus:g} CPU each) on "
         f"{len(hosts)} node(s), backend {spec.name}")
    return handles, [i["actor_id"] for i in infos], str(infos[0]["model"])


def run_ray(handles: Sequence[Any], actor_ids: Sequence[str], todo: Todo,
            paths: Mapping[str, str], writer: Writer) -> None:
    """The videos through a ``ray.util.ActorPool`` of the actors, ``PER_ACTOR`` in flight on
    each. A worker's failure comes back as its result; an actor that died for good fails
    the videos it had in flight (told apart by the actor id the error names)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util import ActorPool

    id_of = dict(zip(map(id, handles), actor_ids, strict=True))
    on_actor: dict[str, list[str]] = {a: [] for a in actor_ids}  # videos in flight
    where: dict[str, str] = {}  # video -> the actor it is in flight on
    lost: Counter[str] = Counter()  # per actor: its tasks that ended in a RayActorError
    resolved: set[str] = set()
    last = ("", "")  # the last video an actor's death failed, and why

    def submit(actor: Any, item: tuple[str, list[str]]) -> Any:
        video, classes = item
        where[video] = id_of[id(actor)]
        on_actor[where[video]].append(video)
        return actor.describe_video.remote(video, classes, paths.get(video))

    pool = ActorPool([a for a in handles for _ in range(PER_ACTOR)])
    for item in todo:
        pool.submit(submit, item)
    while pool.has_next():
        try:
            result = pool.get_next_unordered()
        except RayTaskError as e:  # raised by the worker: an error every video would repeat
            raise (e.cause if isinstance(e.cause, UserError) else e) from None
        except RayActorError as e:  # the actor died (restarts used up) or is unreachable
            why = ray_message(e)
            if e.actor_id not in on_actor:
                raise UserError(f"a describe actor failed: {why[:300]}; the records written "
                                "so far are kept, rerun to go on") from None
            lost[e.actor_id] += 1
            if lost[e.actor_id] == len(on_actor[e.actor_id]):  # all its videos left failed
                for video in on_actor[e.actor_id]:
                    resolved.add(video)
                    last = (video, why)
                    writer.fail(video, why)
                on_actor[e.actor_id], lost[e.actor_id] = [], 0
        else:
            on_actor[where[result.video]].remove(result.video)
            resolved.add(result.video)
            writer.take(result)
    if len(resolved) < len(todo):  # videos never handed out: no actor is left alive
        raise UserError(f"every describe actor died (the last while describing {last[0]}: "
                        f"{last[1][:300]}); the records written so far are kept, rerun to "
                        "go on")

