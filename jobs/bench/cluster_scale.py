"""Does a sweep's driver keep up at cluster scale? Overhead per trial on a simulated cluster.

Starts a real multi-node Ray cluster on this machine (jobs/cluster/local_cluster.py: a head
and N worker nodes, each its own `ray start`, on 127.0.0.1, token auth) and runs sweeps of
short trials through the real sweep path (``runner.load`` -> ``claim`` -> ``run_sweep``: Ray
Tune + Optuna TPE + ASHA + MLflow, joined to the cluster through ``RAY_ADDRESS`` as under
`ray job submit`), all trials of a sweep at once (``trials.max_concurrent`` = trials; fewer
when their processes would not fit in memory, said in the output), for each node count x
trial count asked. The driver's own work is timed inside the driver
process by wrapping (timing only, behaviour unchanged) the hooks that do it:

  optuna ask/tell   PruningAwareOptunaSearch.suggest / on_trial_result / on_trial_complete
  mlflow            MlflowTuneCallback's hooks (every MLflow write of a sweep is there)
  checkpoint sync   TuneController.checkpoint (experiment state saved and synced to the
                    storage) and _process_trial_save (a trial's checkpoint registered)

and the trial timeline is read back with jobs/bench/sweep_occupancy.py (MLflow run start and
end, each report's time, the trial's recorded first iteration). Per trial:

  scheduling        trial created (Optuna ask) -> its first training iteration, split into
                    created -> started (placement, actor process up; MLflow run start) and
                    started -> first iteration (imports, dataset, model in the trial)
  between trials    for a trial that is not its slot's first: its slot free -> its first
                    iteration (median; the actor process is reused: no process start)
  lost              a slot idle while a trial waits for it: from when the trial exists and
                    its slot is free to its first iteration; share = lost / (slots x wall),
                    wall = first ask -> last trial end. Slots idle with no trial left to run
                    (the tail) are not lost.
  driver busy       the timed hooks' seconds / wall; driver CPU: the driver process's CPU
                    seconds (all threads) per trial

Target: the driver keeps up with 64 concurrent trials with under 5 % of wall time lost
between trials. On a machine with few cores the trials' own start-up (process, imports)
competes for the CPU with everything else, so "lost" there measures the machine more than
the driver; the driver columns are its own cost.

    nice -n 10 .venv/bin/python jobs/bench/cluster_scale.py                 # 2, 4 nodes x 16, 64
    .venv/bin/python jobs/bench/cluster_scale.py --nodes 1 --trials 2 --iterations 4 \\
        --eval-interval 2                                                   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parents[1]
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "jobs" / "cluster"))
import gpu_throughput  # noqa: E402  (the tiny synthetic trial's overrides)
import sweep_occupancy as occ  # noqa: E402  (reading a sweep's timeline back)

#: what the driver's timed hooks are grouped into
GROUPS = ("optuna", "mlflow", "checkpoint")
#: private memory of one tiny trial's process (torch, Ray, the project; measured: ~300-350 MB)
TRIAL_MB = 400
#: the share of the machine's available memory the trials of a sweep may take
MEMORY_SHARE = 0.5


# --- in the driver: the sweep, its hooks timed ---------------------------------------------

class HookTimes:
    """Seconds spent in wrapped methods, per group; the time each trial was created."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.created: dict[str, float] = {}

    def wrap(self, cls: type, name: str, group: str, created: bool = False) -> None:
        """Time ``cls.name`` into ``group``; with ``created``, its first argument is a trial
        id whose creation time is the call's start."""
        original = getattr(cls, name)

        def timed(obj: Any, *args: Any, **kwargs: Any) -> Any:
            began, t0 = time.time(), time.perf_counter()
            try:
                return original(obj, *args, **kwargs)
            finally:
                self.seconds[group] += time.perf_counter() - t0
                self.calls[group] += 1
                if created and args:
                    self.created.setdefault(str(args[0]), began)

        setattr(cls, name, timed)


