"""``mllm4wtal train``: one training run (progress bar, checkpoints)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mllm4wtal.cli import options

WHERE = "--run-dir, or --set train.out_dir=..."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train MLLM4WTAL once (progress bar, checkpoints)",
                       description="Train one model: every train.eval_interval iterations it "
                                   "evaluates mAP on the select videos (data.select: a "
                                   "hold-out of the training videos by default) and writes "
                                   "last.pt, best.pt (best train.best_metric, default the "
                                   "average mAP), predictions.json and metrics.jsonl into the "
                                   "run directory; at the end best.pt is evaluated once on "
                                   "the test subset (test_metrics.json).")
    options.add_config(p)
    p.add_argument("--run-dir", default=None,
                   help="output directory (default: <train.out_dir>/<config>-<timestamp>); "
                        "one that holds a run is refused")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the run a last.pt belongs to, in its own folder (same "
                        "config; iterations may grow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from mllm4wtal import files
    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.data.splits import describe
    from mllm4wtal.inference.evaluate import (
        TEST_PREFIX,
        ModelEvaluator,
        evaluate_on_test,
        primary_metric,
    )
    from mllm4wtal.train.checkpoint import TEST_FILE
    from mllm4wtal.train.loop import refuse_taken, train

    cfg = options.load_cfg(args)
    if args.resume:  # the loop refuses a --run-dir that is not the checkpoint's own run
        run_dir = Path(args.run_dir or Path(args.resume).parent)
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        stem = Path(args.config).stem
        run_dir = Path(cfg.train.out_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    files.check_writable(run_dir, fix=WHERE)  # at the door, before the data is read
    if not args.resume:
        refuse_taken(run_dir)
    dataset = load_from_config(cfg.data)
    print(f"run directory: {run_dir}")
    evaluate = ModelEvaluator(cfg, dataset)
    result = train(cfg, dataset, run_dir, evaluate=evaluate, resume=args.resume,
                   progress=not args.no_progress)
    best = run_dir / "best.pt"
    if result.best_iteration < 0:
        print(f"no evaluation improved on the start; no {best}")
        return 0
    tested = evaluate_on_test(best, dataset)
    files.write_text(run_dir / TEST_FILE, json.dumps({
        "checkpoint": str(best), "iteration": result.best_iteration,
        "chosen_by": f"{evaluate.metric} ({evaluate.mode}) on {describe(evaluate.dataset)}",
        "metrics": tested}, indent=1), force=True, fix=WHERE)
    shown = primary_metric(cfg)
    print(f"chosen on select ({describe(evaluate.dataset)}): {evaluate.metric} = "
          f"{result.best_metric:.4f} at iteration {result.best_iteration}; {best}")
    print(f"test ({len(dataset.test)} videos of '{dataset.test_subset}', once): {shown} = "
          f"{tested[TEST_PREFIX + shown] * 100:.2f}%  ({run_dir / TEST_FILE})")
    print(f"evaluate it: mllm4wtal evaluate --checkpoint {best}")
    return 0
