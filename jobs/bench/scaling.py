"""How the training step and the evaluation pass grow: wall time and peak memory, one table.

* ``step``  one DPID iteration (``DPID(model, cfg).step(batch, it)``) of the full model at
  the synthetic preset's widths, on batches of ``data.batch_size`` sequences of length T
  (``--lengths``, default 320 750 2000): the median of ``--steps`` timed steps after
  ``--warmup`` untimed ones;
* ``pass``  one evaluation pass (``inference.evaluate.evaluate_model``: model, proposals,
  mAP) over N synthetic test videos (``--videos``, default 200 1000 5000) of the preset's
  lengths (``--pass-max-len`` to change), with a model trained ``--train-steps`` iterations
  first (an untrained one proposes next to nothing).

Every measurement runs in a fresh subprocess; peak memory is the process's peak resident
set while measuring (``VmHWM`` after resetting it through /proc/self/clear_refs; where
that reset is refused, the peak includes building the data and model, and is marked ``*``),
and on CUDA also ``torch.cuda.max_memory_allocated``.

``--compare-reference`` times, per N, today's evaluation pass against the pass before issue
15 (``tests/proposals_reference.py``: batches of 16 in dataset order, the whole video branch,
the proposal loop) in one process, alternating ``--repeat`` times (best of each), wall and
CPU time (CPU time varies less on a shared
machine), checks that both give the same predictions and mAP, and times the proposals alone
on the same model outputs.

    .venv/bin/python jobs/bench/scaling.py                      # the full table (minutes)
    .venv/bin/python jobs/bench/scaling.py --compare-reference --videos 200 1000 5000
    .venv/bin/python jobs/bench/scaling.py --lengths 32 --videos 8 --steps 1 --warmup 0 \\
        --train-steps 1                                          # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[2] / "tests"


# --- measuring, inside a worker process ------------------------------------------------

def reset_peak() -> bool:
    """Reset the peak resident set of this process (Linux); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would also carry the parent's
    peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Measure:
    """Wall time, and peak memory from the moment it starts (host RSS, CUDA allocations)."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def __enter__(self) -> Measure:
        self.rss_before = rss_mib()
        self.reset = reset_peak()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak = peak_mib()
        self.cuda_peak = (self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda
                          else float("nan"))

    def report(self, **more) -> dict:
        return {"seconds": self.seconds, "peak_mib": self.peak, "rss_before_mib":
                self.rss_before, "peak_reset": self.reset, "cuda_peak_mib": self.cuda_peak,
                **more}


def step_overrides(length: int, job: dict) -> list[str]:
    out = [f"data.max_seqlen={length}", f"data.synthetic.min_len={length}",
           f"data.synthetic.max_len={length}", "data.synthetic.train_videos=40",
           "data.synthetic.test_videos=1", f"train.device={job['device']}",
           f"text.cache_dir={job['cache']}"]
    if length < 64:  # room for one instance with its context in a short smoke sequence
        out += ["data.synthetic.min_instance_len=3", "data.synthetic.max_instance_len=6",
                "data.synthetic.context_len=2"]
    return out + job["overrides"]


def step_setup(cfg: Any) -> tuple:
    """What a DPID step needs, seeded with 0 as the training loop seeds it: ``(dataset,
    device, text bundle, DPID, batch sampler, numpy rng)``."""
    import numpy as np
    from mllm4wtal.data.batching import TrainBatchSampler
    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.text.bundle import build_text_bundle
    from mllm4wtal.train.dpid import DPID
    from mllm4wtal.train.loop import build_model, resolve_device, seed_everything

    data = load_from_config(cfg.data)
    seed_everything(0)
    device = resolve_device(cfg.train.device)
    text = build_text_bundle(cfg, data)
    dpid = DPID(build_model(cfg, data, text).to(device), cfg)
    sampler = TrainBatchSampler.from_dataset(
        data, batch_size=cfg.data.batch_size, max_seqlen=cfg.data.max_seqlen,
        n_similar=cfg.data.n_similar, seed=0)
    return data, device, text, dpid, sampler, np.random.default_rng(0)


def run_step(job: dict) -> dict:
    from mllm4wtal.config import load_config
    from mllm4wtal.train.loop import make_batch

    cfg = load_config("synthetic", step_overrides(job["length"], job))
    data, device, text, dpid, sampler, rng = step_setup(cfg)
    batches = [make_batch(cfg, data, sampler, text, rng).to(device)
               for _ in range(job["warmup"] + job["steps"])]
    times = []
    with Measure(device) as m:
        for it, batch in enumerate(batches):
            t0 = time.perf_counter()
            dpid.step(batch, it)
            if device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    timed = times[job["warmup"]:]
    return m.report(seconds=statistics.median(timed), batch=cfg.data.batch_size)


def run_train(job: dict) -> dict:
    """Train the model the passes evaluate; its last.pt goes to ``job['run_dir']``."""
    from mllm4wtal.config import load_config
    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.train.loop import train

    cfg = load_config("synthetic", [f"train.iterations={job['train_steps']}",
                                    f"train.eval_interval={job['train_steps']}",
                                    f"train.device={job['device']}",
                                    f"text.cache_dir={job['cache']}", *job["overrides"]])
    t0 = time.perf_counter()
    train(cfg, load_from_config(cfg.data), job["run_dir"], evaluate=None, progress=False)
    return {"seconds": time.perf_counter() - t0}


def load_pass(job: dict):
    from mllm4wtal.inference.evaluate import load_checkpoint_model

    overrides = [f"data.synthetic.test_videos={job['videos']}", f"train.device={job['device']}"]
    if job["pass_max_len"]:
        overrides.append(f"data.synthetic.max_len={job['pass_max_len']}")
    return load_checkpoint_model(str(Path(job["run_dir"]) / "last.pt"), overrides)


def run_pass(job: dict) -> dict:
    from mllm4wtal.inference.evaluate import evaluate_model, primary_metric

    model, cfg, data, device = load_pass(job)
    with Measure(device) as m:
        result, predictions = evaluate_model(model, data, cfg, device)
    return m.report(mAP=result.flat_metrics()[primary_metric(cfg)],
                    proposals=sum(map(len, predictions["results"].values())),
                    snippets=sum(v.num_snippets for v in data.test))


def run_compare(job: dict) -> dict:
    """The evaluation pass and the proposals alone, today's code against the reference."""
    import torch
    from mllm4wtal.data.batching import pad_batch
    from mllm4wtal.inference import evaluate as evaluate_module
    from mllm4wtal.inference.proposals import SnippetScores, generate_proposals_many

    sys.path.insert(0, str(TESTS))
    import proposals_reference as reference

    model, cfg, data, device = load_pass(job)
    # the model outputs, for the proposals alone (and a warm-up of the model)
    pcfg, fps = evaluate_module.proposal_config(cfg), data.frames_per_snippet
    inputs = []
    with torch.no_grad():
        for b in range(0, len(data.test), 16):
            chunk = data.test[b:b + 16]
            features, mask = pad_batch([v.features for v in chunk])
            scored = evaluate_module.snippet_scores(model, features.to(device), mask.to(device),
                                                    cfg.inference.source,
                                                    cfg.inference.topk_divisor)
            inputs += [SnippetScores(cas, act, v.fps, v.duration, scores)
                       for v, (cas, act, scores) in zip(chunk, scored, strict=True)]
    timed: dict[str, list[tuple[float, float]]] = {"new": [], "ref": []}
    for _ in range(job["repeat"]):  # alternating, best of each: the machine's load shifts
        t0, c0 = time.perf_counter(), time.process_time()
        new_result, new_predictions = evaluate_module.evaluate_model(model, data, cfg, device)
        timed["new"].append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        ref_result, ref_predictions = reference.evaluate_model(model, data, cfg, device)
        timed["ref"].append((time.perf_counter() - t0, time.process_time() - c0))
    (t_new, c_new), (t_ref, c_ref) = min(timed["new"]), min(timed["ref"])
    t0 = time.perf_counter()
    new = list(generate_proposals_many(inputs, pcfg, fps))
    p_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = list(reference.generate_proposals_many(inputs, pcfg, fps))
    p_ref = time.perf_counter() - t0
    return {"pass_new": t_new, "pass_ref": t_ref, "cpu_new": c_new, "cpu_ref": c_ref,
            "proposals_new": p_new, "proposals_ref": p_ref,
            "same_predictions": new_predictions == ref_predictions,
            "same_map": new_result.flat_metrics() == ref_result.flat_metrics(),
            "same_proposals": new == ref, "proposals": sum(map(len, new)),
            "mAP": new_result.flat_metrics()[evaluate_module.primary_metric(cfg)]}


