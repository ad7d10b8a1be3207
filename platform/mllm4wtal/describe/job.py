"""The ``describe`` job: which (training video, labelled class) pairs are still to describe,
and the run that describes them (see the package docstring)."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mllm4wtal.config import PRESETS, load_config
from mllm4wtal.data.load import load_from_config
from mllm4wtal.data.types import WTALDataset
from mllm4wtal.data.wtal_format import annotation_dir, load_annotations_only
from mllm4wtal.describe.backends import BackendSpec, backend_class
from mllm4wtal.describe.backends.frames import index_videos
from mllm4wtal.describe.check import shown
from mllm4wtal.describe.pool import make_actors, run_local, run_ray
from mllm4wtal.describe.worker import DescribeWorker
from mllm4wtal.describe.writer import DescribeSummary, Echo, Writer, open_store, store_lock
from mllm4wtal.errors import UserError
from mllm4wtal.text.store import DescriptionRecord, Pair, needed_pairs


def load_describe_dataset(source: str, overrides: Sequence[str] = ()) -> WTALDataset:
    """The dataset whose training pairs are described: a preset or config YAML (with
    ``--set`` overrides, e.g. ``data.root``), or a ``<Name>-Annotations`` directory, or a
    directory holding exactly one. WTAL-layout datasets are read from their annotations
    only; the features are not loaded."""
    p = Path(source).expanduser()
    if source in PRESETS or (p.is_file() and p.suffix.lower() in (".yaml", ".yml")):
        dc = load_config(source, list(overrides)).data
        if dc.format != "wtal" or not dc.root:  # synthetic is built; the rest needs data.root
            return load_from_config(dc)
        ann = annotation_dir(dc.root, dc.name)
        if not ann.is_dir():
            raise UserError(f"--dataset {source}: no annotation directory {ann}; check "
                            "data.root and data.name")
        return load_annotations_only(ann, dc.name, train_subset=dc.train_subset,
                                     test_subset=dc.test_subset, fps=dc.fps)
    if overrides:
        raise UserError("--set applies to a preset or config YAML, not to an annotation "
                        "directory")
    if p.is_dir():
        found = [p] if (p / "videoname.npy").is_file() else sorted(
            d for d in p.glob("*-Annotations") if d.is_dir())
        if len(found) == 1:
            return load_annotations_only(found[0], found[0].name.removesuffix("-Annotations"))
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


def check_mixed(have: Mapping[Pair, DescriptionRecord], backend: str, model: str,
                out: Path) -> None:
    """A store holds one backend/model's answers unless ``--allow-mixed``."""
    other = Counter((r.backend, r.model) for r in have.values()
                    if (r.backend, r.model) != (backend, model))
    if other:
        (b, m), n = other.most_common(1)[0]
        raise UserError(f"{out} already holds {sum(other.values())} record(s) of another "
                        f"backend/model (e.g. {n} of backend={b!r} model={m!r}); this run is "
                        f"backend={backend!r} model={model!r}. Write to another --out, or "
                        "pass --allow-mixed to fill in its missing pairs anyway")


def with_videos(todo: list[tuple[str, list[str]]], videos: str | os.PathLike[str],
                skip_missing: bool, summary: DescribeSummary
                ) -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """The videos of ``todo`` that have a file or frame folder in ``videos``, and their
    paths; a missing one stops the job unless ``skip_missing``."""
    index = index_videos(videos)
    missing = [v for v, _ in todo if v not in index]
    if missing and not skip_missing:
        raise UserError(f"--videos {videos}: {len(missing)} training video(s) have "
                        f"no file or frame folder: {shown(missing)}; add them, or pass "
                        "--skip-missing-videos to describe the others")
    summary.missing_videos = missing
    todo = [(v, c) for v, c in todo if v in index]
    return todo, {v: str(index[v]) for v, _ in todo}


