"""Training throughput on one GPU: one trial alone, and N trials packed on fractional shares.

(a) ``single``: one trial's training iterations per second (``make_batch`` -> ``.to(device)``
    -> ``DPID.step``, as ``train.loop.train`` iterates) at THUMOS14 and ActivityNet-1.2 sizes:
    the ``thumos14`` / ``activitynet12`` presets' widths (``WIDTH_KEYS``: D=2048, hidden 2048,
    KSM/CSR 512, word vectors 300, B=10, T=320 / 60) on synthetic random features of those
    shapes (every video T snippets), in fp32 and bf16 (``train.bf16``), with the peak of
    ``torch.cuda.max_memory_allocated``. Each in a fresh process (on a GPU): ``--warmup``
    untimed iterations, then ``--steps`` timed ones.
(b) ``packed``: N trials (``--packed 1 2 4 8 16``) at once through the real sweep path: a
    search-space file written here (``resources: {cpu: ..., gpu: 1/N}``, ``trials:
    {num_samples: N, max_concurrent: N}``, scheduler none, ``--packed-size``), run by
    ``mllm4wtal.sweep.runner`` in a temporary storage folder. Per trial, iterations per second
    over its reports after the first (start-up and CUDA warm-up excluded; each interval holds
    one evaluation on a few test videos and a checkpoint, as a real trial's do); aggregate =
    their sum (the table says how many trials ran at once); end-to-end = all iterations /
    (first trial start -> last trial end). GPU memory per trial: ``gpu/max_allocated_mib``
    where the trials report it (``torch.cuda.max_memory_allocated``), and each trial
    process's peak in ``nvidia-smi`` (CUDA context and the caching allocator included).

Without CUDA (or with ``--cpu-smoke``) it runs the same code at tiny widths, T=32, fp32 and
N = 1, 2 with ``gpu: 0`` and shares of one CPU core (one torch thread), so that CI keeps it
working; it then says that no GPU was measured.

    .venv/bin/python jobs/bench/gpu_throughput.py                 # on a GPU machine (minutes)
    .venv/bin/python jobs/bench/gpu_throughput.py --cpu-smoke     # anywhere (under a minute)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling  # noqa: E402  (jobs/bench/scaling.py: fixed-length synthetic overrides)
import sweep_occupancy  # noqa: E402  (jobs/bench/sweep_occupancy.py: reading a sweep back)

#: what makes a run "THUMOS14-sized" or "ActivityNet-sized", copied from the preset
WIDTH_KEYS = ("data.feature_dim", "data.rgb_dim", "data.max_seqlen", "data.batch_size",
              "model.base", "model.hidden_dim", "ksm.prompt", "ksm.n_ctx", "ksm.dim",
              "ksm.layers", "ksm.heads", "csr.dim", "csr.reconstructor", "csr.layers",
              "csr.heads", "text.vector_dim", "text.max_key_len", "text.max_complete_len")
#: the datasets' class counts (the presets take theirs from the annotation files)
CLASSES = {"thumos14": 20, "activitynet12": 100}
#: the CPU smoke run's widths (those of tests/conftest.py), T=32
TINY = {"data.feature_dim": 16, "data.rgb_dim": 8, "data.max_seqlen": 32,
        "data.batch_size": 4, "data.n_similar": 1, "model.hidden_dim": 16, "ksm.dim": 16,
        "ksm.n_ctx": 2, "ksm.heads": 2, "csr.dim": 16, "csr.heads": 2, "text.vector_dim": 8,
        "text.max_complete_len": 24}
GPU_METRIC = "gpu/max_allocated_mib"
SMOKE = ("the CPU smoke run (tiny widths, T=32, fp32, N = 1, 2 with gpu: 0 on shares of one "
         "core): its figures only show that the path works")
NO_GPU = (f"no CUDA device here: {SMOKE}. No GPU machine was available to this session: the "
          "GPU figures are NOT measured; run this bench on a GPU machine for them.")


def size_overrides(size: str, device: str, cache: str, test_videos: int) -> list[str]:
    """``--set`` overrides of the synthetic preset for a run of ``size``'s shapes."""
    from mllm4wtal.config import load_config, to_flat

    if size == "tiny":
        widths: dict = dict(TINY)
        classes = 4
    else:
        preset = to_flat(load_config(size))
        widths, classes = {k: preset[k] for k in WIDTH_KEYS}, CLASSES[size]
    rgb, dim = widths["data.rgb_dim"], widths["data.feature_dim"]
    extra = [f"{k}={v}" for k, v in widths.items()] + [
        f"data.synthetic.rgb_dim={rgb}", f"data.synthetic.flow_dim={dim - rgb}",
        f"data.synthetic.num_classes={classes}"]
    out = scaling.step_overrides(widths["data.max_seqlen"],
                                 {"device": device, "cache": cache, "overrides": extra})
    # enough videos that every class and the similar-pair sampling are served
    return [*out, f"data.synthetic.train_videos={max(40, 2 * classes)}",
            f"data.synthetic.test_videos={test_videos}"]