WORKERS = {"step": run_step, "train": run_train, "pass": run_pass, "compare": run_compare}


def worker(job: dict) -> None:
    if job["threads"]:
        import torch

        torch.set_num_threads(job["threads"])
    print(json.dumps(WORKERS[job["kind"]](job)))


# --- the driver -----------------------------------------------------------------------

def spawn(job: dict, tree: str | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON.
    ``tree``: a checkout whose ``platform/`` package is measured instead of this one."""
    env = {**os.environ, "PYTHONPATH": str(Path(tree) / "platform")} if tree else None
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{job['kind']} worker failed ({job}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(r: dict) -> str:
    cuda = "" if r["cuda_peak_mib"] != r["cuda_peak_mib"] else f" (cuda {r['cuda_peak_mib']:.0f})"
    return f"{r['peak_mib']:.0f}{'' if r['peak_reset'] else '*'}{cuda}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[320, 750, 2000],
                    help="sequence lengths T of the step (>= 16)")
    ap.add_argument("--videos", type=int, nargs="+", default=[200, 1000, 5000],
                    help="test videos N of the evaluation pass")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per T (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--train-steps", type=int, default=300,
                    help="iterations of the model the passes evaluate")
    ap.add_argument("--pass-max-len", type=int, default=0,
                    help="longest test video of the pass (0: the preset's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", choices=["step", "pass"])
    ap.add_argument("--compare-reference", action="store_true",
                    help="per N: the pass with today's proposals vs the reference loop")
    ap.add_argument("--repeat", type=int, default=2,
                    help="--compare-reference: passes of each, alternating (best of each)")
    ap.add_argument("--reference-tree", default=None, metavar="DIR",
                    help="steps: also measure the checkout DIR (e.g. a clone at the commit "
                         "before a change), alternating with this one, and print the ratios")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra config override for every run (key=value)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
        common = {"device": args.device, "threads": args.threads, "cache": f"{tmp}/cache",
                  "overrides": args.overrides}
        print(f"| {'measure':8} | {'size':>12} | {'wall s':>8} | {'peak MiB':>12} | "
              f"{'RSS before':>10} | notes")
        print(f"|{'-' * 10}|{'-' * 14}|{'-' * 10}|{'-' * 14}|{'-' * 12}|------")
        if args.only != "pass" and not args.compare_reference:
            for length in args.lengths:
                job = {**common, "kind": "step", "length": length, "steps": args.steps,
                       "warmup": args.warmup}
                r = spawn(job)
                note = f"batch {r['batch']}"
                if args.reference_tree:
                    ref = spawn(job, args.reference_tree)
                    note += (f"; {args.reference_tree}: {ref['seconds']:.3f} s, "
                             f"{mib(ref)} MiB -> {ref['seconds'] / r['seconds']:.2f}x faster, "
                             f"{ref['peak_mib'] / r['peak_mib']:.2f}x less memory")
                print(f"| {'step':8} | {f'T={length}':>12} | {r['seconds']:8.3f} | "
                      f"{mib(r):>12} | {r['rss_before_mib']:10.0f} | {note}", flush=True)
        if args.only == "step":
            return
        run_dir = f"{tmp}/run"
        trained = spawn({**common, "kind": "train", "train_steps": args.train_steps,
                         "run_dir": run_dir})
        print(f"(model for the passes: {args.train_steps} iterations, "
              f"{trained['seconds']:.0f} s)", flush=True)
        for n in args.videos:
            job = {**common, "kind": "compare" if args.compare_reference else "pass",
                   "videos": n, "run_dir": run_dir, "pass_max_len": args.pass_max_len,
                   "repeat": args.repeat}
            r = spawn(job)
            if args.compare_reference:
                same = r["same_predictions"] and r["same_map"] and r["same_proposals"]
                print(f"| {'pass':8} | {f'{n} videos':>12} | {r['pass_new']:8.2f} | "
                      f"{'-':>12} | {'-':>10} | reference loop {r['pass_ref']:.2f} s: "
                      f"{r['pass_ref'] / r['pass_new']:.1f}x (CPU time {r['cpu_new']:.2f} s vs "
                      f"{r['cpu_ref']:.2f} s: {r['cpu_ref'] / r['cpu_new']:.1f}x); proposals alone "
                      f"{r['proposals_new']:.2f} s vs {r['proposals_ref']:.2f} s: "
                      f"{r['proposals_ref'] / r['proposals_new']:.1f}x; "
                      f"{'identical' if same else 'DIFFERENT'} proposals and mAP "
                      f"({r['proposals']} proposals, avg mAP {r['mAP']:.4f})", flush=True)
            else:
                print(f"| {'pass':8} | {f'{n} videos':>12} | {r['seconds']:8.2f} | "
                      f"{mib(r):>12} | {r['rss_before_mib']:10.0f} | {r['snippets']} snippets, "
                      f"{r['proposals']} proposals, avg mAP {r['mAP']:.4f}", flush=True)


if __name__ == "__main__":
    main()
