"""The summary of a finished sweep, written by ``mllm4wtal sweep`` once its trials are done.

Files in ``<experiment_dir>/summary/``: ``best_config.yaml`` (a config YAML: ``base:`` plus the
best trial's overrides, loadable by ``load_config``), ``top10.md``, ``param_importances.json``,
``parallel_coordinates.png`` and ``summary.json``; the same files as artifacts of the sweep's
parent run, with its metrics (GPU hours used and saved by pruning, trial counts,
``best/<metric>``) and tags (``best_trial_id``, ``sweep_metric``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import yaml

from mllm4wtal.report.sweep_plots import (
    finite_value,
    param_importances,
    plot_parallel_coordinates,
)
from mllm4wtal.sweep.mlflow_tags import BEST_TRIAL_TAG, SWEEP_METRIC_TAG
from mllm4wtal.sweep.records import TrialRecord
from mllm4wtal.sweep.runner import SweepResult
from mllm4wtal.sweep.search import load_study
from mllm4wtal.sweep.spaces.search_space import SearchSpaceFile
from mllm4wtal.sweep.tracker import log_run_metrics, set_run_tags

SUMMARY_DIR = "summary"
FILES = ("best_config.yaml", "top10.md", "param_importances.json", "parallel_coordinates.png",
         "summary.json")


def rank_records(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Records with a finite metric, best first (``mode`` max or min); ties by trial id."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    scored = [r for r in records if finite_value(r.get("metric")) is not None]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(scored, key=lambda r: (sign * float(r["metric"]),  # type: ignore[arg-type]
                                         str(r.get("trial_id"))))


def gpu_accounting(records: list[TrialRecord], total_iterations: int) -> dict[str, float]:
    """GPU hours used and saved by pruning, and trial-iterations with and without pruning.

    Saved: each pruned trial that ran ``run`` of ``total`` iterations in ``wall`` seconds on
    ``gpus`` GPUs would have needed ``wall * (total - run) / run`` more seconds.
    """
    used = saved = 0.0
    iters_used = iters_full = 0
    for r in records:
        wall, gpus = float(r.get("wall_s") or 0.0), float(r.get("gpus") or 0.0)
        run = int(r.get("iterations") or 0)
        used += wall * gpus
        iters_used += run
        if r.get("pruned") and 0 < run < total_iterations:
            saved += wall * (total_iterations - run) / run * gpus
            iters_full += total_iterations
        else:
            iters_full += run
    return {"gpu_hours_used": used / 3600.0, "gpu_hours_saved_by_pruning": saved / 3600.0,
            "trial_iterations_used": float(iters_used),
            "trial_iterations_without_pruning": float(iters_full)}


def _overrides_tree(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = str(key).split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return tree


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def top_table(ranked: list[TrialRecord], metric: str, mode: str, k: int) -> str:
    """``top10.md``: the ``k`` best trials with their overrides."""
    keys = sorted({key for r in ranked[:k] for key in (r.get("config") or {})})
    head = ["rank", "trial", f"{metric} ({mode})", "iterations", "pruned", "status",
            "wall s", *keys]
    lines = [f"# Top {min(k, len(ranked))} trials by `{metric}` ({mode})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(ranked[:k], 1):
        cfg = r.get("config") or {}
        row = [i, r.get("trial_id", ""), float(r["metric"]),  # type: ignore[arg-type]
               r.get("iterations", ""), "yes" if r.get("pruned") else "no",
               r.get("status", ""), float(r.get("wall_s") or 0.0),
               *[cfg.get(key, "") for key in keys]]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if not ranked:
        lines.append("")
        lines.append("No trial reported a finite value of the metric.")
    return "\n".join(lines) + "\n"


def best_config_yaml(best: TrialRecord | None, sweep_name: str, metric: str, mode: str,
                     base: str | None) -> str:
    """``best_config.yaml``: ``base:`` plus the best trial's overrides, as a config file."""
    if best is None:
        return f"# no trial of sweep '{sweep_name}' reported a finite {metric}\n{{}}\n"
    header = (f"# best trial {best.get('trial_id')} of sweep '{sweep_name}': "
              f"{metric} = {float(best['metric']):.6g} ({mode})\n")  # type: ignore[arg-type]
    tree = _overrides_tree(best.get("config") or {})
    body = {"base": base, **tree} if base else tree
    return header + yaml.safe_dump(body, sort_keys=False)


def write_summary(client: mlflow.MlflowClient, parent_run_id: str, sweep_name: str,
                  study: Any, records: list[TrialRecord], out_dir: Path, *, metric: str,
                  mode: str, total_iterations: int, base: str | None = None,
                  top_k: int = 10) -> dict[str, Any]:
    """Write the summary (see the module docstring) into ``out_dir`` and log it on the parent
    run ``parent_run_id``; ``study`` is the sweep's Optuna study (None: no importances).
    Returns summary.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = rank_records(records, mode)
    best = ranked[0] if ranked else None
    (out_dir / "best_config.yaml").write_text(best_config_yaml(best, sweep_name, metric, mode,
                                                               base))
    (out_dir / "top10.md").write_text(top_table(ranked, metric, mode, top_k))
    importances = param_importances(study)
    (out_dir / "param_importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    plot_parallel_coordinates(records, metric, mode, out_dir / "parallel_coordinates.png")

    numbers = gpu_accounting(records, total_iterations)
    numbers.update({
        "n_trials": float(len(records)),
        "n_pruned": float(sum(1 for r in records if r.get("pruned"))),
        "n_failed": float(sum(1 for r in records if r.get("status") == "FAILED")),
    })
    summary: dict[str, Any] = {
        "metric": metric, "mode": mode, "total_iterations": int(total_iterations),
        "best_trial_id": best.get("trial_id") if best else None,
        "best_value": float(best["metric"]) if best else None,  # type: ignore[arg-type]
        "best_config": (best.get("config") or {}) if best else None,
        **numbers,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    parent_metrics = dict(numbers)
    if best is not None:
        parent_metrics[f"best/{metric}"] = float(best["metric"])  # type: ignore[arg-type]
    log_run_metrics(client, parent_run_id, parent_metrics)
    set_run_tags(client, parent_run_id, {BEST_TRIAL_TAG: summary["best_trial_id"] or "none",
                                         SWEEP_METRIC_TAG: f"{metric} ({mode})"})
    for name in FILES:
        client.log_artifact(parent_run_id, str(out_dir / name))
    return summary


def write_sweep_summary(space: SearchSpaceFile, result: SweepResult) -> dict[str, Any]:
    """The summary of the finished sweep ``result`` of ``space``, in
    ``<experiment_dir>/summary/`` and on its parent run (what ``mllm4wtal sweep`` does at the
    end of a sweep that was not interrupted)."""
    return write_summary(mlflow.MlflowClient(tracking_uri=result.tracking_uri),
                         result.parent_run_id, space.name, load_study(space), result.records,
                         result.experiment_dir / SUMMARY_DIR, metric=space.metric,
                         mode=space.mode,
                         total_iterations=space.base_config.train.iterations, base=space.base)


__all__ = ["write_sweep_summary", "write_summary", "rank_records", "gpu_accounting",
           "top_table", "best_config_yaml"]
