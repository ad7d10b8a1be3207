"""The benchmarks under jobs/bench keep working: run at smoke size, their tables checked."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mllm4wtal.errors import UserError

BENCH = Path(__file__).resolve().parents[1] / "jobs" / "bench"
sys.path.insert(0, str(BENCH))
import sweep_occupancy as occ  # noqa: E402


def table(lines: list[str], first_column: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with ``first_column``."""
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_column} |"):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table '{first_column}' in:\n" + "\n".join(lines))


def test_gpu_throughput_runs_on_cpu():
    # Ray's start and three trial processes dominate (111 s on a 2-core machine at load 8,
    # a fraction of that when idle); the timeout only guards against a hang
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_throughput.py"), "--cpu-smoke"],
                          capture_output=True, text=True, timeout=600, cwd=BENCH.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any("the CPU smoke run" in line for line in lines)
    if not torch.cuda.is_available():  # and it says that no GPU was measured
        assert any("No GPU machine was available" in line for line in lines)
    (single,) = table(lines, "size")
    assert single[0] == "tiny" and single[4] == "fp32"
    assert math.isfinite(float(single[5])) and float(single[5]) > 0
    packed = table(lines, "N")
    assert [row[0] for row in packed] == ["1", "2"]
    for row in packed:
        assert row[1] == "0"  # gpu share: none on the CPU
        assert 1 <= int(row[3]) <= int(row[0])  # trials that ran at once
        for value in row[4:8]:  # per trial, aggregate, x N=1, end-to-end
            assert math.isfinite(float(value)) and float(value) > 0
    assert float(packed[0][6]) == pytest.approx(1.0)


def trial(trial_id: str, start: float, end: float, reports: list[tuple[int, float, float]],
          first: float | None = None) -> occ.TrialTiming:
    """A trial with reports ``(iteration, driver time, time_this_iter_s)``; ``first`` the
    recorded time of its first iteration."""
    metrics = {occ.FIRST_ITERATION: first} if first is not None else {}
    return occ.TrialTiming(trial_id, start, end, "FINISHED",
                           [occ.Report(it, at, s, dict(metrics)) for it, at, s in reports],
                           {1})


def test_sweep_occupancy_accounts_slot_time():
    # a: slot 1, start-up 2 s (recorded), trains 9 s, then the slot has nothing left (tail);
    # c: slot 2 from 0.5 (empty before), start-up 1.5 s, trains to 8; b goes to the slot free
    # the longest (2, empty 8 -> 12); its start-up is estimated: its later intervals take
    # 0.5 s per iteration, so its first 10 iterations began at 20 - 5 = 15: start-up 3 s
    a = trial("a", 0.0, 11.0, [(10, 6.0, 4.0), (20, 11.0, 5.0)], first=2.0)
    b = trial("b", 12.0, 30.0, [(10, 20.0, 8.0), (20, 25.0, 5.0), (30, 30.0, 5.0)])
    c = trial("c", 0.5, 8.0, [(10, 8.0, 7.5)], first=2.0)
    sweep = occ.SweepTiming(Path("x"), 2, 10, -3.0, [a, c, b])
    slots, t0, t1, crowded = occ.account(sweep)
    assert (t0, t1, crowded) == (0.0, 30.0, 0)
    assert a.exact and c.exact and not b.exact
    assert b.first_iteration == pytest.approx(15.0)
    s1, s2 = slots
    assert s1.trials == [a] and s2.trials == [c, b]
    assert (s1.busy, s1.startup, s1.empty, s1.tail) == pytest.approx((9, 2, 0, 19))
    assert (s2.busy, s2.startup, s2.empty, s2.tail) == pytest.approx((6 + 15, 1.5 + 3,
                                                                      0.5 + 4, 0))
    text = occ.report(sweep)
    assert "slot-busy share: 50.0% (30.0 s of 2 x 30.0 s)" in text
    assert "median 2.0 s, max 3.0 s (2 of 3 recorded, 1 estimated)" in text
    assert "busy with training" in text  # the definition is printed
    assert "before it: 3.0 s" in text  # the sweep started 3 s before its first trial


def test_sweep_occupancy_refuses_a_folder_that_is_no_sweep(tmp_path):
    with pytest.raises(UserError, match="is not a sweep directory"):
        occ.read_sweep(tmp_path)
