"""``mllm4wtal train``: one training run (progress bar, checkpoints)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mllm4wtal.cli import options

WHERE = "--run-dir, or --set train.out_dir=..."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train MLLM4WTAL once (progress bar, checkpoints)",
                       description="Train one model: every train.eval_interval iterations it "
                                   "evaluates mAP on the test subset and writes last.pt, "
                                   "best.pt (best average mAP), predictions.json and "
                                   "metrics.jsonl into the run directory.")
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
    from mllm4wtal.inference.evaluate import ModelEvaluator, primary_metric
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
    result = train(cfg, dataset, run_dir, evaluate=ModelEvaluator(cfg, dataset),
                   resume=args.resume, progress=not args.no_progress)
    print(f"best {primary_metric(cfg)} = {result.best_metric * 100:.2f}% at iteration "
          f"{result.best_iteration}; checkpoint {run_dir / 'best.pt'}")
    print(f"evaluate it: mllm4wtal evaluate --checkpoint {run_dir / 'best.pt'}")
    return 0
