"""Paper-style tables of an experiment: one row per variant, mAP at each tIoU and the
averages, mean +- std over seeds with n, the difference to the reference row with a paired
t-test over seeds, and the paper's figures beside ours (formats: ``render.py``).

A row's value per seed is the test evaluation of the run's ``best.pt`` (chosen on the
select videos) where a study's cell has one, with the choosing figure and the optimism
(select - test) beside; otherwise it is taken at the run's best evaluation by the table's
metric (``at="best"``, the iteration ``best.pt`` holds: the one meaning of best, and the
default) or at its last evaluation (``at="final"``). Averages the
runs did not log (``map/avg_0.3-0.7`` when training averaged 0.1-0.7) are the mean of the
per-tIoU values of the same evaluation. Cells hold fractions; ``render`` prints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mllm4wtal.evaluation.detection import average_metric_name, tiou_key
from mllm4wtal.report.collect import ExperimentData, RunInfo
from mllm4wtal.report.stats import PairedTest, Summary, paired_ttest, summarize
from mllm4wtal.sweep.mlflow_tags import BEST_TRIAL_TAG, SELECT_SPLIT_TAG
from mllm4wtal.sweep.study_file import HASH_EXCLUDED, column_tious

ATS = ("final", "best")
TEST, SELECT, OPTIMISM = "test/", "select/", "optimism/"  # a cell's test figures; the others
THUMOS_AVERAGES = ((0.1, 0.5), (0.3, 0.7))  # the columns THUMOS14 papers print


@dataclass
class Row:
    label: str
    description: str
    reference: str | None  # the row it is compared with; None for a reference row
    runs: dict[int, RunInfo]  # seed -> its (latest) finished run
    values: dict[str, dict[int, float]]  # column -> seed -> value (fraction)
    cells: dict[str, Summary]
    paper: dict[str, float]  # column -> the paper's figure (percent)
    diff: PairedTest | None = None
    note: str = ""

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Table:
    experiment: str
    title: str
    kind: str  # ablation or sweep
    columns: list[str]  # map/<tIoU> ..., then averages
    metric: str  # the column rows are compared on
    at: str
    rows: list[Row]
    paper: dict[str, str] = field(default_factory=dict)  # source, table, note
    notes: list[str] = field(default_factory=list)
    tested: bool = False  # values are test figures of checkpoints chosen on select

    @property
    def paper_columns(self) -> list[str]:
        return [c for c in self.columns if any(c in r.paper for r in self.rows)]

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


def column_label(column: str) -> str:
    """``map/0.5`` -> ``0.5``; ``map/avg_0.3-0.7`` -> ``AVG 0.3-0.7``; ``select/<c>`` ->
    ``select <c>``; ``optimism/<c>`` -> ``select-test <c>``."""
    for prefix, words in ((SELECT, "select "), (OPTIMISM, "select-test ")):
        if column.startswith(prefix):
            return words + column_label(column.removeprefix(prefix))
    if column.startswith("map/avg_"):
        return "AVG " + column[len("map/avg_"):]
    return column.removeprefix("map/")


def table_columns(data: ExperimentData, tious: Sequence[float], extra: Sequence[str] = ()
                  ) -> list[str]:
    """Per-tIoU columns, then the overall average, the averages the runs logged, the ones
    papers print for these tIoUs (THUMOS14: 0.1-0.5 and 0.3-0.7) and ``extra``."""
    per = [f"map/{tiou_key(t)}" for t in tious]
    if not tious:
        return []
    avgs = [average_metric_name(tious)]
    logged = {k for r in data.finished for k in r.metrics if k.startswith("map/avg_")}
    keys = {tiou_key(t) for t in tious}
    for lo, hi in THUMOS_AVERAGES:
        if {tiou_key(x / 10) for x in range(round(lo * 10), round(hi * 10) + 1)} <= keys:
            avgs.append(f"map/avg_{tiou_key(lo)}-{tiou_key(hi)}")
    for c in [*sorted(logged), *extra]:
        if c not in avgs and c not in per and column_tious(c, tious) is not None:
            avgs.append(c)
    first, rest = avgs[0], sorted(set(avgs[1:]) - {avgs[0]}, key=_avg_order)
    return per + [first] + rest


def _avg_order(column: str) -> tuple[float, float]:
    lo, hi = column[len("map/avg_"):].split("-")
    return float(lo), float(hi)


def column_value(column: str, values: Mapping[str, float], tious: Sequence[float]
                 ) -> float | None:
    """A column from one evaluation's metrics: logged, else the mean of its tIoUs."""
    if column in values:
        return float(values[column])
    ts = column_tious(column, tious)
    if not ts:
        return None
    parts = [values.get(f"map/{tiou_key(t)}") for t in ts]
    if any(p is None for p in parts):
        return None
    return math.fsum(float(p) for p in parts) / len(parts)  # type: ignore[arg-type]


