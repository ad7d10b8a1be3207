"""The training loop: config + dataset + a ``report`` callback. It knows nothing of Ray.

Read top to bottom: seed, build text and model, maybe resume, then iterate: sample a batch,
one DPID step, and every ``eval_interval`` iterations evaluate (the ``evaluate`` callable it
is given, e.g. ``inference.evaluate.ModelEvaluator``: proposals -> mAP), write ``last.pt``
(and ``best.pt`` when ``evaluate.metric`` improved) and call ``report(metrics, run_dir)``.
A run resumed from a checkpoint continues bit-for-bit on CPU.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from mllm4wtal import files
from mllm4wtal.config import Config, to_flat
from mllm4wtal.data.batching import TrainBatchSampler
from mllm4wtal.data.splits import assign_roles, split_record
from mllm4wtal.data.types import WTALDataset
from mllm4wtal.errors import DivergenceError, UserError
from mllm4wtal.model.mllm4wtal import MLLM4WTAL
from mllm4wtal.text.bundle import TextBundle, build_text_bundle, bundle_key
from mllm4wtal.train.checkpoint import (
    RUN_FILES,
    SPLIT_FILE,
    load_checkpoint,
    new_run_id,
    owning_run,
    save_checkpoint,
    write_run_config,
)
from mllm4wtal.train.dpid import DPID, Batch

Report = Callable[[dict[str, float], Path], None]
WHERE = "--run-dir or train.out_dir"


class Evaluate(Protocol):
    """Scores a model on the ``select`` videos: ``(metrics, predictions)``; ``metric`` names
    the entry of the metrics (scores or losses) that ``best.pt`` is chosen by, ``mode``
    whether higher (``max``) or lower (``min``) is better."""

    metric: str
    mode: str

    def __call__(self, model: MLLM4WTAL) -> tuple[dict[str, float], dict]: ...


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    best_metric: float
    best_iteration: int
    last_metrics: dict[str, float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = 'cuda' but no CUDA device is visible; use "
                        "--set train.device=cpu (or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, dataset: WTALDataset, text: TextBundle | None) -> MLLM4WTAL:
    return MLLM4WTAL(cfg, dataset.num_classes, dataset.feature_dim, dataset.rgb_dim,
                     text.tensors if text is not None else None)


def make_batch(cfg: Config, dataset: WTALDataset, sampler: TrainBatchSampler,
               text: TextBundle | None, rng: np.random.Generator) -> Batch:
    """Sampled, padded features + labels, and for CSR one masked complete description per
    video (all draws from ``rng``, whose state the checkpoint keeps)."""
    drawn = sampler.make_batch(rng)
    batch = Batch(features=drawn["features"], mask=drawn["mask"], labels=drawn["labels"])
    if text is not None and cfg.csr.enabled:
        videos = [dataset.train[int(i)] for i in drawn["indices"]]
        batch.text_ids, batch.text_mask, batch.masked = text.masked_sentences(
            videos, cfg.csr.mask_ratio, cfg.csr.key_word_weight, rng)
    return batch


def train(cfg: Config, dataset: WTALDataset, run_dir: str | Path, *, evaluate: Evaluate | None,
          report: Report | None = None, resume: str | Path | None = None,
          progress: bool = True, text: TextBundle | None = None) -> TrainResult:
    """Train MLLM4WTAL; checkpoints and metrics go to ``run_dir``.

    ``text``: the text bundle of this config and dataset when the caller has it (a sweep
    builds it once for all its trials); else it is built here.

    ``evaluate``: called every ``train.eval_interval`` iterations and at the end; None trains
    without evaluation (metrics hold the losses only, and no ``best.pt`` is written).

    ``resume``: a checkpoint (``last.pt``) to continue from; its config must match ``cfg``
    except for ``train.iterations`` (a run may be extended), and ``run_dir`` must be the
    checkpoint's own run (``checkpoint.owning_run``). A new run never writes into a folder
    that holds one. Every file goes through ``mllm4wtal.files``.
    """
    run_dir = Path(run_dir)
    dataset = assign_roles(dataset, cfg.data)  # trained on `train`, chosen on `select`
    files.check_writable(run_dir, fix=WHERE)
    if resume is None:
        refuse_taken(run_dir)
    files.ensure_dir(run_dir, fix=WHERE, check=False)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if not (cfg.ksm.enabled or cfg.csr.enabled):
        text = None
    elif text is None:
        text = build_text_bundle(cfg, dataset)
    elif text.key != bundle_key(cfg):
        raise ValueError("the text bundle given to train() was built for another text config")
    model = build_model(cfg, dataset, text).to(device)
    dpid = DPID(model, cfg)
    sampler = TrainBatchSampler.from_dataset(
        dataset, batch_size=cfg.data.batch_size, max_seqlen=cfg.data.max_seqlen,
        n_similar=cfg.data.n_similar, seed=cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)

    mode = evaluate.mode if evaluate is not None else "max"
    start, best, best_it, last_metrics = 0, -math.inf if mode == "max" else math.inf, -1, {}
    if resume is not None:
        state = load_checkpoint(resume)
        run_id = owning_run(resume, run_dir, state) or new_run_id()
        _check_resumable(cfg, state, resume)
        model.load_state_dict(state["model"])
        dpid.opt_ksm.load_state_dict(state["opt_ksm"])
        if dpid.opt_csr is not None:
            dpid.opt_csr.load_state_dict(state["opt_csr"])
        torch.set_rng_state(state["rng"]["torch"])
        rng.bit_generator.state = state["rng"]["numpy"]
        start, best, best_it = state["iteration"], state["best"], state["best_iteration"]
        last_metrics = state.get("metrics", {})
    else:
        run_id = new_run_id()
    # on resume too: config.yaml then says what the run now is (e.g. more iterations)
    write_run_config(cfg, run_dir / "config.yaml", run_id, force=resume is not None)
    files.write_text(run_dir / SPLIT_FILE, json.dumps(split_record(dataset), indent=1),
                     force=resume is not None, fix=WHERE)

    def checkpoint_state(iteration: int, metrics: dict[str, float]) -> dict:
        return {
            "model": model.state_dict(),
            "opt_ksm": dpid.opt_ksm.state_dict(),
            "opt_csr": dpid.opt_csr.state_dict() if dpid.opt_csr is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
            "iteration": iteration, "best": best, "best_iteration": best_it,
            "metrics": metrics, "config": to_flat(cfg),
            "classes": dataset.classes, "dataset": dataset.name, "run_id": run_id,
        }

    bar = tqdm(range(start, cfg.train.iterations), initial=start, total=cfg.train.iterations,
               disable=not progress, desc="train", dynamic_ncols=True)
    losses: dict[str, float] = {}
    shown = evaluate.metric if evaluate is not None else ""
    started = time.time()  # after set-up: what a sweep's slot accounting calls start-up
    for it in bar:
        batch = make_batch(cfg, dataset, sampler, text, rng).to(device)
        try:
            losses = dpid.step(batch, it)
        except DivergenceError as e:
            bar.close()
            kept = run_dir / "last.pt"
            e.args = (e.args[0] + (f"; the last good checkpoint is {kept}" if kept.exists()
                                   else "; no checkpoint was written before it"),)
            raise
        done = it + 1
        if done % cfg.train.eval_interval == 0 or done == cfg.train.iterations:
            scores, predictions = evaluate(model) if evaluate is not None else ({}, None)
            metrics = {**scores, **losses, "iteration": float(done),
                       "lr": dpid.opt_ksm.param_groups[0]["lr"]}
            if evaluate is not None and improves(chosen_by(metrics, evaluate.metric), best,
                                                 mode):
                best, best_it = metrics[evaluate.metric], done
                save_checkpoint(run_dir / "best.pt", checkpoint_state(done, metrics))
                files.write_text(run_dir / "predictions.json", json.dumps(predictions),
                                 force=True, fix=WHERE)
            save_checkpoint(run_dir / "last.pt", checkpoint_state(done, metrics))
            last_metrics = metrics
            with files.appending(run_dir / "metrics.jsonl", fix=WHERE) as log:
                with log.open("a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            if report is not None:  # plus when this process began iterating (not logged)
                report({**metrics, "time/first_iteration": started}, run_dir)
        bar.set_postfix(match=f"{losses.get('loss/match', 0):.3f}",
                        rec=f"{losses.get('loss/rec', 0):.3f}",
                        mAP=f"{last_metrics.get(shown, 0) * 100:.1f}")
    bar.close()
    return TrainResult(run_dir=run_dir, iteration=cfg.train.iterations, best_metric=best,
                       best_iteration=best_it, last_metrics=last_metrics)


def chosen_by(metrics: dict[str, float], name: str) -> float:
    """The value ``best.pt`` is chosen by; a name no evaluation reports is refused."""
    if name not in metrics:
        raise UserError(f"train.best_metric = '{name}' is not among the metrics an evaluation "
                        f"reports ({', '.join(sorted(metrics)[:8])}, ...); pick one of them")
    return metrics[name]


def improves(value: float, best: float, mode: str) -> bool:
    """Whether ``value`` beats ``best`` by ``mode``; NaN never does."""
    return math.isfinite(value) and (value > best if mode == "max" else value < best)


def refuse_taken(run_dir: Path) -> None:
    """A new run never writes into a folder that holds one."""
    held = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not held:
        return
    how = (f"resume it with --resume {run_dir / 'last.pt'}" if "last.pt" in held
           else "it has no checkpoint to resume")
    raise UserError(f"{run_dir} already holds a run ({', '.join(held)}); {how}, or choose "
                    "another run directory (nothing is overwritten)")


def _check_resumable(cfg: Config, state: dict, path: str | Path) -> None:
    saved, now = dict(state["config"]), to_flat(cfg)
    for key in ("train.iterations", "train.device", "train.out_dir"):
        saved.pop(key, None)
        now.pop(key, None)
    diff = sorted(k for k in now if saved.get(k) != now[k])
    if diff:
        raise UserError(f"cannot resume from '{path}': its config differs in "
                        f"{', '.join(diff[:5])}; resume with the run's own config.yaml")
