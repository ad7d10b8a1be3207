"""The plots of a sweep (``summary/`` at the end of a sweep, and ``mllm4wtal report`` of a
sweep): parallel coordinates of its trials, the optimisation history, the pruning picture,
and the parameter importances (``report.importances``); the data they are drawn from is read
back by ``report.sweep_data``.

Each plot is a function of plain data (trial records, the metric and mode, ASHA's rungs,
per-trial histories) that returns a matplotlib ``Figure``; the caller saves it. A trial's
score is ``TrialRecord["metric"]``. The parallel coordinates stay hand-drawn: Optuna's
``plot_parallel_coordinate`` draws COMPLETE trials only, and a sweep's picture needs the
trials ASHA pruned (dashed, at the value they reached) and the failed ones (grey) too; a
conditional parameter a trial did not sample is a gap in its line, not a value.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.report.collect import ExperimentData
from mllm4wtal.report.importances import param_importances, plot_importances
from mllm4wtal.report.sweep_data import (
    History,
    stored_study,
    sweep_metric,
    sweep_records,
    sweep_rungs,
    sweep_score,
    sweep_study,
)
from mllm4wtal.sweep.mlflow_names import as_float, truncate
from mllm4wtal.sweep.records import SCORE_RULES, TrialRecord


def finite_value(value: Any) -> float | None:
    """A finite real number as a float, else None."""
    v = as_float(value)
    return v if v is not None and math.isfinite(v) else None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _empty(fig: Any, ax: Any, text: str) -> Any:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------- parallel coords


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else as category indices (with the labels)."""
    nums = [as_float(v) for v in values]
    if all(n is not None for n in nums):
        return [float(n) for n in nums], None  # type: ignore[arg-type]
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def _column(raw: list[Any]) -> tuple[list[float | None], str]:
    """One axis: each trial's value scaled to [0, 1] (None: not sampled / no value), and the
    range it spans as text (log-scaled when positive over two decades or more)."""
    ok = [v is not None and not (isinstance(v, float) and not math.isfinite(v)) for v in raw]
    vals, labels = _axis_values([v for v, good in zip(raw, ok, strict=True) if good])
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    log = labels is None and lo > 0 and hi / lo >= 100  # e.g. learning rates
    scaled = [math.log10(v) for v in vals] if log else vals
    s_lo, s_hi = (min(scaled), max(scaled)) if scaled else (0.0, 1.0)
    span = s_hi - s_lo if s_hi > s_lo else 1.0
    it = iter(scaled)
    text = (f"{lo:.3g}..{hi:.3g}{' (log)' if log else ''}" if labels is None
            else ",".join(labels))
    return [(next(it) - s_lo) / span if good else None for good in ok], text