def _step_values(data: ExperimentData, run: RunInfo, tious: Sequence[float],
                 columns: Sequence[str]) -> dict[int, dict[str, float]]:
    keys = {f"map/{tiou_key(t)}" for t in tious} | {c for c in columns if c in run.metrics}
    steps: dict[int, dict[str, float]] = {}
    for key in keys:
        for step, value in data.history(run.run_id, key):
            steps.setdefault(step, {})[key] = value
    return steps


def run_values(data: ExperimentData, run: RunInfo, columns: Sequence[str],
               tious: Sequence[float], at: str, metric: str, use_test: bool = False
               ) -> dict[str, float]:
    """Every column of one run: with ``use_test``, from its one test evaluation
    (``test/*``, of the checkpoint chosen on select) where it has one, with
    ``select/<metric>`` (the choosing figure, at ``at``) and ``optimism/<metric>``
    (select - test) beside; else at its last evaluation or its best one by ``metric``."""
    if at not in ATS:
        raise ValueError(f"at must be one of {ATS}, not {at!r}")
    if at == "final":
        source: Mapping[str, float] = run.metrics
    else:
        steps = _step_values(data, run, tious, [*columns, metric])
        scored = [(column_value(metric, v, tious), s) for s, v in steps.items()]
        scored = [(m, s) for m, s in scored if m is not None]
        if not scored:
            return {}
        best_step = min(scored, key=lambda ms: (-ms[0], ms[1]))[1]  # type: ignore[operator]
        source = steps[best_step]
    tested = {k.removeprefix(TEST): v for k, v in run.metrics.items()
              if use_test and k.startswith(TEST)}
    out = {}
    for c in columns:
        if c.startswith((SELECT, OPTIMISM)):
            continue
        v = column_value(c, tested or source, tious)
        if v is not None and math.isfinite(v):
            out[c] = v
    chose = column_value(metric, source, tious)
    if tested and metric in out and chose is not None and math.isfinite(chose):
        out[SELECT + metric], out[OPTIMISM + metric] = chose, chose - out[metric]
    return out


def _latest_per_seed(runs: Sequence[RunInfo]) -> tuple[dict[int, RunInfo], int]:
    out: dict[int, RunInfo] = {}
    dup = 0
    for r in sorted(runs, key=lambda r: r.start_time):
        seed = r.seed if r.seed is not None else -1
        dup += seed in out
        out[seed] = r
    return out, dup


def varying_params(runs: Sequence[RunInfo]) -> list[str]:
    """The params (but seed, device and folders) whose values differ between the runs."""
    keys = sorted({k for r in runs for k in r.params})
    return [k for k in keys if k not in HASH_EXCLUDED
            and len({r.params.get(k) for r in runs}) > 1]


def _groups(data: ExperimentData
            ) -> tuple[list[tuple[str, str, list[RunInfo], dict[str, float], str | None]],
                       list[str]]:
    """(label, description, runs, paper, reference) per row, and notes."""
    finished = data.finished
    notes = []
    if data.kind == "ablation":
        study = data.study or {}
        variants = study.get("variants") or []
        default_ref = study.get("reference")
        order = [v["name"] for v in variants]
        seen = [r.variant for r in finished if r.variant is not None]
        extra = [v for v in dict.fromkeys(seen) if v not in order]
        if not order:
            default_ref = seen[0] if seen else None
        groups = []
        for v in variants:
            ref = v.get("reference") or default_ref
            desc = v.get("description") or ""
            ovr = " ".join(f"{k}={_plain(x)}" for k, x in (v.get("overrides") or {}).items())
            groups.append((v["name"], "; ".join(x for x in (ovr, desc) if x),
                           [r for r in finished if r.variant == v["name"]],
                           dict(v.get("paper") or {}), None if ref == v["name"] else ref))
        for name in extra:
            groups.append((name, "(not in the study's current definition)",
                           [r for r in finished if r.variant == name], {},
                           None if name == default_ref else default_ref))
        if extra:
            notes.append(f"variants no longer in the study: {', '.join(extra)}")
        return groups, notes
    # a sweep: trials with the same config (but the seed) form one row
    varying = varying_params(finished)
    by_config: dict[tuple, list[RunInfo]] = {}
    for r in sorted(finished, key=lambda r: r.start_time):
        key = tuple(sorted((k, v) for k, v in r.params.items() if k not in HASH_EXCLUDED))
        by_config.setdefault(key, []).append(r)
    groups = []
    for runs in by_config.values():
        first = runs[0]
        label = first.trial_id + (f" (+{len(runs) - 1})" if len(runs) > 1 else "")
        desc = " ".join(f"{k}={first.params.get(k, '')}" for k in varying)
        groups.append((label, desc, runs, {}, None))
    pruned = sum(r.pruned for r in data.runs)
    failed = sum(r.status == "FAILED" for r in data.runs)
    other = sum(r.status in ("KILLED", "RUNNING") for r in data.runs)
    notes.append(f"{len(data.runs)} trials: {len(finished)} trained to the end (in the table), "
                 f"{pruned} pruned, {failed} failed, {other} killed or running")
    if groups:
        ref_label = groups[0][0]
        groups = [groups[0]] + [(lbl, d, rs, p, ref_label) for lbl, d, rs, p, _ in groups[1:]]
        notes.append(f"reference: the first trial, {ref_label} (a sweep's first points are "
                     "the paper defaults)")
    return groups, notes


