"""How busy a sweep keeps its trial slots: training, start-up and empty time per slot.

Runs the README's quickstart sweep (``mllm4wtal sweep search_spaces/quickstart.yaml``, with
``--storage`` in a temporary folder, or ``--storage DIR`` to keep it), or with
``--experiment-dir`` only analyses a sweep that already ran (read only: its MLflow sqlite
store is read from a copy). Prints per slot and per trial where the time went, the wall time
after the first trial starts, the slot-busy share and the trials' start-up seconds.

What a sweep records, and how exact it is (all on the driver's clock unless said):

* MLflow child run of a trial: ``start_time`` (ms) when Ray Tune started the trial (its
  actor process is up: ``on_trial_start``), ``end_time`` (ms) when the driver saw it finish
  (``on_trial_complete`` / ``on_trial_error``); per report the metric ``iteration`` with
  its timestamp (ms, when the driver logged the result). Exact to milliseconds.
* Ray's ``result.json`` in each trial directory: per report ``iteration``,
  ``time_this_iter_s`` (the trainable's own seconds since the previous report, or since it
  began to run for the first one) and the trial process ``pid``. Exact.
* The training loop's ``metrics.jsonl`` carries no times. So the moment a trial's first
  training iteration began is recorded only if its reports carry ``time/first_iteration``
  (Unix seconds; see FIRST_ITERATION); otherwise it is ESTIMATED from the first report:
  ``first report - iterations it covers x the trial's median seconds per iteration over its
  later reports`` (those intervals include an evaluation and a checkpoint each, as the first
  does). The output says which.

A trial restarted (``max_failures``, ``mllm4wtal sweep --resume``) keeps its MLflow run, so its
span runs from its first start to its last end; the trial table marks it. On a cluster the
recorded first iteration is on the trial node's clock, the rest on the driver's.

    .venv/bin/python jobs/bench/sweep_occupancy.py                      # run + analyse
    .venv/bin/python jobs/bench/sweep_occupancy.py --experiment-dir sweeps/quickstart
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
#: a report key holding the Unix time the trial's first training iteration began
FIRST_ITERATION = "time/first_iteration"

DEFINITIONS = """\
definitions (driver clock):
  trial start       Ray Tune started the trial (its actor is up; MLflow child run start)
  first iteration   the trial's training loop began iteration 1 (recorded or estimated)
  trial end         the driver saw the trial finish (MLflow child run end)
  busy with training  a slot from a trial's first iteration to its end: the iterations
                    and the evaluations, checkpoints and reports between them
  start-up          trial start -> first iteration (imports, config, dataset from the object
                    store, text bundle, model): idle
  empty             a slot without a trial before its first one and between trials (actor
                    stopped, the searcher's next suggestion, a new actor process): idle
  tail              a slot without a trial after its last one, no trial left to start: idle
  wall time         first trial start -> last trial end; slots = trials.max_concurrent
  slot-busy share   sum of busy time / (slots x wall time)"""


@dataclass
class Report:
    iteration: int
    at: float  # driver time (s) the result was logged
    seconds: float  # time_this_iter_s
    metrics: dict = field(default_factory=dict)  # the result.json line


@dataclass
class TrialTiming:
    trial_id: str
    start: float
    end: float | None  # None: still RUNNING in MLflow
    status: str
    reports: list[Report]
    pids: set[int]
    first_iteration: float | None = None
    exact: bool = False

    @property
    def finish(self) -> float:
        return self.end if self.end is not None else max(
            [r.at for r in self.reports], default=self.start)


@dataclass
class SweepTiming:
    experiment_dir: Path
    slots: int
    eval_interval: int
    driver_start: float  # the sweep's MLflow parent run start
    trials: list[TrialTiming]


# --- reading a sweep --------------------------------------------------------------------

def read_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Ray's ``result.json`` of every trial directory: trial id -> its result lines."""
    out: dict[str, list[dict]] = {}
    for path in sorted(experiment_dir.glob("*/result.json")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if lines:
            out.setdefault(str(lines[0]["trial_id"]), []).extend(lines)
    return out


def open_store(tracking_uri: str, tmp: Path):
    """An MlflowClient on the sweep's store; a sqlite file is read from a copy (never
    written, not even by MLflow's start-up checks)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        copy = tmp / "mlflow.db"
        shutil.copy2(tracking_uri[len("sqlite:///"):], copy)
        tracking_uri = f"sqlite:///{copy}"
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def read_sweep(experiment_dir: str | Path) -> SweepTiming:
    """The timing of every trial of the sweep in ``experiment_dir``."""
    from mllm4wtal.sweep.mlflow_store import search_runs
    from mllm4wtal.sweep.mlflow_tags import PARENT_TAG, TRIAL_TAG
    from mllm4wtal.sweep.runner import reload
    from mllm4wtal.sweep.tracker import PARENT_RUN_FILE

    exp = Path(experiment_dir).expanduser().resolve()
    space = reload(exp)
    parent = json.loads((exp / PARENT_RUN_FILE).read_text())
    results = read_results(exp)
    with tempfile.TemporaryDirectory(prefix="occupancy_") as tmp:
        client = open_store(parent["tracking_uri"], Path(tmp))
        driver_start = client.get_run(parent["run_id"]).info.start_time / 1000
        trials = []
        for run in search_runs(client, parent["experiment_id"],
                               f"tags.`{PARENT_TAG}` = '{parent['run_id']}'"):
            trial_id = run.data.tags.get(TRIAL_TAG, run.info.run_name)
            logged = {m.step: m.timestamp / 1000
                      for m in client.get_metric_history(run.info.run_id, "iteration")}
            lines = {int(r["iteration"]): r for r in results.get(trial_id, [])
                     if r.get("iteration") is not None}
            reports = [Report(it, at, float(lines[it]["time_this_iter_s"]), lines[it])
                       for it, at in sorted(logged.items()) if it in lines]
            trials.append(TrialTiming(
                trial_id, run.info.start_time / 1000,
                run.info.end_time / 1000 if run.info.end_time else None, run.info.status,
                reports, {int(r["pid"]) for r in results.get(trial_id, []) if "pid" in r}))
    return SweepTiming(exp, space.trials.max_concurrent, space.base_config.train.eval_interval,
                       driver_start, sorted(trials, key=lambda t: t.start))


# --- when training began ------------------------------------------------------------------

def seconds_per_iteration(trial: TrialTiming) -> float | None:
    """Median seconds per iteration over the reports after the first."""
    r = trial.reports
    rates = [b.seconds / (b.iteration - a.iteration) for a, b in zip(r, r[1:], strict=False)
             if b.iteration > a.iteration]
    return statistics.median(rates) if rates else None


def place_first_iterations(sweep: SweepTiming) -> None:
    """Set each trial's ``first_iteration``: recorded (exact) or estimated."""
    rates = [s for t in sweep.trials if (s := seconds_per_iteration(t)) is not None]
    fallback = statistics.median(rates) if rates else None
    for t in sweep.trials:
        if not t.reports:
            continue
        first = t.reports[0]
        if first.metrics.get(FIRST_ITERATION) is not None:
            t.first_iteration, t.exact = float(first.metrics[FIRST_ITERATION]), True
            continue
        rate = seconds_per_iteration(t) or fallback
        if rate is not None:
            guess = first.at - first.iteration * rate
            t.first_iteration = min(max(guess, t.start), first.at)


# --- slots ---------------------------------------------------------------------------

@dataclass
class Slot:
    trials: list[TrialTiming] = field(default_factory=list)
    busy: float = 0.0
    startup: float = 0.0
    empty: float = 0.0
    tail: float = 0.0


def assign_slots(sweep: SweepTiming) -> tuple[list[Slot], int]:
    """Trials in start order, each to the slot free the longest; returns the slots and how
    many trials started before any slot was free (0 unless more ran than ``slots``)."""
    slots = [Slot() for _ in range(sweep.slots)]
    crowded = 0
    for t in sweep.trials:
        slot = min(slots, key=lambda s: s.trials[-1].finish if s.trials else -1.0)
        if slot.trials and slot.trials[-1].finish > t.start + 1e-3:
            crowded += 1
        slot.trials.append(t)
    return slots, crowded


def account(sweep: SweepTiming) -> tuple[list[Slot], float, float, int]:
    """Fill each slot's busy / start-up / empty / tail seconds; returns the slots, the wall
    start and end, and the crowded count of ``assign_slots``."""
    place_first_iterations(sweep)
    slots, crowded = assign_slots(sweep)
    t0 = min(t.start for t in sweep.trials)
    t1 = max(t.finish for t in sweep.trials)
    for slot in slots:
        free = t0
        for t in slot.trials:
            begin = max(t.start, free)
            slot.empty += begin - free
            trained = t.first_iteration if t.first_iteration is not None else t.finish
            trained = min(max(trained, begin), t.finish)
            slot.startup += trained - begin
            slot.busy += t.finish - trained
            free = max(free, t.finish)
        slot.tail += t1 - free
    return slots, t0, t1, crowded


# --- output ------------------------------------------------------------------------

def report(sweep: SweepTiming) -> str:
    slots, t0, t1, crowded = account(sweep)
    wall = t1 - t0
    lines = [f"sweep {sweep.experiment_dir} ({len(sweep.trials)} trials, {sweep.slots} slots, "
             f"train.eval_interval {sweep.eval_interval})", DEFINITIONS, ""]
    lines += ["| trial | slot | status | start s | first it. s | end s | start-up s | "
              "training s | iterations | first iteration |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    where = {t.trial_id: i for i, s in enumerate(slots) for t in s.trials}
    for t in sweep.trials:
        first = "-" if t.first_iteration is None else f"{t.first_iteration - t0:.1f}"
        startup = "-" if t.first_iteration is None else f"{t.first_iteration - t.start:.1f}"
        busy = 0.0 if t.first_iteration is None else t.finish - t.first_iteration
        how = ("recorded" if t.exact else "estimated" if t.first_iteration is not None
               else "no report")
        if len(t.pids) > 1:
            how += f", restarted ({len(t.pids)} processes)"
        lines.append(f"| {t.trial_id} | {where[t.trial_id] + 1} | {t.status} | "
                     f"{t.start - t0:.1f} | {first} | {t.finish - t0:.1f} | {startup} | "
                     f"{busy:.1f} | {t.reports[-1].iteration if t.reports else 0} | {how} |")
    lines += ["", "| slot | trials | training s | start-up s | empty s | tail s | busy |",
              "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(slots):
        lines.append(f"| {i + 1} | {len(s.trials)} | {s.busy:.1f} | {s.startup:.1f} | "
                     f"{s.empty:.1f} | {s.tail:.1f} | {s.busy / wall:.1%} |")
    busy = sum(s.busy for s in slots)
    lines.append(f"| all | {len(sweep.trials)} | {busy:.1f} | "
                 f"{sum(s.startup for s in slots):.1f} | {sum(s.empty for s in slots):.1f} | "
                 f"{sum(s.tail for s in slots):.1f} | {busy / (wall * len(slots)):.1%} |")
    startups = [t.first_iteration - t.start for t in sweep.trials
                if t.first_iteration is not None]
    exact = sum(t.exact for t in sweep.trials)
    lines += ["", f"wall time after the first trial starts: {wall:.1f} s "
              f"(before it: {t0 - sweep.driver_start:.1f} s from the sweep's start, not "
              "counted)",
              f"slot-busy share: {busy / (wall * len(slots)):.1%} "
              f"({busy:.1f} s of {len(slots)} x {wall:.1f} s)"]
    if startups:
        lines.append(f"start-up per trial (trial start -> first iteration): median "
                     f"{statistics.median(startups):.1f} s, max {max(startups):.1f} s "
                     f"({exact} of {len(startups)} recorded, "
                     f"{len(startups) - exact} estimated)")
    if exact < len(startups):
        lines.append(f"  estimated: the trials do not report '{FIRST_ITERATION}'; the "
                     "estimate assumes the first report interval's iterations and evaluation "
                     "cost what the later ones do")
    if crowded:
        lines.append(f"note: {crowded} trials started before a slot was free (more trials ran "
                     f"at once than trials.max_concurrent = {sweep.slots})")
    return "\n".join(lines)


def run_quickstart(storage: Path) -> Path:
    """The README's quickstart sweep with its storage in ``storage``; its experiment dir."""
    cli = Path(sys.executable).with_name("mllm4wtal")
    command = [str(cli) if cli.exists() else "mllm4wtal", "sweep", str(QUICKSTART),
               "--storage", str(storage)]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return storage / "quickstart"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment-dir", type=Path,
                    help="analyse this finished sweep (<storage>/<name>) instead of running one")
    ap.add_argument("--storage", type=Path,
                    help="where the quickstart sweep writes (kept); default a temporary folder")
    args = ap.parse_args()
    if args.experiment_dir is not None:
        print(report(read_sweep(args.experiment_dir)))
    elif args.storage is not None:
        print(report(read_sweep(run_quickstart(args.storage.resolve()))))
    else:
        with tempfile.TemporaryDirectory(prefix="quickstart_") as tmp:
            print(report(read_sweep(run_quickstart(Path(tmp)))))


if __name__ == "__main__":
    main()
