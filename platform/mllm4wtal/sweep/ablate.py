"""Ablation studies: ``mllm4wtal ablate`` runs a grid of variants x seeds as Ray Tune trials.

The study file (``sweep.study_file``: its schema and validation) names config variants and
seeds. Every cell (variant, seed) is one training run, i.e. one Ray Tune trial of
:func:`~mllm4wtal.sweep.trainable.run_cell` with fixed hyperparameters: a grid
(``tune.grid_search`` over the cells), FIFO, no pruning, the same resources, dataset sharing
and MLflow tracking as a sweep (``sweep.runner``, ``sweep.tracker``). The MLflow experiment
holds one parent run per study and one child run per cell, tagged ``study``, ``variant``,
``seed`` and ``config_hash``. Cells already finished in the experiment are skipped, so
rerunning a study after an interruption runs only what is missing, and a study is extended
with more seeds (``--seeds 5``) without rerunning the first ones; finished cells of a variant
whose config changed since are refused, never mixed. ``mllm4wtal report`` turns the
experiment into the paper-style table.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm4wtal.config import from_flat, to_flat
from mllm4wtal.sweep.mlflow_tags import (
    CONFIG_TAG,
    KIND_ABLATION,
    KIND_TAG,
    N_CELLS_TAG,
    N_FINISHED_CELLS_TAG,
    N_VARIANTS_TAG,
    PRUNED_TAG,
    REFERENCE_TAG,
    SEED_TAG,
    SEEDS_TAG,
    STUDY_FILE_TAG,
    STUDY_METRIC_TAG,
    STUDY_TAG,
    VARIANT_TAG,
)
from mllm4wtal.sweep.records import TrialRecord, mark_killed, trial_record
from mllm4wtal.sweep.spaces.values import show
from mllm4wtal.sweep.study_file import (
    HASH_EXCLUDED,
    Cell,
    Study,
    StudyError,
    config_hash,
    load_study,
    preflight,
)

STUDY_JSON = "study.json"


@dataclass
class AblationResult:
    experiment_dir: Path
    tracking_uri: str
    experiment: str
    parent_run_id: str
    ran: list[Cell]  # started in this invocation
    skipped: list[Cell]  # finished before
    failed: list[Cell]
    records: list[TrialRecord]  # one per cell run now (with its variant and seed)
    interrupted: bool


def finished_cells(client: Any, experiment_id: str, study_name: str) -> dict[Cell, Any]:
    """The latest FINISHED (not pruned) run of every cell of the study in the experiment."""
    from mllm4wtal.sweep.mlflow_store import search_runs

    query = f"tags.`{STUDY_TAG}` = '{study_name}' and attributes.status = 'FINISHED'"
    out: dict[Cell, Any] = {}
    for run in search_runs(client, experiment_id, query):  # oldest first: the latest wins
        tags = run.data.tags
        if tags.get(PRUNED_TAG) == "true" or VARIANT_TAG not in tags or SEED_TAG not in tags:
            continue
        try:
            out[Cell(tags[VARIANT_TAG], int(tags[SEED_TAG]))] = run
        except ValueError:
            continue
    return out


def check_compatible(study: Study, done: Mapping[Cell, Any]) -> None:
    """Finished cells of a variant must have been run with the config it has now; otherwise
    the table would mix two settings."""
    from mllm4wtal.sweep.mlflow_names import flatten_params

    names = {v.name for v in study.variants}
    for cell, run in done.items():
        if cell.variant not in names:
            continue
        params = study.cell_params(cell)
        if run.data.tags.get(CONFIG_TAG) == config_hash(params):
            continue
        now = flatten_params(params)
        there = dict(run.data.params)
        diff = [f"{k}: {there.get(k, '(absent)')} there, {now[k]} now" for k in sorted(now)
                if k not in HASH_EXCLUDED and there.get(k) != now[k]]
        detail = "; ".join(diff[:4]) or "a config that differs"
        raise StudyError(
            f"{study.where}: MLflow experiment '{study.mlflow.experiment}' already holds "
            f"finished runs of variant '{cell.variant}' trained with another config "
            f"({detail}); rerun with the settings it was started with, or put this one "
            "elsewhere (--storage DIR, or another `name:`)")


def _cell_tags(config: Mapping[str, Any], *, study: str, base: Mapping[str, Any]
               ) -> dict[str, str]:
    cell = config["cell"]
    return {STUDY_TAG: study, VARIANT_TAG: str(cell["variant"]), SEED_TAG: str(cell["seed"]),
            CONFIG_TAG: config_hash({**base, **cell["overrides"]}), KIND_TAG: KIND_ABLATION}


def _cell_params(config: Mapping[str, Any], *, base: Mapping[str, Any]) -> dict[str, Any]:
    return {**base, **config["cell"]["overrides"]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:40] or "variant"


def cell_dirname(trial: Any) -> str:
    """Trial folder names a person can read: ``<variant>_seed<seed>_<trial id>``."""
    cell = trial.config["cell"]
    return f"{_slug(str(cell['variant']))}_seed{cell['seed']}_{trial.trial_id}"


def claim_study(study: Study) -> Path:
    """Create (or reuse) the study's experiment directory; keep a copy of the file and its
    resolved definition there. A sweep's directory is never reused."""
    from mllm4wtal.sweep.runner import SPACE_COPY, STUDY_COPY

    exp = Path(study.experiment_dir)
    if (exp / SPACE_COPY).exists():
        raise StudyError(f"{exp} holds the sweep '{study.name}'; give the study another name "
                         "(key `name:`) or storage (--storage)")
    exp.mkdir(parents=True, exist_ok=True)
    if study.path != (exp / STUDY_COPY).resolve():
        shutil.copy2(study.path, exp / STUDY_COPY)
    (exp / STUDY_JSON).write_text(json.dumps(study.to_json(), indent=1, default=str) + "\n")
    return exp


