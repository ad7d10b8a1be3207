"""``mllm4wtal sweep``: a search-space file -> Ray Tune trials searched by Optuna, pruned by
ASHA, logged to MLflow; resumable.

The driver validates the file, creates the MLflow store, experiment and parent run, keeps a
copy of the file in the experiment directory (``sweep.yaml``, what ``--resume`` reads),
puts the dataset in the object store once, and runs ``Tuner.fit``; it ends the parent run
and returns a record per trial. ``mllm4wtal sweep`` then writes the summary
(``report.summary``: ``<experiment_dir>/summary/`` and the parent run's artifacts) and prints
the best config and the command that opens the MLflow UI. Inside a Ray job (``ray job
submit``) or with ``RAY_ADDRESS`` set it joins that cluster; otherwise it starts Ray
in-process (``mllm4wtal.ray_session``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from mllm4wtal import files
from mllm4wtal.config import to_flat
from mllm4wtal.data.load import load_from_config
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import check_ray_version, start_ray
from mllm4wtal.sweep.chosen import ChosenTest, log_chosen, test_chosen
from mllm4wtal.sweep.faults import (
    SpaceReserve,
    fault_line,
    one_line,
    resume_hint,
    storage_fault,
)
from mllm4wtal.sweep.mlflow_tags import SCORE_TAG, SEARCH_SPACE_TAG, SWEEP_TAG
from mllm4wtal.sweep.mlflow_view import sweep_runs_url
from mllm4wtal.sweep.progress import sweep_reporter
from mllm4wtal.sweep.records import (
    SCORE_RULES,
    TrialRecord,
    drop_orphans,
    mark_killed,
    rank_records,
    trial_record,
)
from mllm4wtal.sweep.remote import fetch_checkpoint, forget, holds, is_remote, local_dir, pull, push
from mllm4wtal.sweep.search import (
    fail_running,
    make_scheduler,
    make_searcher,
    optuna_storage_url,
)
from mllm4wtal.sweep.spaces.search_space import SearchSpaceFile, load_search_space
from mllm4wtal.sweep.tracker import PARENT_RUN_FILE, TRIAL_ARTIFACTS, SweepTracker
from mllm4wtal.sweep.trainable import run_trial, shared_text_bundles
from mllm4wtal.sweep.trust import SigningCallback, sign_tuner, verify
from mllm4wtal.sweep.tune_callback import MlflowTuneCallback

logger = logging.getLogger(__name__)

SPACE_COPY = "sweep.yaml"
SETTINGS = "sweep.json"  # the --set overrides and flags the sweep was started with
STUDY_COPY = "study.yaml"  # marks the experiment directory of an ablation study (sweep.ablate)
SQLITE = "sqlite:///"
#: the driver's own files of a sweep, copied to a remote experiment directory (sweep.remote)
DRIVER_FILES = (SPACE_COPY, SETTINGS, PARENT_RUN_FILE)


@dataclass
class SweepResult:
    experiment_dir: Path
    tracking_uri: str
    parent_run_id: str
    records: list[TrialRecord]
    interrupted: bool
    chosen: ChosenTest | None = None  # the trial chosen on select, tested once


def trial_params(config: dict, *, base: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial config (flat overrides) -> the flat training config logged to MLflow."""
    return {**base, **config}


def checkpoint_dir(trial: Any, scratch: Path | None = None) -> Path | None:
    """Where the trial's latest checkpoint (best.pt, predictions.json, ...) lies locally; a
    checkpoint in remote storage has its artifacts copied to ``<scratch>/<trial id>``."""
    into = scratch / str(trial.trial_id) if scratch is not None else None
    return fetch_checkpoint(getattr(trial, "checkpoint", None), TRIAL_ARTIFACTS, into)


def tune_storage(storage_path: str) -> str:
    """Ray Tune's ``storage_path``: a local folder as a plain path, a URI as it is."""
    return str(Path(storage_path)) if "://" not in storage_path else storage_path


def make_trainable(base: dict[str, Any], dataset: Any, resources: Any, configs: Any,
                   fn: Any = run_trial) -> Any:
    """``fn`` (``run_trial``, or ``run_cell`` of a study) with the flat base config, the
    dataset and the text bundles of ``configs`` (built here once; all put in the object
    store once, shared by every trial of a node) bound, asking ``resources`` (cpu, gpu)
    per trial."""
    texts = shared_text_bundles(configs, dataset)
    return tune.with_resources(tune.with_parameters(fn, base=base, dataset=dataset,
                                                    texts=texts),
                               {"cpu": resources.cpu, "gpu": resources.gpu})


