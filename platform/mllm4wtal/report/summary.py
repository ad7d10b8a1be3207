"""The summary of a finished sweep, written by ``mllm4wtal sweep`` once its trials are done.

Files in ``<experiment_dir>/summary/``: ``best_config.yaml`` (a config YAML: ``base:`` plus the
best trial's overrides, loadable by ``load_config``), ``top10.md``,
``param_importances.{json,png}``, ``parallel_coordinates.png``, ``optimisation_history.png``
(plots: ``report.sweep_plots``) and ``summary.json``; the same files as artifacts of the sweep's
parent run, with its metrics (GPU hours used and saved by pruning, trial counts,
``best/<metric>``) and tags (``best_trial_id``, ``sweep_metric``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import yaml

from mllm4wtal.report.importances import param_importances, plot_importances
from mllm4wtal.report.sweep_data import asha_rungs, trial_histories
from mllm4wtal.report.sweep_plots import (
    plot_optimisation_history,
    plot_parallel_coordinates,
    plot_pruning,
)
from mllm4wtal.sweep.mlflow_store import log_run_metrics, set_run_tags
from mllm4wtal.sweep.mlflow_tags import BEST_TRIAL_TAG, SWEEP_METRIC_TAG
from mllm4wtal.sweep.records import SCORE_RULES, TrialRecord, rank_records
from mllm4wtal.sweep.runner import SweepResult
from mllm4wtal.sweep.search import load_study
from mllm4wtal.sweep.spaces.search_space import SearchSpaceFile

SUMMARY_DIR = "summary"
FILES = ("best_config.yaml", "top10.md", "param_importances.json", "param_importances.png",
         "parallel_coordinates.png", "optimisation_history.png", "pruning.png", "summary.json")


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


def top_table(ranked: list[TrialRecord], metric: str, mode: str, k: int,
              score: str = "best", select: str = "") -> str:
    """``top10.md``: the ``k`` best trials by score (``score`` rule) with their overrides."""
    keys = sorted({key for r in ranked[:k] for key in (r.get("config") or {})})
    head = ["rank", "trial", f"{score} {metric} ({mode}, select)", "iterations", "pruned",
            "status", "wall s", *keys]
    lines = [f"# Top {min(k, len(ranked))} trials by `{metric}` ({mode})", "",
             f"Score: each trial's {SCORE_RULES[score]}, on the select videos"
             + (f" ({select})" if select else "") + ".", "",
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
                     base: str | None, chosen: dict[str, Any] | None = None) -> str:
    """``best_config.yaml``: ``base:`` plus the best trial's overrides, as a config file;
    its header gives the score on select and the one test figure (``chosen``)."""
    if best is None:
        return f"# no trial of sweep '{sweep_name}' reported a finite {metric}\n{{}}\n"
    header = (f"# best trial {best.get('trial_id')} of sweep '{sweep_name}': "
              f"{metric} = {float(best['metric']):.6g} ({mode}) on select\n")  # type: ignore[arg-type]
    if chosen is not None:
        test = chosen["test"].get(f"test/{metric}")
        header += (f"#   select: {chosen['select_split']}\n"
                   + (f"#   test ({chosen['checkpoint']}, evaluated once): {metric} = "
                      f"{test:.6g}\n" if test is not None else ""))
    tree = _overrides_tree(best.get("config") or {})
    body = {"base": base, **tree} if base else tree
    return header + yaml.safe_dump(body, sort_keys=False)


def write_summary(client: mlflow.MlflowClient, parent_run_id: str, sweep_name: str,
                  study: Any, records: list[TrialRecord], out_dir: Path, *, metric: str,
                  mode: str, total_iterations: int, base: str | None = None,
                  top_k: int = 10, score: str = "best", chosen: dict[str, Any] | None = None,
                  rungs: list[int] | None = None) -> dict[str, Any]:
    """Write the summary (see the module docstring) into ``out_dir`` and log it on the parent
    run ``parent_run_id``; ``study`` is the sweep's Optuna study (None: no importances);
    ``score`` the sweep's score rule, ``chosen`` the chosen trial's test evaluation
    (``sweep.chosen.ChosenTest.as_dict``), ``rungs`` ASHA's (None: not known). Returns
    summary.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = rank_records(records, mode)
    best = ranked[0] if ranked else None
    (out_dir / "best_config.yaml").write_text(best_config_yaml(best, sweep_name, metric, mode,
                                                               base, chosen))
    select = chosen["select_split"] if chosen else ""
    (out_dir / "top10.md").write_text(top_table(ranked, metric, mode, top_k, score, select))
    importances = param_importances(study)
    (out_dir / "param_importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    plot_importances(importances, f"{metric} ({mode})").savefig(
        out_dir / "param_importances.png")
    plot_parallel_coordinates(records, metric, mode).savefig(
        out_dir / "parallel_coordinates.png")
    plot_optimisation_history(records, metric, mode, score).savefig(
        out_dir / "optimisation_history.png")
    plot_pruning(records, trial_histories(client, parent_run_id, metric), rungs, metric,
                 mode).savefig(out_dir / "pruning.png")

    numbers = gpu_accounting(records, total_iterations)
    numbers.update({
        "n_trials": float(len(records)),
        "n_pruned": float(sum(1 for r in records if r.get("pruned"))),
        "n_failed": float(sum(1 for r in records if r.get("status") == "FAILED")),
    })
    summary: dict[str, Any] = {
        "metric": metric, "mode": mode, "score": score, "score_rule": SCORE_RULES[score],
        "total_iterations": int(total_iterations),
        "select_split": select or None,
        "best_trial_id": best.get("trial_id") if best else None,
        "best_value": float(best["metric"]) if best else None,  # type: ignore[arg-type]
        "test_value": (chosen["test"].get(f"test/{metric}") if chosen else None),
        "test_metrics": chosen["test"] if chosen else None,
        "tested_checkpoint": chosen["checkpoint"] if chosen else None,
        "best_config": (best.get("config") or {}) if best else None,
        **numbers,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

    parent_metrics = dict(numbers)
    if best is not None:
        parent_metrics[f"{score}/{metric}"] = float(best["metric"])  # type: ignore[arg-type]
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
                         total_iterations=space.base_config.train.iterations, base=space.base,
                         score=space.score,
                         chosen=result.chosen.as_dict() if result.chosen else None,
                         rungs=asha_rungs(space.scheduler))


__all__ = ["write_sweep_summary", "write_summary", "rank_records", "gpu_accounting",
           "top_table", "best_config_yaml"]
