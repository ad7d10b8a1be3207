"""Time the vectorised detection mAP against the per-prediction loop reference, side by side.

Two synthetic inputs (random, seeded), both evaluated by ``evaluate_detection`` (input
checks included) and by ``reference_ap`` of ``tests/test_evaluation.py`` (a plain loop
written after the official ActivityNet evaluator), and checked to agree to 1e-9:

* ``anet``    ActivityNet size: 5000 videos, 100 classes, ~1.5 ground truth per video,
  ``--preds-per-video`` predictions per video (default 20: 100k) over the video's class and
  a random other one, thresholds 0.5:0.95:0.05
* ``thumos``  THUMOS14 size: 213 videos, 20 classes, ~15 ground truth per video, 250
  predictions per video (~53k), thresholds 0.1:0.7:0.1

    .venv/bin/python jobs/bench/bench_evaluation.py [--only anet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from mllm4wtal.evaluation import ACTIVITYNET_TIOUS, THUMOS14_TIOUS, evaluate_detection

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_evaluation import reference_ap  # noqa: E402


def make_input(videos: int, classes: int, gt_per_video: float, preds_per_video: int,
               classes_per_video: int, seed: int = 0) -> tuple[dict, dict]:
    """Ground truth near a video's own classes; predictions jittered around it (hits at
    varied tIoU) or random (misses), labelled with a video class or a random one."""
    rng = np.random.default_rng(seed)
    names = [f"class_{i:03d}" for i in range(classes)]
    db: dict = {}
    results: dict = {}
    for v in range(videos):
        vid = f"v_{v:05d}"
        duration = float(rng.uniform(30, 240))
        own = rng.choice(classes, size=classes_per_video, replace=False)
        anns = []
        for _ in range(max(1, rng.poisson(gt_per_video))):
            s = rng.uniform(0, duration * 0.9)
            e = min(duration, s + rng.uniform(2, duration * 0.3))
            anns.append({"segment": [round(s, 2), round(e, 2)], "label": names[rng.choice(own)]})
        db[vid] = {"subset": "validation", "duration": duration, "annotations": anns}
        preds = []
        for _ in range(preds_per_video):
            if rng.random() < 0.5:
                a = anns[rng.integers(len(anns))]
                s, e = a["segment"]
                jit = (e - s) * 0.3
                s, e = s + rng.normal(0, jit), e + rng.normal(0, jit)
                s, e = min(s, e), max(s, e)
            else:
                s = rng.uniform(0, duration)
                e = s + rng.uniform(0.5, duration * 0.3)
            lab = names[rng.choice(own)] if rng.random() < 0.8 else names[rng.integers(classes)]
            preds.append({"label": lab, "segment": [float(s), float(e)],
                          "score": float(rng.random())})
        results[vid] = preds
    return {"database": db}, {"results": results}


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["anet", "thumos"])
    ap.add_argument("--preds-per-video", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised run")
    args = ap.parse_args()
    cases = {
        "anet": (dict(videos=5000, classes=100, gt_per_video=1.5,
                      preds_per_video=args.preds_per_video, classes_per_video=1),
                 ACTIVITYNET_TIOUS),
        "thumos": (dict(videos=213, classes=20, gt_per_video=15, preds_per_video=250,
                        classes_per_video=2), THUMOS14_TIOUS),
    }
    print(f"{'case':8} {'preds':>7} {'gt':>6} {'vectorised s':>13} {'loop s':>8} "
          f"{'ratio':>7}  {'max |diff|':>10}  avg mAP")
    for name, (kw, tious) in cases.items():
        if args.only and name != args.only:
            continue
        gt, pred = make_input(**kw)
        n_pred = sum(len(p) for p in pred["results"].values())
        n_gt = sum(len(v["annotations"]) for v in gt["database"].values())
        t_vec, res = best_of(lambda gt=gt, pred=pred, tious=tious:
                             evaluate_detection(gt, pred, tious), args.repeat)
        t_ref, ref = best_of(lambda gt=gt, pred=pred, tious=tious:
                             reference_ap(gt, pred, np.asarray(tious)), 1)
        diff = float(np.abs(res.ap - ref).max())
        print(f"{name:8} {n_pred:7d} {n_gt:6d} {t_vec:13.3f} {t_ref:8.2f} "
              f"{t_ref / t_vec:6.0f}x  {diff:10.1e}  {res.average:.4f}")


if __name__ == "__main__":
    main()