def time_driver_hooks() -> HookTimes:
    """Wrap the driver's Optuna, MLflow and checkpoint hooks (class attributes: the searcher
    and callback Ray pickles keep working)."""
    from mllm4wtal.sweep.search import PruningAwareOptunaSearch
    from mllm4wtal.sweep.tune_callback import MlflowTuneCallback
    from ray.tune.execution.tune_controller import TuneController

    hooks = HookTimes()
    hooks.wrap(PruningAwareOptunaSearch, "suggest", "optuna", created=True)
    for name in ("on_trial_result", "on_trial_complete"):
        hooks.wrap(PruningAwareOptunaSearch, name, "optuna")
    for name in ("setup", "on_trial_start", "on_trial_result", "on_trial_complete",
                 "on_trial_error"):
        hooks.wrap(MlflowTuneCallback, name, "mlflow")
    for name in ("checkpoint", "_process_trial_save"):
        hooks.wrap(TuneController, name, "checkpoint")
    return hooks


def drive(space_path: Path, out: Path) -> None:
    """One sweep as its driver (this process, joined to ``$RAY_ADDRESS``); its figures to
    ``out`` (JSON)."""
    from mllm4wtal.sweep import runner

    hooks = time_driver_hooks()
    space = runner.load(space_path, [])
    runner.claim(space, [])
    cpu0, wall0 = _cpu_seconds(), time.time()
    result = runner.run_sweep(space, verbose=0)
    out.write_text(json.dumps({
        "experiment_dir": str(result.experiment_dir), "interrupted": result.interrupted,
        "statuses": [r["status"] for r in result.records],
        "seconds": hooks.seconds, "calls": hooks.calls, "created": hooks.created,
        "driver_cpu": _cpu_seconds() - cpu0, "driver_wall": time.time() - wall0}))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- around it: the cluster, the search space ----------------------------------------------

def space_file(path: Path, trials: int, slots: int, cpu: float, iterations: int,
               eval_interval: int, storage: Path, cache: Path) -> Path:
    """A sweep of ``trials`` tiny trials, ``slots`` at a time, at ``cpu`` per trial (Optuna
    TPE and ASHA as in the quickstart)."""
    import yaml  # writing only; the sweep reads it back through the project's YAML reader
    from mllm4wtal.config import load_config, to_flat

    overrides = [*gpu_throughput.size_overrides("tiny", "cpu", str(cache), 4),
                 f"train.iterations={iterations}", f"train.eval_interval={eval_interval}"]
    flat = to_flat(load_config("synthetic", overrides))
    path.write_text(yaml.safe_dump({
        "name": f"scale_{trials}",
        "description": f"cluster_scale.py: {trials} tiny trials, {slots} at once",
        "base": "synthetic",
        "overrides": {k: flat[k] for k in (o.partition("=")[0] for o in overrides)},
        "space": {"loss.lambda1": {"type": "float", "low": 0.3, "high": 5.0, "log": True},
                  "train.lr": {"type": "float", "low": 1.0e-4, "high": 2.0e-3, "log": True}},
        "searcher": {"sampler": "tpe", "seed": 0, "n_startup_trials": 4},
        "scheduler": {"type": "asha", "grace_period": eval_interval, "reduction_factor": 2,
                      "max_t": iterations},
        "trials": {"num_samples": trials, "max_concurrent": slots, "max_failures": 0},
        "resources": {"cpu": cpu, "gpu": 0},
        "storage": {"path": str(storage)},
    }, sort_keys=False))
    return path