def unfinished(grid: tune.ResultGrid) -> list[str | None]:
    """Per result of ``grid``, in order: the trial's id when Tune had not ended it (PENDING,
    PAUSED, RUNNING: the sweep was interrupted), else None. Ray gives a trial's status only
    on its private ``ExperimentAnalysis`` (hence the Ray version check)."""
    check_ray_version()
    return [None if t.status in ("TERMINATED", "ERROR") else str(t.trial_id)
            for t in grid._experiment_analysis.trials]


def fit(tuner: tune.Tuner) -> tune.ResultGrid | None:
    """``tuner.fit()``; a first Ctrl-C makes Tune save its state and return, a second one
    ends here with None."""
    try:
        return tuner.fit()
    except KeyboardInterrupt:
        return None


@contextlib.contextmanager
def ray_started() -> Iterator[None]:
    """Ray for the block (``ray_session.start_ray``: the cluster in ``$RAY_ADDRESS``, else a
    private local Ray); a Ray this block started is shut down at its end."""
    started = start_ray()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def load(path: str | Path, overrides: list[str], storage: str | None = None,
         tracking_uri: str | None = None, edits: list[str] | None = None) -> SearchSpaceFile:
    """Validate a search-space file; ``storage`` and ``tracking_uri`` override its own,
    ``edits`` its sections (``--space-set``)."""
    edits = [*(edits or []), *storage_edits(storage, tracking_uri)]
    space = load_search_space(path, overrides, edits)
    if "://" in space.experiment_dir and not space.searcher.storage:
        raise UserError(f"{space.where}: searcher.storage: the Optuna study cannot live in "
                        f"remote storage {space.storage_path}; give an RDB URL (--space-set "
                        "searcher.storage=postgresql+psycopg2://user@host/optuna) or a shared "
                        "sqlite path")
    check_job_storage(space.where, space.experiment_dir)
    return space


def storage_edits(storage: str | None, tracking_uri: str | None) -> list[str]:
    """``--storage`` and ``--tracking-uri`` as edits of a file's own keys, so that defaults
    that follow them (the MLflow store lives in the storage folder) follow the new value."""
    edits = []
    if storage:
        root = storage if "://" in storage else str(Path(storage).expanduser().resolve())
        edits.append(f"storage.path={root}")
    if tracking_uri:
        edits.append(f"mlflow.tracking_uri={tracking_uri}")
    return edits


def check_job_storage(where: str, experiment_dir: str) -> None:
    """Refuse an experiment directory inside the temporary working directory of a Ray job."""
    job_dir = os.getcwd()
    if "runtime_resources" in job_dir and experiment_dir.startswith(job_dir):
        raise UserError(f"{where}: storage resolves to {experiment_dir}, inside "
                        "the temporary working directory of this Ray job, which is deleted "
                        "with it; pass --storage /an/absolute/shared/path (or a URI)")


def claim(space: SearchSpaceFile, overrides: list[str], edits: list[str] | None = None
          ) -> None:
    """Create the experiment directory of a new sweep; an existing sweep is never reused. A
    remote one (``sweep.remote``) gets the driver's files in its local mirror and a copy."""
    remote = is_remote(space.experiment_dir)
    exp = local_dir(space.experiment_dir)
    files.check_name(exp, "--storage, or the file's name:")
    taken = remote and holds(space.experiment_dir, SPACE_COPY)
    if remote and not taken:
        forget(space.experiment_dir)  # a stale mirror of a sweep the storage no longer has
    if taken or (exp / SPACE_COPY).exists():
        raise UserError(f"{space.experiment_dir} already holds the sweep '{space.name}'; "
                        f"continue it with `mllm4wtal sweep --resume {space.experiment_dir}`, "
                        "or give the new one another name (key `name:`) or storage "
                        "(--storage)")
    if (exp / STUDY_COPY).exists():
        raise UserError(f"{exp} holds the ablation study '{space.name}'; give the sweep "
                        "another name (key `name:`) or storage (--storage)")
    files.ensure_dir(exp, fix="--storage")  # writable, before Ray or MLflow start
    with files.writing(exp / SPACE_COPY, "--storage"):
        shutil.copy2(space.path, exp / SPACE_COPY)
    files.write_text(exp / SETTINGS, json.dumps({
        "source": str(space.path), "overrides": list(overrides),
        # the copy lies in the experiment dir: pin where the sweep writes
        "edits": [*(edits or []), f"storage.path={space.storage_path}",
                  f"mlflow.tracking_uri={space.mlflow.tracking_uri}",
                  f"mlflow.experiment={space.mlflow.experiment}"]}, indent=1),
        force=True, fix="--storage")
    if remote:
        push(exp, space.experiment_dir, DRIVER_FILES)