def _runs(ys: list[float | None]) -> list[list[int]]:
    """The runs of consecutive axes that have a value."""
    runs: list[list[int]] = []
    for i, y in enumerate(ys):
        if y is None:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def plot_parallel_coordinates(records: Sequence[TrialRecord], metric: str, mode: str) -> Any:
    """One line per trial through its overrides and its score (each axis scaled to [0, 1]),
    coloured by the score (the colour bar); pruned trials dashed, trials without a score
    grey. A parameter the trial did not sample (conditional) is a gap in its line. Each line
    has the trial id as ``gid``."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keys = sorted({k for r in records for k in (r.get("config") or {})})
    axes = [*keys, metric]
    fig = _figure(max(7.0, 1.6 * len(axes) + 3), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    if not records:
        return _empty(fig, ax, "no trials")
    columns = []
    for idx, key in enumerate(axes):
        raw = ([r.get("metric") for r in records] if key == metric
               else [(r.get("config") or {}).get(key) for r in records])
        col, text = _column(raw)
        columns.append(col)
        sampled = sum(v is not None for v in col)
        if key != metric and sampled < len(records):
            text += f"\nsampled by {sampled}/{len(records)}"
        ax.text(idx, -0.08, truncate(text, 40), ha="center", va="top", fontsize=7)
    scores = [finite_value(r.get("metric")) for r in records]
    seen = [s for s in scores if s is not None]
    norm = Normalize(*(min(seen), max(seen)) if seen else (0.0, 1.0))
    cmap = colormaps["viridis" if mode == "max" else "viridis_r"]  # bright = better
    for i, r in enumerate(records):
        ys = [col[i] for col in columns]
        s = scores[i]
        color = "0.7" if s is None else cmap(norm(s) if norm.vmax > norm.vmin else 1.0)
        for run in _runs(ys):
            ax.plot(run, [ys[x] for x in run], color=color, marker="o", markersize=3,
                    linestyle="--" if r.get("pruned") else "-", linewidth=1.2, alpha=0.9,
                    gid=str(r.get("trial_id", i)))
    xs = list(range(len(axes)))
    ax.set_xticks(xs)
    ax.set_xticklabels([truncate(a, 24) for a in axes], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.3, len(axes) - 0.7)
    ax.set_ylim(-0.3, 1.05)
    ax.set_yticks([])
    for x in xs:
        ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(f"{metric} ({mode}: {'higher' if mode == 'max' else 'lower'} is better)",
                  fontsize=8)
    ax.set_title(f"{len(records)} trials; dashed = pruned, grey = no score, "
                 "gap = parameter not sampled by that trial", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- history, pruning


def best_so_far(scores: Sequence[float | None], mode: str) -> list[float]:
    """The best score up to each trial (NaN before the first score)."""
    out, best = [], math.nan
    for s in scores:
        if s is not None and (math.isnan(best) or (s > best if mode == "max" else s < best)):
            best = s
        out.append(best)
    return out


def plot_optimisation_history(records: Sequence[TrialRecord], metric: str, mode: str,
                              score: str | None = None) -> Any:
    """Each trial's score against its number (``records`` in start order: 1, 2, ...), and the
    best so far by ``mode``; pruned trials (their score is where ASHA stopped them) marked
    apart. ``score`` (``best`` / ``last``) names which evaluation a score is."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    scores = [finite_value(r.get("metric")) for r in records]
    if not any(s is not None for s in scores):
        return _empty(fig, ax, f"no trial reported a finite {metric}")
    n = np.arange(1, len(records) + 1)
    kinds = (("finished", "o", "tab:blue", lambda r: not r.get("pruned")),
             ("pruned by ASHA", "v", "tab:orange", lambda r: bool(r.get("pruned"))))
    for label, marker, color, pick in kinds:
        idx = [i for i, r in enumerate(records) if pick(r) and scores[i] is not None]
        if idx:
            ax.plot(n[idx], [scores[i] for i in idx], linestyle="none", marker=marker,
                    color=color, label=f"{label} ({len(idx)})", gid=f"trials:{label}")
    best = best_so_far(scores, mode)
    ax.plot(n, best, drawstyle="steps-post", color="tab:red", linewidth=1.5,
            label=f"best so far ({mode})", gid="best_so_far")
    missing = sum(s is None for s in scores)
    what = f"\n({SCORE_RULES.get(score, score)})" if score else ""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(f"{metric}{what}", fontsize=8)
    ax.set_title(f"optimisation history of {metric} ({mode}): {len(records)} trials"
                 + (f" ({missing} without a score)" if missing else ""), fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_pruning(records: Sequence[TrialRecord], histories: Mapping[str, History],
                 rungs: Sequence[int] | None, metric: str, mode: str) -> Any:
    """Each trial's ``metric`` at every evaluation against the training iteration
    (``histories``: trial id -> [(iteration, value)]), ASHA's ``rungs`` as vertical lines
    (None: not known) and a cross where ASHA stopped each pruned trial (its last evaluation
    at or before the iterations it ran). Lines have the trial id as ``gid``, crosses
    ``stop:<trial id>``, rungs ``rung:<iteration>``."""
    from matplotlib.lines import Line2D

    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"finished": "tab:blue", "pruned": "tab:orange", "failed": "0.6"}
    drawn, stopped = Counter[str](), 0
    for r in records:
        tid = str(r.get("trial_id", ""))
        hist = [(int(i), float(v)) for i, v in histories.get(tid) or [] if math.isfinite(v)]
        if not hist:
            continue
        kind = ("pruned" if r.get("pruned")
                else "finished" if r.get("status", "FINISHED") == "FINISHED" else "failed")
        drawn[kind] += 1
        ax.plot([i for i, _ in hist], [v for _, v in hist], color=colors[kind], alpha=0.8,
                linewidth=1.1, marker=".", markersize=3, gid=tid)
        if kind == "pruned":
            at = int(r.get("iterations") or hist[-1][0])
            point = [p for p in hist if p[0] <= at][-1:] or hist[-1:]
            ax.plot([point[0][0]], [point[0][1]], marker="X", markersize=8, color="tab:red",
                    linestyle="none", gid=f"stop:{tid}", zorder=3)
            stopped += 1
    if not sum(drawn.values()):
        return _empty(fig, ax, f"no trial has a history of {metric}")
    for rung in rungs or ():
        ax.axvline(rung, color="0.35", linestyle=":", linewidth=1.0, gid=f"rung:{rung}")
    handles = [Line2D([], [], color=colors[k], label=f"{k} ({drawn[k]})")
               for k in colors if drawn[k]]
    handles.append(Line2D([], [], color="tab:red", marker="X", linestyle="none",
                          label=f"stopped by ASHA ({stopped})"))
    if rungs:
        handles.append(Line2D([], [], color="0.35", linestyle=":",
                              label="ASHA rungs: " + ", ".join(str(r) for r in rungs)))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("training iteration")
    ax.set_ylabel(f"{metric} ({mode})", fontsize=8)
    ax.set_title(f"pruning: {sum(drawn.values())} trials' {metric} at each evaluation"
                 + ("" if rungs is not None else " (ASHA rungs not known)"), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path)
    return path


def plot_sweep(data: ExperimentData, out_dir: Path) -> list[Path]:
    """``parallel_coordinates.png``, ``optimisation_history.png``, ``pruning.png``,
    ``param_importances.json`` and ``param_importances.png`` of a sweep read back from
    MLflow."""
    metric, mode = sweep_metric(data)
    stored = stored_study(data)
    records = sweep_records(data, metric, mode, stored)
    histories = {r.trial_id: data.history(r.run_id, metric) for r in data.runs}
    files = [
        _save(plot_parallel_coordinates(records, metric, mode),
              out_dir / "parallel_coordinates.png"),
        _save(plot_optimisation_history(records, metric, mode, sweep_score(data)),
              out_dir / "optimisation_history.png"),
        _save(plot_pruning(records, histories, sweep_rungs(data), metric, mode),
              out_dir / "pruning.png")]
    study = stored if stored is not None else sweep_study(data, records, mode)
    importances = {"metric": f"{metric} ({mode})", **param_importances(study)}
    (out_dir / "param_importances.json").write_text(json.dumps(importances, indent=2) + "\n")
    files.append(out_dir / "param_importances.json")
    files.append(_save(plot_importances(importances, importances["metric"]),
                       out_dir / "param_importances.png"))
    return files


__all__ = ["plot_parallel_coordinates", "plot_optimisation_history", "plot_pruning",
           "plot_sweep", "best_so_far", "finite_value"]
