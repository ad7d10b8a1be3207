"""Plots of an experiment, as PNG files (matplotlib's object API: no global state, no
display needed).

- ``map_curves.png``: the table's metric against the training iteration, one line per row
  (mean over seeds) with a band of +- one std where there are two seeds or more.
- ``timeline_<video>.png``: figure 3 of MLLM4WTAL for one test video: the ground truth, then
  for each row its actionness of the video's class and its best proposals of any class (one
  run of the row: the checkpoint ``best.pt`` and the ``predictions.json`` it wrote), with a
  legend of the class colours.

The plots of a sweep are in ``report.sweep_plots``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mllm4wtal.report.collect import ExperimentData, RunInfo
from mllm4wtal.report.tables import Table, column_label, column_value

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _class_color(index: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab20"](int(index) % 20)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


# --------------------------------------------------------------------------- curves


def metric_curve(data: ExperimentData, run: RunInfo, metric: str, tious: Sequence[float]
                 ) -> list[tuple[int, float]]:
    """``[(iteration, value)]`` of a column over a run's evaluations (derived averages
    computed per evaluation)."""
    if metric in run.metrics:
        return data.history(run.run_id, metric)
    from mllm4wtal.evaluation.detection import tiou_key

    steps: dict[int, dict[str, float]] = {}
    for t in tious:
        key = f"map/{tiou_key(t)}"
        for step, v in data.history(run.run_id, key):
            steps.setdefault(step, {})[key] = v
    out = []
    for step in sorted(steps):
        v = column_value(metric, steps[step], tious)
        if v is not None:
            out.append((step, v))
    return out


def plot_map_curves(data: ExperimentData, table: Table, path: Path, max_rows: int = 10
                    ) -> Path:
    tious = data.tious()
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for i, row in enumerate(table.rows[:max_rows]):
        per_step: dict[int, list[float]] = {}
        for run in row.runs.values():
            for step, v in metric_curve(data, run, table.metric, tious):
                per_step.setdefault(step, []).append(v * 100)
        if not per_step:
            continue
        steps = sorted(per_step)
        mean = np.array([np.mean(per_step[s]) for s in steps])
        std = np.array([np.std(per_step[s], ddof=1) if len(per_step[s]) > 1 else 0.0
                        for s in steps])
        color = _COLORS[i % len(_COLORS)]
        ax.plot(steps, mean, color=color, marker="o", markersize=3,
                label=f"{row.label} (n={row.n})")
        if row.n > 1:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
        drawn += 1
    ax.set_xlabel("training iteration")
    ax.set_ylabel(f"mAP {column_label(table.metric)} (%)")
    ax.set_title(f"{table.title}: {column_label(table.metric)} over training "
                 "(mean ± std over seeds)", fontsize=10)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no metric history", ha="center", va="center",
                transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- timelines


@dataclass
class TimelineTrack:
    """One row of a timeline: a method's actionness and proposals on one video."""

    label: str
    actionness: np.ndarray  # (T,) in [0, 1] for the video's class
    proposals: list[tuple[float, float, float, int]]  # (start s, end s, score, class index)


def snippet_actionness(model: Any, cfg: Any, video: Any, cls: int, device: Any) -> np.ndarray:
    """The actionness the proposals are cut from, for class ``cls`` (the localization head's
    class probability, or the attention with ``inference.source: cas``)."""
    import torch

    from mllm4wtal.inference.evaluate import snippet_scores

    feats = torch.as_tensor(np.asarray(video.features, dtype=np.float32))[None].to(device)
    mask = torch.ones(1, feats.shape[1], dtype=torch.bool, device=device)
    _, act, _ = snippet_scores(model, feats, mask, cfg.inference.source,
                               cfg.inference.topk_divisor)[0]
    act = np.asarray(act, dtype=np.float64)
    return act[:, cls] if act.ndim == 2 else act


