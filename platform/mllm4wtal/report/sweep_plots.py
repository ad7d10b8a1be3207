"""The plots of a sweep: parallel coordinates of its trials and Optuna's parameter
importances (``summary/`` at the end of a sweep, and ``mllm4wtal report`` of a sweep).

Importances are Optuna's (``optuna.importance``, its default evaluator) and drawn by
``optuna.visualization.matplotlib``. The parallel coordinates stay hand-drawn: Optuna's
``plot_parallel_coordinate`` draws COMPLETE trials only, and a sweep's picture needs the
trials ASHA pruned (dashed, at the value they reached) and the failed ones (grey) too.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from mllm4wtal.report.collect import ExperimentData
from mllm4wtal.report.tables import varying_params
from mllm4wtal.sweep.mlflow_names import as_float, truncate
from mllm4wtal.sweep.mlflow_tags import SWEEP_DIR_TAG, SWEEP_METRIC_TAG, SWEEP_TAG
from mllm4wtal.sweep.records import TrialRecord

OPTUNA_DB = "optuna.db"


def finite_value(value: Any) -> float | None:
    """A finite real number as a float, else None."""
    v = as_float(value)
    return v if v is not None and math.isfinite(v) else None


def param_importances(study: Any) -> dict[str, Any]:
    """Optuna's parameter importances, or a note saying why there are none."""
    if study is None:
        return {"importances": {}, "note": "no Optuna study (e.g. a grid or an ablation)"}
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"n_complete_trials": len(complete), "importances": {}}
    if len(complete) < 2:
        out["note"] = (f"{len(complete)} completed trial(s); importances need at least 2 "
                       "completed trials with varying parameters")
        return out
    try:
        imp = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:
        out["note"] = f"importances not computable: {e}"
        return out
    out["importances"] = {k: float(v) for k, v in imp.items()}
    if not imp:
        out["note"] = "no parameter varied across the completed trials"
    return out


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else as category indices (with the labels)."""
    nums = [as_float(v) for v in values]
    if all(n is not None for n in nums):
        return [float(n) for n in nums], None  # type: ignore[arg-type]
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def plot_parallel_coordinates(records: list[TrialRecord], metric: str, mode: str,
                              path: Path) -> None:
    """One line per trial through its overrides and the metric (scaled to [0, 1] per axis),
    coloured by the metric; pruned trials dashed, trials without a value grey."""
    from matplotlib.figure import Figure

    keys = sorted({k for r in records for k in (r.get("config") or {})})
    axes = [*keys, metric]
    fig = Figure(figsize=(max(6.0, 1.6 * len(axes) + 2), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if not records:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        return
    columns: list[list[float]] = []
    for key in axes:
        raw = ([r.get("metric") for r in records] if key == metric
               else [(r.get("config") or {}).get(key) for r in records])
        ok = [v is not None and not (isinstance(v, float) and not math.isfinite(v))
              for v in raw]
        vals, labels = _axis_values([v for v, good in zip(raw, ok, strict=True) if good])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        log = labels is None and lo > 0 and hi / lo >= 100  # e.g. learning rates
        scaled = [math.log10(v) for v in vals] if log else vals
        s_lo, s_hi = (min(scaled), max(scaled)) if scaled else (0.0, 1.0)
        span = s_hi - s_lo if s_hi > s_lo else 1.0
        it = iter(scaled)
        columns.append([(next(it) - s_lo) / span if good else math.nan for good in ok])
        idx = axes.index(key)
        text = (f"{lo:.3g}..{hi:.3g}{' (log)' if log else ''}" if labels is None
                else ",".join(labels))
        ax.text(idx, -0.08, truncate(text, 30), ha="center", va="top", fontsize=7)
    scores = [finite_value(r.get("metric")) for r in records]
    seen = [s for s in scores if s is not None]
    lo, hi = (min(seen), max(seen)) if seen else (0.0, 1.0)
    from matplotlib import colormaps

    cmap = colormaps["viridis" if mode == "max" else "viridis_r"]
    xs = list(range(len(axes)))
    for i, r in enumerate(records):
        ys = [col[i] for col in columns]
        s = scores[i]
        color = "0.7" if s is None else cmap((s - lo) / (hi - lo) if hi > lo else 1.0)
        ax.plot(xs, ys, color=color, linestyle="--" if r.get("pruned") else "-",
                marker="o", markersize=3, linewidth=1.2, alpha=0.9)
    ax.set_xticks(xs)
    ax.set_xticklabels([truncate(a, 24) for a in axes], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(-0.15, 1.05)
    ax.set_yticks([])
    for x in xs:
        ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
    ax.set_title(f"{len(records)} trials, colour = {metric} ({mode}); dashed = pruned",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def _typed(value: str) -> Any:
    if value in ("True", "False", "true", "false"):
        return value in ("True", "true")
    try:
        f = float(value)
    except ValueError:
        return value
    return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f


def sweep_records(data: ExperimentData, metric: str, mode: str) -> list[TrialRecord]:
    """Every trial of a sweep read back from MLflow as a ``TrialRecord``: the varying params
    as config, the best value of ``metric`` over its evaluations."""
    keys = varying_params(data.runs)
    out = []
    for r in data.runs:
        hist = [v for _, v in data.history(r.run_id, metric)] if metric in r.metrics else []
        best = (max(hist) if mode == "max" else min(hist)) if hist else None
        out.append(TrialRecord(trial_id=r.trial_id,
                               config={k: _typed(r.params[k]) for k in keys if k in r.params},
                               metric=best, pruned=r.pruned, status=r.status,
                               iterations=int(r.metrics.get("iteration", 0))))
    return out


def sweep_study(data: ExperimentData, records: list[TrialRecord], mode: str) -> Any:
    """The sweep's Optuna study (``<sweep_dir>/optuna.db``) when it is reachable, else one
    rebuilt from the MLflow trials (distributions spanning the values seen)."""
    import optuna

    sweep_dir = data.parent_tags.get(SWEEP_DIR_TAG)
    name = data.parent_tags.get(SWEEP_TAG)
    if sweep_dir and name and (Path(sweep_dir) / OPTUNA_DB).is_file():
        try:
            return optuna.load_study(study_name=name,
                                     storage=f"sqlite:///{Path(sweep_dir) / OPTUNA_DB}")
        except (KeyError, ValueError):
            pass
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    keys = sorted({k for r in records for k in r["config"]})
    dists: dict[str, Any] = {}
    for k in keys:
        vals = [r["config"][k] for r in records if k in r["config"]]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            dists[k] = optuna.distributions.FloatDistribution(lo, hi if hi > lo else lo + 1.0)
        else:
            dists[k] = optuna.distributions.CategoricalDistribution(
                sorted({str(v) for v in vals}))
    for r in records:
        if r["metric"] is None or not math.isfinite(r["metric"]) or r["pruned"]:
            continue
        params = {k: (float(v) if isinstance(dists[k], optuna.distributions.FloatDistribution)
                      else str(v)) for k, v in r["config"].items() if k in dists}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=r["metric"]))
    return study


def plot_importances(study: Any, importances: dict[str, Any], label: str, path: Path
                     ) -> Path:
    """Optuna's importance chart of ``study`` (the numbers of ``param_importances``, its
    evaluator being Optuna's default too); where there are none, the note saying why."""
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib import rc_context

    with rc_context(), warnings.catch_warnings():  # optuna sets a pyplot style: keep it here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if importances.get("importances"):
            ax = optuna.visualization.matplotlib.plot_param_importances(study,
                                                                        target_name=label)
            fig = ax.figure
        else:
            fig, ax = plt.subplots(figsize=(6.5, 1.8))
            ax.text(0.5, 0.5, importances.get("note", "no importances"), ha="center",
                    va="center", wrap=True, fontsize=9)
            ax.set_axis_off()
            ax.set_title("parameter importances", fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def sweep_metric(data: ExperimentData) -> tuple[str, str]:
    """The sweep's metric and mode (its parent's tag ``sweep_metric``), else the average mAP
    of the logged tIoUs, maximised."""
    metric, _, mode = data.parent_tags.get(SWEEP_METRIC_TAG, "").partition(" (")
    mode = mode.rstrip(")") or "max"
    if not metric:
        from mllm4wtal.evaluation.detection import average_metric_name

        tious = data.tious()
        metric = average_metric_name(tious) if tious else "map/avg"
    return metric, mode


def plot_sweep(data: ExperimentData, out_dir: Path) -> list[Path]:
    """``parallel_coordinates.png``, ``param_importances.json`` and ``param_importances.png``
    of a sweep read back from MLflow."""
    metric, mode = sweep_metric(data)
    records = sweep_records(data, metric, mode)
    pc = out_dir / "parallel_coordinates.png"
    plot_parallel_coordinates(records, metric, mode, pc)
    study = sweep_study(data, records, mode)
    importances = param_importances(study)
    importances["metric"] = f"{metric} ({mode})"
    (out_dir / "param_importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    ip = plot_importances(study, importances, importances["metric"],
                          out_dir / "param_importances.png")
    return [pc, out_dir / "param_importances.json", ip]


__all__ = ["param_importances", "plot_parallel_coordinates", "plot_importances",
           "plot_sweep", "sweep_records", "sweep_study", "sweep_metric", "finite_value"]