# --- (a) one trial alone, in a worker process -------------------------------------------

def run_single(job: dict) -> dict:
    import torch
    from mllm4wtal.config import load_config
    from mllm4wtal.train.loop import make_batch

    overrides = [*size_overrides(job["size"], job["device"], job["cache"], 1),
                 f"train.bf16={'true' if job['precision'] == 'bf16' else 'false'}"]
    cfg = load_config("synthetic", overrides)
    data, device, text, dpid, sampler, rng = scaling.step_setup(cfg)
    cuda = device.type == "cuda"

    def iterate(first: int, count: int) -> None:
        for it in range(first, first + count):
            dpid.step(make_batch(cfg, data, sampler, text, rng).to(device), it)
        if cuda:
            torch.cuda.synchronize()

    iterate(0, job["warmup"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    iterate(job["warmup"], job["steps"])
    seconds = time.perf_counter() - t0
    return {"it_s": job["steps"] / seconds, "s_it": seconds / job["steps"],
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan,
            "B": cfg.data.batch_size, "T": cfg.data.max_seqlen, "D": cfg.data.feature_dim}


def spawn(job: dict) -> dict:
    """``run_single`` in a fresh interpreter; its last stdout line is the JSON."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"worker failed ({job}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- (b) N trials packed, through the sweep runner ----------------------------------------

class GpuProcessMemory(threading.Thread):
    """Polls ``nvidia-smi`` for each compute process's memory; ``peak[pid]`` in MiB. Stays
    empty where nvidia-smi is missing or shows no processes (a container's PID namespace)."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period, self.peak = period, {}
        self.tool = shutil.which("nvidia-smi")
        self.done = threading.Event()

    def run(self) -> None:
        while self.tool and not self.done.wait(self.period):
            out = subprocess.run([self.tool, "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, _, mib = line.partition(",")
                if pid.strip().isdigit() and mib.strip().isdigit():
                    key = int(pid)
                    self.peak[key] = max(self.peak.get(key, 0), int(mib))

    def __enter__(self) -> GpuProcessMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def share(total: float, n: int) -> float:
    """A per-trial share of ``total``: whole units while they go round, else a fraction."""
    return float(total // n) if total >= n else round(total / n, 4)


def space_file(path: Path, n: int, overrides: list[str], storage: Path, cpus: float,
               gpu: bool) -> Path:
    """The search-space file of ``n`` packed trials; overrides typed by the config system."""
    import yaml
    from mllm4wtal.config import load_config, to_flat

    flat = to_flat(load_config("synthetic", overrides))
    keys = [o.partition("=")[0] for o in overrides]
    path.write_text(yaml.safe_dump({
        "name": f"packed_{n}",
        "description": f"gpu_throughput.py: {n} identical trials on one device",
        "base": "synthetic",
        "overrides": {k: flat[k] for k in keys},
        "space": {"loss.lambda1": {"type": "float", "low": 1.0, "high": 2.0}},
        "searcher": {"sampler": "random", "seed": 0},
        "scheduler": {"type": "none"},
        "trials": {"num_samples": n, "max_concurrent": n, "max_failures": 0},
        "resources": {"cpu": share(cpus, n), "gpu": round(1 / n, 4) if gpu else 0},
        "storage": {"path": str(storage)},
    }, sort_keys=False))
    return path


def most_at_once(windows: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one moment."""
    events = sorted([(a, 1) for a, _ in windows] + [(b, -1) for _, b in windows])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def run_packed(n: int, overrides: list[str], tmp: Path, cpus: float, gpu: bool) -> dict:
    from mllm4wtal.sweep import runner

    space = runner.load(space_file(tmp / f"packed_{n}.yaml", n, overrides, tmp / "sweeps",
                                   cpus, gpu), [])
    runner.claim(space, [])
    with GpuProcessMemory() as smi:
        result = runner.run_sweep(space, verbose=0)
    failed = [r["trial_id"] for r in result.records if r["status"] != "FINISHED"]
    if failed or len(result.records) < n:
        sys.exit(f"packed N={n}: trials {failed or 'missing'} did not finish; see "
                 f"{result.experiment_dir}")
    sweep = sweep_occupancy.read_sweep(result.experiment_dir)
    rates, windows, allocated, process = [], [], [], []
    for t in sweep.trials:
        later = t.reports[1:]
        rates.append((later[-1].iteration - t.reports[0].iteration)
                     / sum(r.seconds for r in later))
        windows.append((t.reports[0].at, later[-1].at))
        if t.reports[-1].metrics.get(GPU_METRIC) is not None:
            allocated.append(float(t.reports[-1].metrics[GPU_METRIC]))
        if any(p in smi.peak for p in t.pids):
            process.append(max(smi.peak.get(p, 0) for p in t.pids))
    iterations = sum(t.reports[-1].iteration for t in sweep.trials)
    wall = max(t.finish for t in sweep.trials) - min(t.start for t in sweep.trials)
    return {"n": n, "gpu": space.resources.gpu, "cpu": space.resources.cpu,
            "at_once": most_at_once(windows), "per_trial": statistics.mean(rates),
            "aggregate": sum(rates), "end_to_end": iterations / wall,
            "allocated": max(allocated) if allocated else None,
            "process": max(process) if process else None}


# --- the driver -------------------------------------------------------------------------

def mib(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.0f}"


def plan(args: argparse.Namespace, cuda: bool) -> dict:
    """What to measure: the GPU plan from the flags, or the CPU smoke run."""
    if cuda and not args.cpu_smoke:
        return {"gpu": True, "device": "cuda", "sizes": args.sizes, "precisions": ["fp32", "bf16"],
                "ns": args.packed, "packed_size": args.packed_size,
                "iterations": args.packed_iterations, "interval": args.packed_eval_interval,
                "warmup": args.warmup, "steps": args.steps, "test_videos": 8,
                "cpus": float(os.cpu_count() or 1)}
    # one core: the smoke run's figures only show that the path works
    return {"gpu": False, "device": "cpu", "sizes": ["tiny"], "precisions": ["fp32"],
            "ns": [1, 2], "packed_size": "tiny", "iterations": 4, "interval": 2, "warmup": 1,
            "steps": 3, "test_videos": 4, "cpus": 1.0}


def single_table(p: dict, cache: str) -> None:
    print(f"\n(a) one trial alone: training iterations per second ({p['warmup']} warm-up, "
          f"{p['steps']} timed)\n")
    print("| size | B | T | D | precision | it/s | s/it | peak allocated MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in p["sizes"]:
        for precision in p["precisions"]:
            job = {"size": size, "precision": precision, "device": p["device"], "cache": cache,
                   "warmup": p["warmup"], "steps": p["steps"]}
            # a fresh process per GPU measurement: its own peak, no other CUDA context
            r = spawn(job) if p["gpu"] else run_single(job)
            print(f"| {size} | {r['B']} | {r['T']} | {r['D']} | {precision} | "
                  f"{r['it_s']:.2f} | {r['s_it']:.4f} | {mib(r['peak_mib'])} |", flush=True)


def packed_table(p: dict, tmp: Path) -> None:
    import ray
    from mllm4wtal.sweep.runner import ray_started

    overrides = [*size_overrides(p["packed_size"], p["device"], f"{tmp}/cache",
                                 p["test_videos"]),
                 f"train.iterations={p['iterations']}", f"train.eval_interval={p['interval']}"]
    print(f"\n(b) N trials of size {p['packed_size']} packed on one "
          f"{'GPU' if p['gpu'] else 'CPU core (gpu: 0)'} through the sweep runner: "
          f"{p['iterations']} iterations each, reports every {p['interval']}; rates over the "
          "reports after the first\n")
    rows = []
    with ray_started():
        if p["gpu"] and ray.cluster_resources().get("GPU", 0) < 1:
            sys.exit("Ray sees no GPU (CUDA_VISIBLE_DEVICES?): the packed trials would wait "
                     "for one forever")
        for n in p["ns"]:
            rows.append(run_packed(n, overrides, tmp, p["cpus"], p["gpu"]))
    first = rows[0]
    print("| N | gpu/trial | cpu/trial | ran at once | it/s per trial | aggregate it/s | "
          f"x N={first['n']} | end-to-end it/s | GPU MiB/trial allocated | "
          "GPU MiB/trial process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['gpu']:g} | {r['cpu']:g} | {r['at_once']} | "
              f"{r['per_trial']:.2f} | {r['aggregate']:.2f} | "
              f"{r['aggregate'] / first['aggregate']:.2f} | {r['end_to_end']:.2f} | "
              f"{mib(r['allocated'])} | {mib(r['process'])} |")
    if p["gpu"] and all(r["allocated"] is None for r in rows):
        print(f"(GPU MiB allocated: n/a, the trials do not report '{GPU_METRIC}')")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes on one CPU core (automatic without CUDA)")
    ap.add_argument("--sizes", nargs="+", default=["thumos14", "activitynet12"],
                    choices=sorted(CLASSES), help="(a): the presets whose sizes to measure")
    ap.add_argument("--warmup", type=int, default=10, help="(a): untimed iterations first")
    ap.add_argument("--steps", type=int, default=50, help="(a): timed iterations")
    ap.add_argument("--packed", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                    help="(b): trials per GPU")
    ap.add_argument("--packed-size", default="thumos14", choices=sorted(CLASSES),
                    help="(b): the trials' size")
    ap.add_argument("--packed-iterations", type=int, default=300,
                    help="(b): iterations per trial")
    ap.add_argument("--packed-eval-interval", type=int, default=100,
                    help="(b): report (evaluate, checkpoint) every this many iterations; the "
                         "first interval is the warm-up")
    ap.add_argument("--only", choices=["single", "packed"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_single(json.loads(args.worker))))
        return
    if args.packed_eval_interval * 2 > args.packed_iterations:
        ap.error("--packed-iterations must cover at least two --packed-eval-interval")

    import torch

    cuda = torch.cuda.is_available()
    p = plan(args, cuda)
    if p["gpu"]:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(NO_GPU if not cuda else "--cpu-smoke: " + SMOKE)
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gpu_throughput_") as tmp:
        if args.only != "packed":
            single_table(p, f"{tmp}/cache")
        if args.only != "single":
            packed_table(p, Path(tmp))


if __name__ == "__main__":
    main()