def plan(study: Study) -> str:
    """What the study runs, printed before it starts."""
    cells = study.cells()
    r = study.resources
    lines = [f"study '{study.name}': {len(study.variants)} variants x {len(study.seeds)} seeds "
             f"({', '.join(map(str, study.seeds))}) = {len(cells)} cells, "
             f"{study.trials.max_concurrent} at a time, {r.cpu:g} CPU + {r.gpu:g} GPU each; "
             f"{study.base_config.train.iterations} iterations, no pruning"]
    for v in study.variants:
        ovr = " ".join(f"{k}={show(x)}" for k, x in v.overrides.items()) or "(base config)"
        mark = "  (reference)" if v.name == study.reference else ""
        lines.append(f"  {v.name}: {ovr}{mark}")
    lines += [f"  experiment directory: {study.experiment_dir}",
              f"  MLflow: {study.mlflow.tracking_uri} (experiment '{study.mlflow.experiment}')"]
    return "\n".join(lines)


def cell_records(grid: Any, total_iterations: int, gpus: float) -> list[TrialRecord]:
    """One record per cell trial of a finished grid, with its variant and seed."""
    out = []
    for r in grid:
        cell = (r.config or {}).get("cell", {})
        record = trial_record(r, cell.get("overrides") or {},
                              total_iterations=total_iterations, gpus=gpus, pruning=False)
        record["variant"], record["seed"] = cell.get("variant"), cell.get("seed")
        out.append(record)
    return out


