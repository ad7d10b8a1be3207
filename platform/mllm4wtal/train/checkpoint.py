"""Checkpoints, and the run each belongs to.

A checkpoint holds the model, both optimisers, the RNG states (torch, the numpy generators
of data sampling and masking), the iteration, the best metric so far, the flattened config
and the run id. It is written through ``mllm4wtal.files`` (temporary file + rename) and read
with ``torch.load(weights_only=True)``: no arbitrary pickle.

A run is identified by an id drawn when it starts, written into the first line of its
``config.yaml`` (a YAML comment, so the file stays a config) and into every checkpoint.
``train --resume`` continues the run in the checkpoint's own folder only: that folder holds
the run's ``config.yaml`` and ``metrics.jsonl``, the ids agree, and the checkpoint's config
matches ``config.yaml``. A checkpoint written before run ids (none in it) is judged by its
folder's ``config.yaml`` alone.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch

from mllm4wtal import files
from mllm4wtal.config import Config, load_config, save_config, to_flat
from mllm4wtal.errors import UserError
from mllm4wtal.train.checkpoint_schema import check_state, read_error

FORMAT = 1
#: what a run directory holds; a folder with any of them holds a run
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "predictions.json",
             "split.json", "test_metrics.json")
SPLIT_FILE = "split.json"  # the run's roles: data.splits.split_record
TEST_FILE = "test_metrics.json"  # the one test evaluation of the checkpoint chosen on select
#: config keys a resumed run may change (a run may be extended, moved, run elsewhere)
RESUMABLE_KEYS = ("train.iterations", "train.device", "train.out_dir")
RUN_LINE = "# mllm4wtal run "


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with files.replacing(path, force=True) as tmp:
        try:
            torch.save({"format": FORMAT, **state}, tmp)
        except RuntimeError:
            # torch reports a failed write without its errno: the folder tells the cause
            files.probe(path.parent, target=path)
            raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, its keys checked (``checkpoint_schema``); UserError otherwise."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint '{p}' is a directory; pass a run's best.pt or last.pt")
    if not p.is_file():
        raise UserError(f"checkpoint '{p}' does not exist; pass a run's best.pt or last.pt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise read_error(p, e) from None
    if not isinstance(state, dict) or type(state.get("format")) is not int or (
            state["format"] != FORMAT):
        raise UserError(f"checkpoint '{p}' is not an mllm4wtal checkpoint (format {FORMAT})")
    check_state(p, state)
    return state


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]  # os.urandom: no seeded generator is touched


def read_run_id(config_path: Path) -> str | None:
    """The run id on the first line of a run's ``config.yaml``; None for older runs."""
    with config_path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    return first[len(RUN_LINE):].split()[0] if first.startswith(RUN_LINE) else None


def write_run_config(cfg: Config, path: Path, run_id: str, *, force: bool) -> None:
    """``config.yaml`` of run ``run_id``, written whole or not at all."""
    with files.replacing(path, force=force) as tmp:
        save_config(cfg, tmp)
        tmp.write_text(f"{RUN_LINE}{run_id} (train --resume checks it)\n" + tmp.read_text())


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys both flat configs hold and differ in, apart from :data:`RESUMABLE_KEYS`."""
    keys = (set(saved) & set(now)) - set(RESUMABLE_KEYS)
    return sorted(k for k in keys if saved.get(k) != now.get(k))


def owning_run(checkpoint: str | Path, run_dir: Path, state: dict[str, Any]) -> str | None:
    """The id of the run ``checkpoint`` belongs to, once it is sure that run is the one in
    ``run_dir``; one line (``UserError``) otherwise. None: a run from before run ids."""
    ckpt = Path(checkpoint)
    folder = ckpt.parent
    if folder.resolve() != run_dir.resolve():
        raise UserError(f"cannot resume '{ckpt}' into {run_dir}: a run is resumed in its own "
                        f"folder ({folder}); drop --run-dir, or copy the whole run folder")
    missing = [n for n in ("config.yaml", "metrics.jsonl") if not (folder / n).is_file()]
    if missing:
        raise UserError(f"cannot resume '{ckpt}': its folder has no {' or '.join(missing)}, so "
                        "it is not the run's own folder; resume the checkpoint where its run "
                        "wrote it")
    config_path = folder / "config.yaml"
    ours, folders = state.get("run_id"), read_run_id(config_path)
    if ours is not None and ours != folders:
        raise UserError(f"cannot resume '{ckpt}': it belongs to run {ours}, but {config_path} "
                        f"is run {folders or '(no id)'}; resume it from its own run folder "
                        "(nothing was written)")
    diff = config_diff(to_flat(load_config(str(config_path))), dict(state.get("config", {})))
    if diff:
        raise UserError(f"cannot resume '{ckpt}': its config differs from {config_path} in "
                        f"{', '.join(diff[:5])}, so it belongs to another run; resume it from "
                        "its own run folder (nothing was written)")
    done = last_reported_iteration(folder / "metrics.jsonl")
    if done > int(state.get("iteration", 0)):
        raise UserError(f"cannot resume '{ckpt}' (iteration {state.get('iteration')}): the run "
                        f"went on to iteration {done}, which resuming from here would discard; "
                        f"resume from {folder / 'last.pt'}")
    return ours or folders


def last_reported_iteration(metrics: Path) -> int:
    """The iteration of the last line of a run's ``metrics.jsonl`` (0 if none)."""
    last = 0
    for line in metrics.read_text().splitlines():
        try:
            last = int(json.loads(line).get("iteration", last))
        except (ValueError, AttributeError):  # a line cut by a crash
            continue
    return last
