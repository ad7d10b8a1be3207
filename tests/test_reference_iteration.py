"""jobs/bench/reference_iteration.py: the smoke scale prints both rows with finite figures,
and the Boosting-WTAL reference iteration (jobs/bench/boosting_wtal.py) steps its three
optimisers as the code base does."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "jobs" / "bench"
sys.path.insert(0, str(BENCH))
import boosting_wtal  # noqa: E402


def number(cell: str) -> float:
    value = float(cell.rstrip("x*"))
    assert math.isfinite(value) and value > 0, cell
    return value


def test_small_scale_prints_ours_reference_and_ratios():
    # ~20 s of CPU (three interpreters, a few tiny iterations each); the timeout only guards
    # against a hang on a loaded shared machine
    proc = subprocess.run([sys.executable, str(BENCH / "reference_iteration.py"), "--scale",
                           "small", "--threads", "1", "--alternations", "2", "--warmup", "0"],
                          capture_output=True, text=True, timeout=600, cwd=BENCH.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in proc.stdout.splitlines() if line.startswith("| "))}
    ours, ref = rows["ours: DPID.step"], rows["reference: Boosting-WTAL"]
    for seconds, spread, gflop, peak, own in (ours, ref):
        low, high = map(number, spread.split("-"))
        assert low <= number(seconds) <= high
        number(gflop), number(peak), number(own)
    time_ratio, _, flop_ratio, peak_ratio, own_ratio = rows["ratio ours / reference"]
    assert number(time_ratio) == pytest.approx(number(ours[0]) / number(ref[0]), rel=0.05)
    assert number(flop_ratio) == pytest.approx(number(ours[2]) / number(ref[2]), rel=0.05)
    assert number(peak_ratio) == pytest.approx(number(ours[3]) / number(ref[3]), rel=0.05)
    number(own_ratio)
    assert "scale small: B=10, T=32, D=128" in proc.stdout


def test_reference_steps_reconstructor_attention_and_tsm_apart():
    ref = boosting_wtal.Reference(boosting_wtal.SCALES["small"])
    vlc = ref.vlc
    attention = {id(p) for p in vlc.attention.parameters()}
    reconstructor = {id(p) for p in vlc.parameters()} - attention
    groups = {name: {id(p) for g in opt.param_groups for p in g["params"]}
              for name, opt in (("rec", ref.opt_rec), ("mask", ref.opt_mask),
                                ("tsm", ref.opt_tsm))}
    assert groups["mask"] == attention and groups["rec"] == reconstructor
    assert groups["tsm"] == {id(p) for p in ref.tsm.parameters()}

    before = {name: p.detach().clone() for name, p in vlc.attention.named_parameters()}
    assert math.isfinite(ref.step())
    # the attention learns from the reweighted reconstruction (phase B) ...
    assert all(not torch.equal(before[n], p) for n, p in vlc.attention.named_parameters())
    # ... and every TSM parameter from its loss; the unused proposal scorer gets nothing
    assert all(p.grad is not None for p in ref.tsm.parameters())
    assert all(p.grad is None for p in vlc.scorer.parameters())
    assert all(p.grad is not None for p in vlc.completer.text.parameters())
    # inverse-sqrt warm-up of both VLC optimisers: 1e-7 -> 4e-4 over 400 updates
    for opt in (ref.opt_rec, ref.opt_mask):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-7 + (4e-4 - 1e-7) / 400)