def available_mb() -> float:
    """MemAvailable of this machine, MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def at_once(trials: int, asked: int) -> tuple[int, str | None]:
    """How many trials run at once: ``asked`` (0: all), fewer when their processes would take
    more than MEMORY_SHARE of the available memory; with a note saying so."""
    want = min(trials, asked or trials)
    fit = max(1, int(MEMORY_SHARE * available_mb() / TRIAL_MB))
    if want <= fit:
        return want, None
    return fit, (f"{want} trials at once need ~{want * TRIAL_MB / 1024:.0f} GB of memory and "
                 f"{available_mb() / 1024:.0f} GB are available: ran {fit} at a time")


def start_cluster(make: Any, nodes: int, cpus: int, timeout: float, tries: int = 3) -> Any:
    """A started ``LocalCluster``; a start that fails (nodes register slowly on a loaded
    machine) is tried again with a new cluster, up to ``tries`` times."""
    from local_cluster import ClusterError

    for attempt in range(1, tries + 1):
        cluster = make(workers=nodes, cpus_per_node=cpus)
        try:
            return cluster.start(timeout=timeout)
        except ClusterError as e:  # start() has stopped what it started
            if attempt == tries:
                raise
            print(f"cluster start {attempt} failed ({str(e).splitlines()[0][:200]}); "
                  "again", flush=True)
    raise AssertionError("unreachable")


def run_sweep_on(cluster: Any, space: Path, out: Path, timeout: float) -> dict:
    """``drive`` in a process of its own, in the cluster's client environment."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run([sys.executable, __file__, "--drive", str(space), "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"the sweep {space} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# --- the figures --------------------------------------------------------------------------

def between_trials(slots: list[occ.Slot], created: dict[str, float]) -> list[float]:
    """Per trial that is not its slot's first: seconds from its slot being free (or its
    creation, if later) to its first iteration (the actor process is reused)."""
    gaps = []
    for slot in slots:
        for before, t in zip(slot.trials, slot.trials[1:], strict=False):
            if t.first_iteration is not None:
                gaps.append(t.first_iteration - max(created.get(t.trial_id, t.start),
                                                    before.finish))
    return gaps


def lost_seconds(slots: list[occ.Slot], created: dict[str, float]) -> tuple[float, float]:
    """Slot seconds idle while a trial waits: (from created or slot free -> trial started,
    started -> first iteration), summed over the slots (``occ.account`` filled them)."""
    queued = starting = 0.0
    for slot in slots:
        free = -math.inf
        for t in slot.trials:
            if t.first_iteration is None:
                continue
            waits = max(created.get(t.trial_id, t.start), free)
            started = min(max(t.start, waits), t.first_iteration)
            queued += started - waits
            starting += t.first_iteration - started
            free = t.finish
    return queued, starting


def figures(nodes: int, cpus_per_node: int, driven: dict) -> dict:
    """One row of the table from a driven sweep and its timeline."""
    sweep = occ.read_sweep(driven["experiment_dir"])
    slots, _, t1, _ = occ.account(sweep)
    created = {k: float(v) for k, v in driven["created"].items()}
    trials = [t for t in sweep.trials if t.first_iteration is not None]
    t0 = min([*created.values(), *(t.start for t in sweep.trials)])
    wall = t1 - t0
    queued, starting = lost_seconds(slots, created)
    n = len(sweep.trials)
    sched = [t.first_iteration - created.get(t.trial_id, t.start) for t in trials]
    hooks = {g: float(driven["seconds"].get(g, 0.0)) for g in GROUPS}
    gaps = between_trials(slots, created)
    return {
        "nodes": nodes, "cpus_per_node": cpus_per_node, "trials": n, "slots": sweep.slots,
        "finished": sum(s == "FINISHED" for s in driven["statuses"]), "wall": wall,
        "sched_median": statistics.median(sched) if sched else math.nan,
        "sched_max": max(sched) if sched else math.nan,
        "to_start": statistics.median([t.start - created.get(t.trial_id, t.start)
                                       for t in trials]) if trials else math.nan,
        "between": statistics.median(gaps) if gaps else math.nan,
        **{f"{g}_ms": 1000 * hooks[g] / max(n, 1) for g in GROUPS},
        "driver_busy": sum(hooks.values()) / wall,
        "driver_cpu": driven["driver_cpu"] / max(n, 1),
        "lost": (queued + starting) / (sweep.slots * wall),
        "lost_queued": queued / (sweep.slots * wall),
    }