def reload(experiment_dir: str | Path) -> SearchSpaceFile:
    """The search space a sweep in ``experiment_dir`` (a folder or a URI) was started with."""
    if is_remote(experiment_dir):
        uri = str(experiment_dir).rstrip("/")
        exp = local_dir(uri)
        pull(uri, exp, DRIVER_FILES)  # the storage is the truth: another machine may resume
    else:
        exp = Path(experiment_dir).expanduser().resolve()
    if not (exp / SPACE_COPY).exists() or not (exp / SETTINGS).exists():
        raise UserError(f"{exp} is not a sweep directory (no {SPACE_COPY}); pass the folder "
                        "`mllm4wtal sweep` printed at its start, <storage>/<name>")
    settings = json.loads((exp / SETTINGS).read_text())
    return load(exp / SPACE_COPY, settings["overrides"], edits=settings["edits"])


def plan(space: SearchSpaceFile) -> str:
    s, t = space.scheduler, space.trials
    pruning = (f"ASHA on iterations, rungs from {s.grace_period} (x{s.reduction_factor}) to "
               f"{s.max_t}" if s.type == "asha" else "no pruning")
    lines = [f"sweep '{space.name}': {t.num_samples} trials, {t.max_concurrent} at a time, "
             f"{space.resources.cpu:g} CPU + {space.resources.gpu:g} GPU each; {pruning}",
             f"  {space.mode} {space.metric} over {len(space.params)} parameters: "
             + ", ".join(p.key for p in space.params),
             f"  experiment directory: {space.experiment_dir}",
             f"  MLflow: {space.mlflow.tracking_uri} (experiment '{space.mlflow.experiment}')"]
    return "\n".join(lines)


def conclusion(space: SearchSpaceFile, result: SweepResult) -> str:
    ui = (f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 "
          "--port 5000")
    if result.interrupted:
        return (f"sweep interrupted; continue it with: mllm4wtal sweep --resume "
                f"{space.experiment_dir}\nso far in MLflow: {ui}")
    ranked = rank_records(result.records, space.mode)
    pruned = sum(bool(r["pruned"]) for r in result.records)
    failed = sum(r["status"] == "FAILED" for r in result.records)
    lines = [f"{len(result.records)} trials: {pruned} pruned by ASHA, {failed} failed"]
    if ranked:
        best, chosen = ranked[0], result.chosen
        lines += [f"best trial {best['trial_id']}: {space.metric} = {best['metric']:.4f} "
                  f"on select (its {SCORE_RULES[space.score]}; {best['iterations']} iterations)"]
        if chosen is not None and chosen.test_value is not None:
            lines.append(f"  {chosen.select_split}")
            lines.append(f"  test, once for this trial ({chosen.checkpoint}): {space.metric} = "
                         f"{chosen.test_value:.4f}")
        lines += ["  " + " ".join(f"{k}={v}" for k, v in best["config"].items()),
                  f"  config: {result.experiment_dir / 'summary' / 'best_config.yaml'}"]
    lines.append(f"compare the trials in the MLflow UI: {ui}")
    lines.append(f"  then open: {sweep_runs_url(result.tracking_uri, result.parent_run_id)}")
    return "\n".join(lines)


def stopped_by_fault(space: SearchSpaceFile, tracker: SweepTracker | None,
                     error: BaseException, reserve: SpaceReserve) -> str | None:
    """A sweep that stopped on an exception: its records end FAILED (MLflow parent
    and RUNNING children, with the tag ``error``; RUNNING Optuna trials). Returns the one
    line for a storage fault (disk full, read-only, I/O error), else None (a bug, whose
    traceback the caller keeps). Ray has stopped the trials by now; ``reserve`` is released
    once the line is worded (it tells the free space of the fault), so that the records
    can be written on a full disk."""
    exp = local_dir(space.experiment_dir)
    urls = {"optuna": optuna_storage_url(space),
            "mlflow": tracker.tracking_uri if tracker is not None else ""}
    stores = {k: Path(url.removeprefix(SQLITE)) for k, url in urls.items()
              if url.startswith(SQLITE)}
    fault = storage_fault(error, stores)
    line = None
    if fault is not None:
        path, os_err = fault
        line = fault_line(path or exp, os_err, resume_hint(space.experiment_dir))
    reason = line or one_line(error)
    reserve.release()
    closers: list[Callable[[], Any]] = [lambda: fail_running(space, reason)]
    if tracker is not None:
        closers.append(lambda: tracker.finish("FAILED", error=reason))
    for close in closers:
        try:
            close()
        except Exception:  # the store itself may be what failed; the line still matters
            logger.warning("could not mark the records of '%s' FAILED", space.name,
                           exc_info=True)
    return line


