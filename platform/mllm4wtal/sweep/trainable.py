"""One Ray Tune trial = one training run through ``train.loop.train``, the loop behind
``mllm4wtal train``.

The trial's config is the flat dict of overrides Optuna suggested (``loss.lambda1`` ->
1.2, ...); it is applied to the sweep's base config. Every evaluation report becomes a
``tune.report`` with a checkpoint holding the run directory's ``last.pt`` (and ``best.pt``,
``predictions.json``, ``metrics.jsonl``, ``config.yaml``); a restarted trial (``max_failures``,
``mllm4wtal sweep --resume``) copies that checkpoint back and resumes from ``last.pt``
bit-for-bit. The dataset arrives through ``tune.with_parameters``: it is put in the Ray
object store once and shared by every trial on a node, not re-read per trial.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import torch
from ray import tune

from mllm4wtal import files
from mllm4wtal.config import Config, from_flat
from mllm4wtal.data.types import WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.inference.evaluate import ModelEvaluator, evaluate_on_test
from mllm4wtal.sweep.faults import STORAGE_ERRNOS, fault_line
from mllm4wtal.text.bundle import TextBundle, build_text_bundle, bundle_key
from mllm4wtal.train.checkpoint import SPLIT_FILE, TEST_FILE
from mllm4wtal.train.loop import train

#: what a trial checkpoint carries of the run directory
CHECKPOINT_FILES = ("last.pt", "best.pt", "predictions.json", "metrics.jsonl", "config.yaml",
                    SPLIT_FILE, TEST_FILE)
RUN_DIR = "run"
PLACEMENT = "placement"  # the result key of ``placement()`` (a dict of strings)

logger = logging.getLogger(__name__)


def trial_device(requested: str) -> str:
    """``auto`` -> the GPU Ray assigned to this trial, else the CPU (Ray hides the GPUs a
    trial did not ask for through CUDA_VISIBLE_DEVICES). A GPU share on a node without CUDA
    (a node that declares GPUs it has not, a CPU build of torch) trains on the CPU, and says
    so in the trial's log and its ``device`` tag."""
    if requested != "auto":
        return requested
    gpus = ray.get_gpu_ids()
    if gpus and not torch.cuda.is_available():
        logger.warning("Ray assigned GPU %s to this trial but CUDA is not available here; "
                       "it trains on the CPU", ",".join(map(str, gpus)))
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def placement(device: str) -> dict[str, str]:
    """Where this trial runs, for its result (``PLACEMENT``) and its MLflow tags: Ray's node
    (id and IP), the GPU ids Ray assigned it, and the device it trains on."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": ",".join(map(str, ray.get_gpu_ids())) or "none", "device": device}


def restore_run_dir(checkpoint: tune.Checkpoint | None, run_dir: Path) -> Path | None:
    """Copy a trial checkpoint into ``run_dir``; returns the ``last.pt`` to resume from."""
    if checkpoint is None:
        # a retry that never reported: what an earlier attempt left is not a resumable state
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as src:
        copy_run_files(Path(src), run_dir)
    return run_dir / "last.pt"


def copy_run_files(src: Path, dst: Path) -> None:
    """The files of a run directory a trial checkpoint carries, from ``src`` to ``dst``."""
    for name in CHECKPOINT_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def shared_text_bundles(configs: Iterable[Config], dataset: WTALDataset
                        ) -> dict[str, TextBundle]:
    """The text bundles the trials of these configs need, each built once (in the driver,
    then shared through the object store like the dataset), by ``bundle_key``."""
    out: dict[str, TextBundle] = {}
    for cfg in configs:
        if (cfg.ksm.enabled or cfg.csr.enabled) and bundle_key(cfg) not in out:
            out[bundle_key(cfg)] = build_text_bundle(cfg, dataset)
    return out


def run_trial(trial_params: Mapping[str, Any], *, base: Mapping[str, Any],
              dataset: WTALDataset, texts: Mapping[str, TextBundle] | None = None,
              test_at_end: bool = False) -> None:
    """The Ray Tune function trainable; ``base`` is the flat base config, ``texts`` the
    bundles built in the driver (a trial whose text config is not among them builds its
    own). ``test_at_end``: the last report also carries the one test evaluation of the
    run's ``best.pt`` (chosen on select), as ``test/<metric>`` (a study's cells: each cell
    is a chosen model)."""
    ctx = tune.get_context()
    flat = {**base, **trial_params}
    flat["train.device"] = trial_device(str(flat["train.device"]))
    cfg = from_flat(flat, where=f"trial {ctx.get_trial_id()}")
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    run_dir = Path(ctx.get_trial_dir()) / RUN_DIR
    resume = restore_run_dir(tune.get_checkpoint(), run_dir)
    place = placement(cfg.train.device)

    def report(metrics: dict[str, float], run_dir: Path) -> None:
        if cfg.train.device == "cuda":  # for packing trials on a GPU (jobs/bench)
            peak = torch.cuda.max_memory_allocated() / 2**20
            metrics = {**metrics, "gpu/max_allocated_mib": peak}
        metrics = {**metrics, PLACEMENT: place}
        best = run_dir / "best.pt"
        if test_at_end and metrics["iteration"] >= cfg.train.iterations and best.exists():
            tested = evaluate_on_test(best, dataset)
            files.write_text(run_dir / TEST_FILE, json.dumps(tested, indent=1), force=True,
                             fix="storage")
            metrics = {**metrics, **tested}
        with tempfile.TemporaryDirectory() as tmp:
            copy_run_files(run_dir, Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        train(cfg, dataset, run_dir, evaluate=ModelEvaluator(cfg, dataset), report=report,
              resume=resume, progress=False, text=(texts or {}).get(bundle_key(cfg)))
    except OSError as e:  # Ray persisting a checkpoint (tune.report) ends up here too
        if e.errno not in STORAGE_ERRNOS:
            raise
        trial_dir, exp = storage_dirs(ctx, run_dir)
        where = Path(os.fsdecode(e.filename)) if e.filename is not None else trial_dir
        again = (f"resume the sweep (`mllm4wtal sweep --resume {exp}`) or run the study "
                 "again")
        raise UserError(fault_line(where, e, again)) from None


def storage_dirs(ctx: Any, run_dir: Path) -> tuple[Path, Path]:
    """The trial's folder and the experiment folder in a local storage, where Ray persists
    the checkpoints (Ray's developer API); else the local trial folder and its parent."""
    try:
        storage = ctx.get_storage()
        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return Path(storage.trial_fs_path), Path(storage.experiment_fs_path)
    except Exception:  # outside a Ray Tune session
        pass
    return run_dir.parent, run_dir.parent.parent


def run_cell(config: Mapping[str, Any], *, base: Mapping[str, Any],
             dataset: WTALDataset, texts: Mapping[str, TextBundle] | None = None) -> None:
    """The trainable of an ablation study (``sweep.ablate``): Ray's config is
    ``{"cell": {"variant", "seed", "overrides"}}``, one cell of its grid; the cell's flat
    overrides go to :func:`run_trial`."""
    run_trial(config["cell"]["overrides"], base=base, dataset=dataset, texts=texts,
              test_at_end=True)
