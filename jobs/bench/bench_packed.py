"""Time loading the packed format against the W-TALC object-array .npy, side by side.

A THUMOS-size synthetic dataset (412 videos x ~1000 snippets x 2048, float32 random) is
written in both layouts, then loaded:

* ``npy``      load_wtal: restricted unpickle of the object array + annotations + validation
* ``packed``   load_packed: index.json + memmap views (no feature bytes read)
* ``packed+read``  load_packed, then every feature read once as float32 (what a first
  epoch touches), to compare like with like

Both are measured right after writing (warm page cache), best of ``--repeat``.

    .venv/bin/python jobs/bench/bench_packed.py [--videos 412 --mean-len 1000 --dim 2048]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mllm4wtal.data import Segment, Video, WTALDataset, load_packed, load_wtal, pack, save_wtal


def make_dataset(videos: int, mean_len: int, dim: int, seed: int = 0) -> WTALDataset:
    """Random features, lengths uniform in [mean_len/2, 3*mean_len/2), one segment each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(videos):
        t = int(rng.integers(mean_len // 2, 3 * mean_len // 2))
        duration = t * 16 / 25.0
        out.append(Video(
            name=f"video_{i:05d}",
            subset="validation" if i < videos // 2 else "test",
            features=rng.random((t, dim), dtype=np.float32),
            labels=(i % 20,),
            segments=(Segment(0.25 * duration, 0.5 * duration, i % 20),),
            duration=duration,
            fps=25.0,
        ))
    return WTALDataset("bench", [f"class_{c}" for c in range(20)], out, "validation", "test",
                       dim // 2)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        del result
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=412)
    ap.add_argument("--mean-len", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="bench_packed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        ds = make_dataset(args.videos, args.mean_len, args.dim)
        rows = sum(v.num_snippets for v in ds.videos)
        print(f"dataset: {args.videos} videos, {rows} snippets, width {args.dim} "
              f"({rows * args.dim * 4 / 2**30:.2f} GiB float32), built in "
              f"{time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        save_wtal(ds, work, "bench")
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        pack(ds, work / "packed")
        t_pack = time.perf_counter() - t0
        del ds
        npy_size = (work / "bench-I3D-JOINTFeatures.npy").stat().st_size
        f16_size = (work / "packed" / "features.f16").stat().st_size
        print(f"write: object .npy {npy_size / 2**30:.2f} GiB in {t_save:.1f}s; "
              f"packed {f16_size / 2**30:.2f} GiB in {t_pack:.1f}s")

        def read_all() -> float:
            d = load_packed(work / "packed")
            return sum(float(np.asarray(v.features, dtype=np.float32)[-1, 0]) for v in d.videos)

        t_npy = best_of(lambda: load_wtal(work, "bench"), args.repeat)
        t_packed = best_of(lambda: load_packed(work / "packed"), args.repeat)
        t_read = best_of(read_all, args.repeat)
        print(f"{'format':<14}{'load s':>10}{'vs npy':>10}")
        print(f"{'npy (object)':<14}{t_npy:>10.3f}{1.0:>10.1f}x")
        print(f"{'packed':<14}{t_packed:>10.4f}{t_npy / t_packed:>10.0f}x")
        print(f"{'packed+read':<14}{t_read:>10.3f}{t_npy / t_read:>10.1f}x")
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