def pick_videos(dataset: Any, n: int, names: Sequence[str] | None = None) -> list[Any]:
    """The named test videos, else the first ``n`` (by name) with ground truth."""
    test = {v.name: v for v in dataset.test}
    if names:
        missing = [v for v in names if v not in test]
        if missing:
            from mllm4wtal.errors import UserError

            raise UserError(f"--videos: {', '.join(missing)} not among the test videos "
                            f"({', '.join(sorted(test)[:5])}, ...)")
        return [test[v] for v in names]
    return [test[k] for k in sorted(test) if test[k].segments][:n]


def class_legend(ax: Any, classes: Sequence[str], gt: Sequence[int], others: Sequence[int]
                 ) -> Any:
    """A legend above ``ax`` mapping each drawn class's colour to its name: the ground
    truth's classes first, then the classes only proposals have (marked so)."""
    from matplotlib.patches import Patch

    order = [*dict.fromkeys(gt), *sorted(set(others) - set(gt))]
    handles = [Patch(color=_class_color(i), label=classes[i] if i in gt
                     else f"{classes[i]} (proposals only)") for i in order]
    if not handles:
        return None
    return ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.02),
                     ncols=min(len(handles), 4), fontsize=7, frameon=False,
                     title="class colours", title_fontsize=7)


def plot_timeline(video: Any, classes: Sequence[str], tracks: Sequence[TimelineTrack],
                  seconds_per_snippet: float, path: Path) -> Path:
    """``timeline_figure`` saved to ``path``."""
    timeline_figure(video, classes, tracks, seconds_per_snippet).savefig(path)
    return path


def timeline_figure(video: Any, classes: Sequence[str], tracks: Sequence[TimelineTrack],
                    seconds_per_snippet: float) -> Any:
    """Ground truth on top, then one panel per track: actionness (line) and proposals
    (bars under it in the colour of their class, as the ground truth's; darker = higher
    score); a legend maps the class colours to class names. Returns the ``Figure``."""
    n = len(tracks)
    fig = _figure(10.0, 1.1 + 1.25 * (n + 1))
    axes = [fig.add_subplot(n + 1, 1, i + 1) for i in range(n + 1)]
    dur = float(video.duration)
    gt = axes[0]
    for seg in video.segments:
        gt.axvspan(seg.start, seg.end, color=_class_color(seg.label), alpha=0.8)
    labels = sorted({classes[int(s.label)] for s in video.segments})
    gt.set_yticks([])
    gt.set_ylabel("GT", rotation=0, ha="right", va="center")
    gt.set_title(f"{video.name}: {', '.join(labels) or 'no action'}", fontsize=10, loc="left")
    class_legend(gt, classes, [int(s.label) for s in video.segments],
                 [int(p[3]) for tr in tracks for p in tr.proposals])
    for ax, tr in zip(axes[1:], tracks, strict=True):
        t = (np.arange(len(tr.actionness)) + 0.5) * seconds_per_snippet
        ax.plot(t, tr.actionness, color="tab:blue", linewidth=1.2)
        ax.fill_between(t, 0, tr.actionness, color="tab:blue", alpha=0.15)
        top = max((s for _, _, s, _ in tr.proposals), default=1.0) or 1.0
        for start, end, score, label in tr.proposals:
            alpha = 0.25 + 0.75 * max(0.0, min(1.0, score / top))
            ax.add_patch(_rect(start, -0.22, end - start, 0.14, alpha, _class_color(label)))
        wrong = sorted({classes[lbl] for *_, lbl in tr.proposals} - set(labels))
        if wrong:
            ax.text(0.995, 0.95, "proposals also of: " + ", ".join(wrong), ha="right",
                    va="top", fontsize=7, transform=ax.transAxes)
        for seg in video.segments:  # the ground truth, faintly, for reading the errors off
            ax.axvspan(seg.start, seg.end, color="0.5", alpha=0.08, linewidth=0)
        ax.set_ylim(-0.26, 1.05)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
        ax.set_ylabel(tr.label, rotation=0, ha="right", va="center", fontsize=8)
    for ax in axes:
        ax.set_xlim(0, dur)
    for ax in axes[:-1]:
        ax.set_xticklabels([])
    axes[-1].set_xlabel("seconds (line: actionness of the video's class; bars: the top "
                        "proposals, coloured by class, darker = higher score)", fontsize=8)
    fig.tight_layout()
    return fig


