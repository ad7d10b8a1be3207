"""One DPID iteration against one Boosting-WTAL iteration, alternating in one process.

* ours: one ``mllm4wtal.train.dpid.DPID.step`` of the ``thumos14`` preset (``--scale
  paper``; the ``synthetic`` preset at ``--scale small``) on synthetic videos of the real
  shapes: B = 10 videos of T = 320 snippets, 1024 RGB + 1024 flow features;
* reference: one training iteration of Boosting-WTAL (Li et al. 2023: TSM + VLC, its
  three optimisers) at its published THUMOS14 settings, on random inputs of the same
  shapes: ``boosting_wtal.py``, whose docstring gives every module's widths and layers,
  where each comes from (paper section, file of the code base) and what is simplified.

Both are built in this process, run ``--warmup`` untimed iterations each, then
``--alternations`` pairs (ours, reference) timed one iteration at a time; the table gives
the median seconds per iteration and its range, the FLOPs of one more iteration each
(``torch.utils.flop_counter.FlopCounterMode``: forward and backward matmuls,
convolutions, attention), the peak memory of each in a fresh subprocess over 2
iterations, and the ratios ours / reference. Peak memory is the process's resident
high-water mark, reset after building (``/proc/self/clear_refs``; ``*`` where refused):
VmHWM, the per-process figure that ``ru_maxrss`` reports, read from /proc because a child's
``ru_maxrss`` also carries its parent's peak across exec (``ru_maxrss`` where /proc lacks
it); the last column is that peak less the RSS of the worker's interpreter and libraries.
``torch.set_num_threads(--threads)`` holds in every process.

    .venv/bin/python jobs/bench/reference_iteration.py --scale paper --alternations 5
    .venv/bin/python jobs/bench/reference_iteration.py --scale small --threads 1   # smoke
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boosting_wtal import SCALES, Reference  # noqa: E402
from scaling import peak_mib, reset_peak, rss_mib, step_overrides  # noqa: E402

#: what ours imports; the reference's worker does without (gensim, scipy: seconds)
OUR_MODULES = ("mllm4wtal.config", "mllm4wtal.data.batching", "mllm4wtal.data.load",
               "mllm4wtal.text.bundle", "mllm4wtal.train.dpid", "mllm4wtal.train.loop")
MEMORY_ITERATIONS = 2  # the first allocates Adam's state; the second is the steady state


def ours(scale: str, cache: str) -> Callable[[], object]:
    """``DPID.step`` on two prebuilt batches of the shapes of ``SCALES[scale]``, in turn."""
    config, batching, load, bundle, dpid_module, loop = map(importlib.import_module,
                                                            OUR_MODULES)
    s = SCALES[scale]
    preset, extra = ("thumos14", ["data.format=synthetic", "data.name=Synthetic",
                                  f"data.synthetic.rgb_dim={s.feature // 2}",
                                  f"data.synthetic.flow_dim={s.feature // 2}"]) \
        if scale == "paper" else ("synthetic", [])
    cfg = config.load_config(preset, step_overrides(s.length, {
        "device": "cpu", "cache": cache, "overrides": extra}))
    data = load.load_from_config(cfg.data)
    loop.seed_everything(0)
    text = bundle.build_text_bundle(cfg, data)
    dpid = dpid_module.DPID(loop.build_model(cfg, data, text), cfg)
    sampler = batching.TrainBatchSampler.from_dataset(
        data, batch_size=cfg.data.batch_size, max_seqlen=cfg.data.max_seqlen,
        n_similar=cfg.data.n_similar, seed=0)
    rng = np.random.default_rng(0)
    batches = [loop.make_batch(cfg, data, sampler, text, rng) for _ in range(2)]
    shape = tuple(batches[0].features.shape)
    if shape != (s.batch, s.length, s.feature):
        sys.exit(f"our batch is {shape}, not (B, T, D) = {(s.batch, s.length, s.feature)}")
    done = [0]

    def step() -> object:
        done[0] += 1
        return dpid.step(batches[done[0] % 2], done[0] - 1)

    return step


def build(which: str, scale: str, cache: str) -> Callable[[], object]:
    return ours(scale, cache) if which == "ours" else Reference(SCALES[scale]).step


def timed(step: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def count_flops(step: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def high_water_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_mib()


def memory_worker(which: str, scale: str, cache: str) -> dict:
    """Peak resident set of ``MEMORY_ITERATIONS`` iterations, in this fresh process."""
    if which == "ours":
        for name in OUR_MODULES:
            importlib.import_module(name)
    libraries = rss_mib()
    step = build(which, scale, cache)
    reset = reset_peak()
    for _ in range(MEMORY_ITERATIONS):
        step()
    return {"peak": high_water_mib(), "libraries": libraries, "reset": reset}


def spawn_memory(which: str, args: argparse.Namespace, cache: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", which, "--scale",
                           args.scale, "--threads", str(args.threads), "--cache", cache],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"memory worker ({which}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, times: list[float], flops: int, mem: dict) -> str:
    mark = "" if mem["reset"] else "*"
    spread = f"{min(times):.3f}-{max(times):.3f}"
    peak, own = f"{mem['peak']:.0f}{mark}", f"{mem['peak'] - mem['libraries']:.0f}{mark}"
    return (f"| {name:26} | {statistics.median(times):9.3f} | {spread:>15} | "
            f"{flops / 1e9:9.1f} | {peak:>9} | {own:>10} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper",
                    help="paper: B=10, T=320, D=2048; small: a smoke run of seconds")
    ap.add_argument("--alternations", type=int, default=5, help="timed pairs of iterations")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations of each first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--memory-worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.alternations < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--alternations and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.scale, args.cache)))
        return
    s = SCALES[args.scale]
    with tempfile.TemporaryDirectory(prefix="reference_iteration_") as cache:
        # memory first, while this process is still small
        mem = {which: spawn_memory(which, args, cache) for which in ("ours", "reference")}
        steps = {which: build(which, args.scale, cache) for which in ("ours", "reference")}
        for _ in range(args.warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {which: [] for which in steps}
        for _ in range(args.alternations):
            for which, step in steps.items():
                times[which].append(timed(step))
        flops = {which: count_flops(step) for which, step in steps.items()}
    print(f"scale {args.scale}: B={s.batch}, T={s.length}, D={s.feature}; {args.threads} "
          f"threads; median of {args.alternations} alternations after {args.warmup} "
          f"warm-up; FLOPs of one iteration; peak RSS over {MEMORY_ITERATIONS} iterations in "
          f"a fresh process (* = not reset after building), and less the libraries")
    print(f"| {'iteration':26} | {'s / iter':>9} | {'range s':>15} | {'GFLOP':>9} | "
          f"{'peak MiB':>9} | {'- libs MiB':>10} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 17}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    print(row("ours: DPID.step", times["ours"], flops["ours"], mem["ours"]))
    print(row("reference: Boosting-WTAL", times["reference"], flops["reference"],
              mem["reference"]))
    o, r = mem["ours"], mem["reference"]
    ratios = (statistics.median(times["ours"]) / statistics.median(times["reference"]),
              flops["ours"] / flops["reference"], o["peak"] / r["peak"],
              (o["peak"] - o["libraries"]) / (r["peak"] - r["libraries"]))
    cells = [f"{x:.3f}x" for x in ratios]
    print(f"| {'ratio ours / reference':26} | {cells[0]:>9} | {'':>15} | {cells[1]:>9} | "
          f"{cells[2]:>9} | {cells[3]:>10} |")

if __name__ == "__main__":
    main()