def run_sweep(space: SearchSpaceFile, resume: bool = False, verbose: int = 1) -> SweepResult:
    """Run (or, with ``resume``, continue) the sweep ``space`` describes. A storage fault
    (disk full, ...) ends it with one :class:`UserError` line and FAILED records; ``--resume``
    continues it once the fault is fixed."""
    exp = local_dir(space.experiment_dir)  # the driver's files (a remote one's mirror)
    # before anything is written or unpickled: Ray's state must be the one this user's
    # driver signed (False: Tune saved none yet, the sweep starts afresh)
    restore = verify(space.experiment_dir) if resume else False
    local = not is_remote(space.experiment_dir)
    reserve = SpaceReserve(exp if local else None, resume_hint(space.experiment_dir))
    reserve.hold()
    tracker = None
    try:
        tracker = SweepTracker(exp, space.mlflow.experiment, space.mlflow.tracking_uri,
                               sweep_name=space.name, base_params=to_flat(space.base_config),
                               tags={SWEEP_TAG: space.name, SEARCH_SPACE_TAG: str(space.path),
                                     SCORE_TAG: space.score})
        if not local:  # the parent run's id, for a --resume from anywhere
            push(exp, space.experiment_dir, DRIVER_FILES)
        return _run(space, tracker, restore, verbose)
    except Exception as e:
        line = stopped_by_fault(space, tracker, e, reserve)
        if line is None:
            raise
        raise UserError(line) from None
    finally:
        reserve.release()


def _run(space: SearchSpaceFile, tracker: SweepTracker, restore: bool, verbose: int
         ) -> SweepResult:
    exp = local_dir(space.experiment_dir)
    base = to_flat(space.base_config)
    total = space.base_config.train.iterations
    dataset = load_from_config(space.base_config.data)
    with ray_started():
        trainable = make_trainable(base, dataset, space.resources, [space.base_config])
        callback = MlflowTuneCallback(tracker, functools.partial(trial_params, base=base),
                                      total, metric=space.metric,
                                      run_dir_for=functools.partial(checkpoint_dir,
                                                                    scratch=exp / "trials"),
                                      mode=space.mode, score=space.score,
                                      view_params=[p.key for p in space.params])
        reporter = sweep_reporter(space)  # also before a restore: it picks Tune's output
        if restore:  # verified; the callbacks (the signer too) come back from tuner.pkl
            tuner = tune.Tuner.restore(space.experiment_dir, trainable=trainable,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_searcher(space),
                                            scheduler=make_scheduler(space),
                                            num_samples=space.trials.num_samples,
                                            reuse_actors=True),  # no process start per trial
                run_config=tune.RunConfig(
                    name=space.name, storage_path=tune_storage(space.storage_path),
                    callbacks=[callback, SigningCallback()], verbose=verbose,
                    progress_reporter=reporter,
                    failure_config=tune.FailureConfig(max_failures=space.trials.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            sign_tuner(tuner, space.experiment_dir)
        grid = fit(tuner)
        results = list(grid) if grid is not None else []
        records = [trial_record(r, r.config or {}, total_iterations=total,
                                metric=space.metric, mode=space.mode, score=space.score,
                                gpus=space.resources.gpu)
                   for r in results]
    stopped = unfinished(grid) if grid is not None else []
    for rec, trial_id in zip(records, stopped, strict=True):
        if trial_id is not None:  # never started, or stopped by the interruption: not pruned
            rec["trial_id"] = rec["trial_id"] or trial_id
            rec["status"], rec["pruned"] = "KILLED", False
    if grid is not None:
        drop_orphans(records, tracker)
    running = mark_killed(records, tracker)
    interrupted = running or any(stopped) or len(records) < space.trials.num_samples
    if interrupted:  # Optuna has no KILLED: its open trials FAIL, --resume retries them
        fail_running(space, f"interrupted; {resume_hint(space.experiment_dir)}")
    elif grid is not None:  # every trial Ray knows has ended: what Optuna still runs is orphaned
        fail_running(space, "opened before the driver was killed; the resumed sweep asked "
                     "for these suggestions again", note="superseded")
    chosen = None
    if not interrupted:  # the chosen config meets the test videos once, at the very end
        checkpoints = {rec["trial_id"]: r.checkpoint for rec, r in zip(records, results,
                                                                       strict=True)
                       if r.checkpoint is not None}
        chosen = test_chosen(records, checkpoints, dataset, metric=space.metric,
                             mode=space.mode, score=space.score,
                             data_config=space.base_config.data)
        if chosen is not None:
            log_chosen(tracker, chosen)
    tracker.finish("KILLED" if interrupted else "FINISHED")
    return SweepResult(experiment_dir=exp, tracking_uri=tracker.tracking_uri,
                       parent_run_id=tracker.parent_run_id, records=records,
                       interrupted=interrupted, chosen=chosen)
