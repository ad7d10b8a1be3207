"""``mllm4wtal report``: an MLflow experiment (a study or a sweep) -> tables and plots.

Writes into ``out_dir``: ``table.md``, ``table.csv``, ``table.tex`` (see ``report.tables``),
``map_curves.png``, ``timeline_<video>.png`` per test video (see ``report.plots``; they load
each row's checkpoint, so ``n_videos=0`` skips them), for a sweep also
``parallel_coordinates.png``, ``param_importances.{json,png}``, and ``report.json`` (the
table's numbers). Every file is logged as an artifact under ``report/`` of the study's (or
sweep's) parent run, unless ``log=False``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm4wtal.report.collect import ExperimentData, read_experiment
from mllm4wtal.report.plots import plot_map_curves, plot_timelines
from mllm4wtal.report.render import to_csv, to_latex, to_markdown
from mllm4wtal.report.sweep_plots import plot_sweep
from mllm4wtal.report.tables import Table, build_table
from mllm4wtal.sweep.mlflow_tags import SCORE_TAG

logger = logging.getLogger(__name__)
ARTIFACT_PATH = "report"


@dataclass
class Report:
    out_dir: Path
    data: ExperimentData
    table: Table
    markdown: str
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    logged_to: str | None = None  # the parent run the files were logged on


def table_json(table: Table) -> dict[str, Any]:
    """The table's numbers (fractions), one entry per row."""
    def diff(r: Any) -> dict[str, Any] | None:
        d = r.diff
        return None if d is None else {"n": d.n, "mean": d.mean, "std": d.std, "t": d.t,
                                       "p": d.p, "note": d.note, "seeds": list(d.seeds)}
    return {
        "experiment": table.experiment, "title": table.title, "kind": table.kind,
        "at": table.at, "metric": table.metric, "columns": table.columns,
        "paper": table.paper, "notes": table.notes,
        "rows": [{"variant": r.label, "description": r.description,
                  "reference": r.reference, "n": r.n, "seeds": r.seeds,
                  "runs": {str(s): run.run_id for s, run in r.runs.items()},
                  "cells": {c: {"mean": s.mean, "std": s.std, "n": s.n}
                            for c, s in r.cells.items()},
                  "values": {c: {str(k): v for k, v in vals.items()}
                             for c, vals in r.values.items()},
                  "paper": r.paper, "diff": diff(r)} for r in table.rows],
    }


def make_report(experiment: str, tracking_uri: str | None = None,
                out_dir: str | Path | None = None, *, at: str | None = None,
                n_videos: int = 3,
                videos: Sequence[str] | None = None, top_k: int = 20, log: bool = True,
                study: str | None = None) -> Report:
    """Tables and plots of the MLflow experiment ``experiment`` (see the module docstring).
    ``at``: each run's ``best`` evaluation or its ``final`` one; default: a sweep's own score
    rule (``score:``), else ``best`` (the evaluation best.pt holds), as everywhere."""
    data = read_experiment(experiment, tracking_uri, study)
    if at is None:
        at = "final" if data.parent_tags.get(SCORE_TAG) == "last" else "best"
    out = Path(out_dir) if out_dir is not None else Path("reports") / experiment
    out.mkdir(parents=True, exist_ok=True)
    table = build_table(data, at=at, top_k=top_k)
    markdown = to_markdown(table)
    files = []
    for name, text in (("table.md", markdown), ("table.csv", to_csv(table)),
                       ("table.tex", to_latex(table))):
        (out / name).write_text(text)
        files.append(out / name)
    (out / "report.json").write_text(json.dumps(table_json(table), indent=1) + "\n")
    files.append(out / "report.json")
    files.append(plot_map_curves(data, table, out / "map_curves.png"))
    notes: list[str] = []
    if n_videos > 0 or videos:
        timelines, more = plot_timelines(data, table, out, n_videos=n_videos, videos=videos)
        files += timelines
        notes += more
    if data.kind == "sweep":
        files += plot_sweep(data, out)
    report = Report(out_dir=out, data=data, table=table, markdown=markdown, files=files,
                    notes=notes)
    if log and data.parent_run_id is not None:
        for path in files:
            data.client.log_artifact(data.parent_run_id, str(path), ARTIFACT_PATH)
        report.logged_to = data.parent_run_id
    elif log:
        notes.append("no parent run in the experiment: the report was not logged to MLflow")
    return report


__all__ = ["Report", "make_report", "table_json"]