def _rect(x: float, y: float, w: float, h: float, alpha: float, color: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), max(w, 1e-6), h, color=color, alpha=alpha, linewidth=0)


def _proposals(predictions: dict, video: str, classes: Sequence[str], limit: int = 10
               ) -> list[tuple[float, float, float, int]]:
    """The ``limit`` best proposals of a video, of any class (a wrong class shows up)."""
    index = {c: i for i, c in enumerate(classes)}
    props = [p for p in predictions.get("results", {}).get(video, [])
             if p.get("label") in index]
    props.sort(key=lambda p: -float(p.get("score", 0.0)))
    return [(float(p["segment"][0]), float(p["segment"][1]), float(p.get("score", 0.0)),
             index[p["label"]]) for p in props[:limit]]


def plot_timelines(data: ExperimentData, table: Table, out_dir: Path, n_videos: int = 3,
                   videos: Sequence[str] | None = None, max_rows: int = 6
                   ) -> tuple[list[Path], list[str]]:
    """One timeline per test video over the table's rows (one run each: the smallest seed
    all rows share, else each row's smallest). Returns the files and notes (what was left
    out and why)."""
    import tempfile

    from mllm4wtal.inference.evaluate import load_checkpoint_model

    notes: list[str] = []
    rows = [r for r in table.rows if r.runs][:max_rows]
    if not rows or (n_videos <= 0 and not videos):
        return [], notes
    shared = set.intersection(*(set(r.runs) for r in rows))
    datasets: dict[str, Any] = {}
    tracks_by_video: dict[str, list[TimelineTrack]] = {}
    chosen: list[Any] = []
    meta: tuple[list[str], float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            seed = min(shared) if shared else min(row.runs)
            run = row.runs[seed]
            where = Path(tmp) / run.run_id
            ckpt = data.download(run.run_id, "best.pt", where)
            pred_path = data.download(run.run_id, "predictions.json", where)
            if ckpt is None:
                notes.append(f"timelines: {row.label} (seed {seed}) has no best.pt artifact")
                continue
            key = json.dumps({k: v for k, v in run.params.items() if k.startswith("data.")},
                             sort_keys=True)
            model, cfg, dataset, device = load_checkpoint_model(str(ckpt),
                                                                dataset=datasets.get(key))
            datasets[key] = dataset
            if not chosen:
                chosen = pick_videos(dataset, n_videos, videos)
                meta = (list(dataset.classes),
                        float(dataset.snippet_to_seconds(1.0, chosen[0].fps)) if chosen
                        else 1.0)
            predictions = json.loads(pred_path.read_text()) if pred_path else {}
            for video in chosen:
                cls = int(video.segments[0].label) if video.segments else int(video.labels[0])
                act = snippet_actionness(model, cfg, video, cls, device)
                props = _proposals(predictions, video.name, dataset.classes)
                tracks_by_video.setdefault(video.name, []).append(
                    TimelineTrack(f"{row.label}\n(seed {seed})", act, props))
    files = []
    if meta is None:
        return files, notes
    classes, sec = meta
    for video in chosen:
        tracks = tracks_by_video.get(video.name, [])
        if tracks:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in video.name)
            files.append(plot_timeline(video, classes, tracks, sec,
                                       out_dir / f"timeline_{safe}.png"))
    return files, notes


__all__ = ["plot_map_curves", "plot_timelines", "plot_timeline", "timeline_figure",
           "class_legend", "TimelineTrack",
           "snippet_actionness", "pick_videos", "metric_curve"]