def run_ablation(study: Study, verbose: int = 1) -> AblationResult:
    """Run the study's cells that are not finished in its MLflow experiment yet."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.sweep import runner
    from mllm4wtal.sweep.tracker import SweepTracker
    from mllm4wtal.sweep.trainable import run_cell
    from mllm4wtal.sweep.tune_callback import MlflowTuneCallback

    preflight(study)
    exp = claim_study(study)
    base = to_flat(study.base_config)
    total = study.base_config.train.iterations
    tracker = SweepTracker(exp, study.mlflow.experiment, study.mlflow.tracking_uri,
                           sweep_name=study.name, base_params=base,
                           tags={STUDY_TAG: study.name, STUDY_FILE_TAG: str(study.path),
                                 KIND_TAG: KIND_ABLATION})
    done = finished_cells(tracker.client, tracker.experiment_id, study.name)
    check_compatible(study, done)
    cells = study.cells()
    todo = [c for c in cells if c not in done]
    skipped = [c for c in cells if c in done]
    tracker.log_parent_artifact(exp / STUDY_JSON)
    tracker.set_parent_tags({N_VARIANTS_TAG: len(study.variants),
                             SEEDS_TAG: ",".join(map(str, study.seeds)),
                             REFERENCE_TAG: study.reference, STUDY_METRIC_TAG: study.metric})

    records: list[TrialRecord] = []
    interrupted = False
    if todo:
        dataset = load_from_config(study.base_config.data)
        with runner.ray_started():
            cells = [from_flat(study.cell_params(c)) for c in todo]
            trainable = runner.make_trainable(base, dataset, study.resources, cells,
                                              fn=run_cell)
            callback = MlflowTuneCallback(
                tracker, functools.partial(_cell_params, base=base), total,
                run_dir_for=runner.checkpoint_dir,
                tags_for=functools.partial(_cell_tags, study=study.name, base=base),
                metric=study.metric, mode="max")
            grid_cells = [{"variant": c.variant, "seed": c.seed,
                           "overrides": study.cell_overrides(c)} for c in todo]
            name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
            while (exp / name).exists():
                name += "x"
            tuner = tune.Tuner(
                trainable, param_space={"cell": tune.grid_search(grid_cells)},
                tune_config=tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler(),
                                            reuse_actors=True,
                                            max_concurrent_trials=study.trials.max_concurrent,
                                            trial_dirname_creator=cell_dirname),
                run_config=tune.RunConfig(
                    name=name, storage_path=runner.tune_storage(study.experiment_dir),
                    callbacks=[callback], verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=study.trials.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            grid = runner.fit(tuner)
            records = (cell_records(grid, total, study.resources.gpu) if grid is not None
                       else [])
        running = mark_killed(records, tracker)
        interrupted = running or len(records) < len(todo)
    now_done = finished_cells(tracker.client, tracker.experiment_id, study.name)
    tracker.set_parent_tags({N_CELLS_TAG: len(cells),
                             N_FINISHED_CELLS_TAG: sum(c in now_done for c in cells)})
    parent = tracker.parent_run_id
    tracker.finish("KILLED" if interrupted else "FINISHED")
    failed = [Cell(r["variant"], int(r["seed"])) for r in records if r["status"] == "FAILED"]
    return AblationResult(experiment_dir=exp, tracking_uri=tracker.tracking_uri,
                          experiment=study.mlflow.experiment, parent_run_id=parent,
                          ran=todo, skipped=skipped, failed=failed, records=records,
                          interrupted=interrupted)


def conclusion(study: Study, result: AblationResult) -> str:
    uri = result.tracking_uri
    report = f"mllm4wtal report --experiment {result.experiment} --tracking-uri {uri}"
    if result.interrupted:
        return (f"study interrupted; run the same command again to finish it (finished "
                f"cells are skipped)\nso far: {report}")
    lines = [f"{len(result.ran)} cells run ({len(result.failed)} failed), "
             f"{len(result.skipped)} already finished"]
    for c in result.failed:
        lines.append(f"  failed: {c.variant} seed {c.seed} (its MLflow run holds the error; "
                     "run the command again to retry it)")
    lines.append(f"table and plots: {report}")
    return "\n".join(lines)


__all__ = ["AblationResult", "run_ablation", "plan", "conclusion", "finished_cells",
           "check_compatible", "claim_study", "cell_dirname", "cell_records", "load_study",
           "preflight", "STUDY_JSON"]