def run_describe(dataset: WTALDataset, out: str | os.PathLike[str], spec: BackendSpec, *,
                 videos: str | os.PathLike[str] | None = None, num_frames: int = 8,
                 max_side: int = 0, workers: int = 2, use_ray: bool = False,
                 ray_address: str | None = None, actors: int | None = None,
                 num_gpus: float | None = None, num_cpus: float = 1.0,
                 allow_mixed: bool = False, skip_missing_videos: bool = False,
                 max_failures: int = 20, limit: int | None = None, progress: bool = True,
                 echo: Echo = print) -> DescribeSummary:
    """Describe every (training video, labelled class) pair of ``dataset`` not yet in the
    store ``out``. See the package docstring; returns what was done."""
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if num_frames < 1:
        raise UserError("--num-frames must be at least 1")
    if workers < 1 or max_failures < 1:
        raise UserError("--workers and --max-failures must be at least 1")
    needs_frames = backend_class(spec.name).needs_frames
    if needs_frames and videos is None:
        raise UserError(f"backend {spec.name!r} watches the videos: give --videos DIR (one "
                        "<name>.mp4/.avi/... or frame folder per training video)")
    with store_lock(out):
        have, moved = open_store(out, echo)
        needed = needed_pairs(dataset)
        summary = DescribeSummary(store=str(out), needed=len(needed),
                                  present=len(set(needed) & set(have)),
                                  repaired=str(moved) if moved else None)
        todo = plan(dataset, have)
        paths: dict[str, str] = {}
        if needs_frames and todo:
            todo, paths = with_videos(todo, videos, skip_missing_videos,  # type: ignore[arg-type]
                                      summary)
        if limit is not None:
            todo = todo[:max(0, limit)]
        summary.videos_todo = len(todo)
        n_pairs = sum(len(c) for _, c in todo)
        echo(f"{out}: {summary.present} of {summary.needed} pairs present; {n_pairs} pair(s) "
             f"of {len(todo)} video(s) to describe with backend {spec.name}"
             + (f" ({spec.model})" if spec.model else ""))
        if todo:
            _describe(dataset, out, spec, have, todo, paths, summary, num_frames=num_frames,
                      max_side=max_side, workers=workers, use_ray=use_ray,
                      ray_address=ray_address, actors=actors, num_gpus=num_gpus,
                      num_cpus=num_cpus, allow_mixed=allow_mixed, max_failures=max_failures,
                      progress=progress, echo=echo)
        summary.seconds = time.perf_counter() - t0
    return summary


def _describe(dataset: WTALDataset, out: Path, spec: BackendSpec,
              have: Mapping[Pair, DescriptionRecord], todo: list[tuple[str, list[str]]],
              paths: Mapping[str, str], summary: DescribeSummary, *, num_frames: int,
              max_side: int, workers: int, use_ray: bool, ray_address: str | None,
              actors: int | None, num_gpus: float | None, num_cpus: float, allow_mixed: bool,
              max_failures: int, progress: bool, echo: Echo) -> None:
    """Start the workers (here, or Ray actors), hand out ``todo``, clean up."""
    started_ray = False
    handles: list[Any] = []
    worker: DescribeWorker | None = None
    writer: Writer | None = None
    try:
        if use_ray:
            from mllm4wtal.ray_session import start_ray

            started_ray = start_ray(ray_address)
            handles, actor_ids, model = make_actors(spec, dataset.vocabulary, num_frames,
                                                    max_side, actors, num_gpus, num_cpus, echo)
        else:
            worker = DescribeWorker(spec, dataset.vocabulary, num_frames, max_side)
            model = worker.backend.model
        summary.model = model
        if not allow_mixed:
            check_mixed(have, spec.name, model, out)
        writer = Writer(out, summary, len(todo), progress, max_failures)
        if use_ray:
            run_ray(handles, actor_ids, todo, paths, writer)
        else:
            run_local(worker, todo, paths, writer, workers)  # type: ignore[arg-type]
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
        if handles or started_ray:
            import ray

            for a in handles:
                ray.kill(a)
            if started_ray:
                ray.shutdown()