def chosen_note(data: ExperimentData, metric: str) -> str:
    """A sweep's chosen trial in words: its score on select and its one test figure (the
    parent run's ``select/`` and ``test/`` metrics, ``sweep.chosen``); empty if none."""
    trial = data.parent_tags.get(BEST_TRIAL_TAG)
    select = data.parent_metrics.get(SELECT + metric)
    test = data.parent_metrics.get(TEST + metric)
    if data.kind != "sweep" or not trial or select is None or test is None:
        return ""
    split = data.parent_tags.get(SELECT_SPLIT_TAG, "the select videos")
    return (f"chosen on select ({split}): trial {trial}, {metric} = {select * 100:.2f} on "
            f"select, {test * 100:.2f} on test (evaluated once, for this trial only)")


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def build_table(data: ExperimentData, at: str = "best", top_k: int | None = 20) -> Table:
    """The table of an experiment (see the module docstring); a sweep keeps the reference
    row and the ``top_k`` best others by the metric."""
    tious = data.tious()
    study = data.study or {}
    metric = study.get("metric") or (average_metric_name(tious) if tious else "")
    groups, notes = _groups(data)
    paper_cols = [c for _, _, _, paper, _ in groups for c in paper]
    columns = table_columns(data, tious, [metric, *paper_cols])
    # a study's cells are each tested once; of a sweep's trials only the chosen one is
    tested = data.kind == "ablation" and any(k.startswith(TEST) for r in data.finished
                                             for k in r.metrics)
    if tested and metric:
        columns += [SELECT + metric, OPTIMISM + metric]
    rows: list[Row] = []
    for label, desc, runs, paper, ref in groups:
        per_seed, dup = _latest_per_seed(runs)
        if dup:
            notes.append(f"{label}: {dup} seed(s) finished more than once; the latest run "
                         "of each is used")
        values: dict[str, dict[int, float]] = {c: {} for c in columns}
        for seed, run in per_seed.items():
            for c, v in run_values(data, run, columns, tious, at, metric, tested).items():
                values[c][seed] = v
        cells = {c: summarize(list(values[c].values())) for c in columns}
        rows.append(Row(label=label, description=desc, reference=ref, runs=per_seed,
                        values=values, cells=cells, paper=paper,
                        note="no finished run" if not per_seed else ""))
    chosen = chosen_note(data, metric)
    if chosen:
        notes.insert(0, chosen)
    by_label = {r.label: r for r in rows}
    for r in rows:
        if r.reference is not None and r.reference in by_label and metric:
            r.diff = paired_ttest(r.values[metric], by_label[r.reference].values[metric])
    if data.kind == "sweep" and top_k is not None and len(rows) > top_k + 1:
        ranked = sorted(rows[1:], key=lambda r: -(r.cells[metric].mean or -math.inf))
        notes.append(f"{len(rows) - 1 - top_k} more trials not shown (--top {top_k})")
        rows = [rows[0], *ranked[:top_k]]
    elif data.kind == "sweep" and len(rows) > 1:
        rows = [rows[0], *sorted(rows[1:], key=lambda r: -(r.cells[metric].mean or -math.inf))]
    return Table(experiment=data.name, title=data.title, kind=data.kind, columns=columns,
                 metric=metric, at=at, rows=rows, tested=tested,
                 paper={k: str(v) for k, v in (study.get("paper") or {}).items()}, notes=notes)


__all__ = ["Row", "Table", "build_table", "run_values", "column_value", "column_label",
           "table_columns", "varying_params"]
