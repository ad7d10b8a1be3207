"""jobs/bench/cluster_scale.py: its accounting of lost slot time and driver hooks, and a
smoke run on a real (tiny) local cluster."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_benches import table, trial

BENCH = Path(__file__).resolve().parents[1] / "jobs" / "bench"
sys.path.insert(0, str(BENCH))
import cluster_scale as cs  # noqa: E402
import sweep_occupancy as occ  # noqa: E402


def test_lost_time_counts_slots_idle_while_a_trial_waits():
    # 2 slots. a: created 0, started 1, first iteration 3, ends 10 (slot 1). b: created 0,
    # started 2, first iteration 4, ends 6 (slot 2). c: created 0.5 but its slot is free only
    # at 6; started 6.5, first iteration 7, ends 9. Slot 1 idle 10 -> 10 and slot 2 idle 9 ->
    # 10 with no trial waiting: the tail, not lost.
    a = trial("a", 1.0, 10.0, [(2, 10.0, 7.0)], first=3.0)
    b = trial("b", 2.0, 6.0, [(2, 6.0, 2.0)], first=4.0)
    c = trial("c", 6.5, 9.0, [(2, 9.0, 2.0)], first=7.0)
    sweep = occ.SweepTiming(Path("x"), 2, 2, 0.0, [a, b, c])
    slots, *_ = occ.account(sweep)
    assert [s.trials for s in slots] == [[a], [b, c]]
    queued, starting = cs.lost_seconds(slots, {"a": 0.0, "b": 0.0, "c": 0.5})
    assert queued == pytest.approx(1 + 2 + 0.5)  # created (or slot free) -> started
    assert starting == pytest.approx(2 + 2 + 0.5)  # started -> first iteration
    assert cs.between_trials(slots, {"a": 0.0, "b": 0.0, "c": 0.5}) == [pytest.approx(1.0)]


def test_hook_times_time_a_method_without_changing_it():
    class Searcher:
        def suggest(self, trial_id: str) -> str:
            if trial_id == "bad":
                raise KeyError(trial_id)
            return f"config of {trial_id}"

    hooks = cs.HookTimes()
    hooks.wrap(Searcher, "suggest", "optuna", created=True)
    assert Searcher().suggest("t1") == "config of t1"
    with pytest.raises(KeyError, match="bad"):
        Searcher().suggest("bad")
    assert hooks.calls["optuna"] == 2 and hooks.seconds["optuna"] >= 0
    assert set(hooks.created) == {"t1", "bad"}


def test_cluster_scale_help_says_what_it_measures():
    proc = subprocess.run([sys.executable, str(BENCH / "cluster_scale.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for words in ("scheduling", "mlflow", "optuna ask/tell", "checkpoint sync", "lost",
                  "--nodes", "--trials", "--max-concurrent"):
        assert words in proc.stdout


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_scale_smoke_on_a_local_cluster():
    # a head and one worker node started with `ray start`, a sweep of one tiny trial joined
    # to it (168 s at load 15 on 2 cores, 251 s with 2 trials: a node starts its worker
    # processes one at a time there); the timeout only guards against a hang
    proc = subprocess.run([sys.executable, str(BENCH / "cluster_scale.py"), "--nodes", "1",
                           "--trials", "1", "--iterations", "4", "--eval-interval", "2"],
                          capture_output=True, text=True, timeout=1200, cwd=BENCH.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = table(proc.stdout.splitlines(), "nodes")
    # nodes, CPUs/node (at least 1), trials, at once, finished
    assert row[:5] == ["1", "1", "1", "1", "1"]
    median, most = (float(x) for x in row[6].split(" / "))
    assert 0 < median <= most
    assert row[8] == "nan"  # between trials: every trial was its slot's first
    for value in [row[5], row[7], *row[9:12], row[13]]:  # wall, created->started, costs
        assert math.isfinite(float(value)) and float(value) >= 0
    assert float(row[9]) > 0 and float(row[10]) > 0  # Optuna and MLflow were timed
    for share in (row[12], row[14], row[15]):  # driver busy, lost, lost before start
        assert 0 <= float(share.rstrip("%")) <= 100