HEADER = ("| nodes | CPUs/node | trials | at once | finished | wall s | "
          "scheduling s median / max | created->started s | between trials s | "
          "optuna ms/trial | "
          "mlflow ms/trial | checkpoint ms/trial | driver busy | driver CPU s/trial | lost | "
          "lost before start |")


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['cpus_per_node']} | {r['trials']} | {r['slots']} | "
            f"{r['finished']} | "
            f"{r['wall']:.1f} | {r['sched_median']:.1f} / {r['sched_max']:.1f} | "
            f"{r['to_start']:.1f} | {r['between']:.1f} | {r['optuna_ms']:.0f} | "
            f"{r['mlflow_ms']:.0f} | {r['checkpoint_ms']:.0f} | {r['driver_busy']:.1%} | "
            f"{r['driver_cpu']:.2f} | {r['lost']:.1%} | {r['lost_queued']:.1%} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> list[str]:
    """Per-trial driver cost at the most trials / nodes over the fewest."""
    out = []
    for key, other in (("trials", "nodes"), ("nodes", "trials")):
        for fixed in sorted({r[other] for r in rows}):
            same = sorted((r for r in rows if r[other] == fixed), key=lambda r: r[key])
            if len(same) < 2:
                continue
            a, b = same[0], same[-1]
            ratios = ", ".join(f"{g} x{b[f'{g}_ms'] / a[f'{g}_ms']:.2f}" for g in GROUPS
                               if a[f"{g}_ms"] > 0)
            out.append(f"{key} {a[key]} -> {b[key]} at {fixed} {other}: per trial {ratios}; "
                       f"lost {a['lost']:.1%} -> {b['lost']:.1%}")
    return out


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 4],
                    help="worker node counts to run (default: 2 4)")
    ap.add_argument("--trials", type=int, nargs="+", default=[16, 64],
                    help="trials per sweep (default: 16 64)")
    ap.add_argument("--cpu", type=float, default=0.25,
                    help="CPUs per trial; each node declares its share of max(trials) x cpu "
                         "(fake: Ray counts them, the machine has what it has; default 0.25)")
    ap.add_argument("--max-concurrent", type=int, default=0,
                    help="trials at once (default 0: all of a sweep's, fewer when their "
                         f"processes, ~{TRIAL_MB} MB each, would take more than "
                         f"{MEMORY_SHARE * 100:.0f} %% of the available memory)")
    ap.add_argument("--iterations", type=int, default=20, help="train.iterations per trial")
    ap.add_argument("--eval-interval", type=int, default=10, help="train.eval_interval")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds per sweep, and for the cluster to start")
    ap.add_argument("--keep", type=Path, help="keep the sweeps (and the space files) here")
    ap.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.drive:  # the driver of one sweep (run by run_sweep_on)
        drive(args.drive, args.out)
        return 0
    from local_cluster import LocalCluster

    rows = []
    with tempfile.TemporaryDirectory(prefix="cscale") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"load average at start: {load_average()} ({os.cpu_count()} CPUs)", flush=True)
        for nodes in args.nodes:
            cpus = max(1, math.ceil(max(args.trials) * args.cpu / nodes))
            cluster = start_cluster(LocalCluster, nodes, cpus, args.timeout)
            try:
                for trials in args.trials:
                    name = f"n{nodes}_t{trials}"
                    slots, note = at_once(trials, args.max_concurrent)
                    if note:
                        print(f"{name}: {note}", flush=True)
                    space = space_file(work / f"{name}.yaml", trials, slots, args.cpu,
                                       args.iterations, args.eval_interval,
                                       work / name, work / "cache")
                    driven = run_sweep_on(cluster, space, work / f"{name}.json", args.timeout)
                    rows.append(figures(nodes, cpus, driven))
                    print(f"{name}: done, load average {load_average()}\n"
                          f"{table(rows[-1:])}", flush=True)
            finally:
                cluster.stop()
        print(f"\n{args.iterations} iterations per trial (eval every {args.eval_interval}), "
              f"{args.cpu:g} CPU per trial; load average at the end: {load_average()}")
        print(table(rows))
        for line in growth(rows):
            print(line)
        worst = max((r for r in rows if r["trials"] >= 64), key=lambda r: r["lost"],
                    default=None)
        if worst is not None:
            verdict = "met" if worst["lost"] < 0.05 else "NOT met"
            print(f"target (< 5 % of wall time lost with 64 trials, {worst['slots']} at once "
                  f"here): {verdict} ({worst['lost']:.1%} at {worst['nodes']} nodes; driver "
                  f"busy {worst['driver_busy']:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
