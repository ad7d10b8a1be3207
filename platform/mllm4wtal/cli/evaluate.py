"""``mllm4wtal evaluate``: mAP@tIoU of a checkpoint, or of predictions against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mllm4wtal import files
from mllm4wtal.cli import options
from mllm4wtal.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="mAP@tIoU of a checkpoint, or of predictions vs GT",
                       description="Detection mAP at each tIoU with the ActivityNet protocol "
                                   "(interpolated AP, greedy matching by score). Either "
                                   "--checkpoint (runs the model on the test subset of its "
                                   "dataset) or --gt and --pred (ActivityNet JSON: ground "
                                   "truth with a 'database', predictions with 'results').")
    p.add_argument("--checkpoint", default=None, help="a run's best.pt or last.pt")
    options.add_set(p, "with --checkpoint: override e.g. data.root or inference.* keys")
    p.add_argument("--predictions", default=None,
                   help="with --checkpoint: write the predictions JSON here (must not exist "
                        "unless --force)")
    p.add_argument("--gt", default=None, help="ground-truth JSON (ActivityNet 'database')")
    p.add_argument("--pred", default=None, help="predictions JSON (ActivityNet 'results')")
    p.add_argument("--subset", default=None, help="only ground-truth videos of this subset")
    p.add_argument("--tiou", default="0.1:0.7:0.1",
                   help="start:stop:step (inclusive) or a comma list (default 0.1:0.7:0.1; "
                        "ActivityNet: 0.5:0.95:0.05)")
    p.add_argument("--output", default=None,
                   help="write {'map': {tiou: value}, 'average': x} (must not exist unless "
                        "--force)")
    options.add_force(p, "the --output and --predictions files")


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: the files evaluate will write are free (or --force) and writable,
    distinct, and none of its inputs."""
    outputs = {"--predictions": args.predictions, "--output": args.output}
    inputs = {"--checkpoint": args.checkpoint, "--gt": args.gt, "--pred": args.pred}
    if args.predictions and not args.checkpoint:
        raise UserError("--predictions writes the predictions of --checkpoint; pass "
                        "--checkpoint, or drop --predictions")
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        where = Path(path).resolve()
        for other, given in inputs.items():
            if given and Path(given).resolve() == where:
                raise UserError(f"{flag} {path} is the {other} input; write the result to "
                                "another file")
        if where in seen:
            raise UserError(f"{flag} and {seen[where]} both name {path}; give two files")
        seen[where] = flag
        files.check_target(path, args.force, fix=flag)


def run(args: argparse.Namespace) -> int:
    from mllm4wtal.evaluation import evaluate_files, parse_tiou_range

    check_outputs(args)
    if args.checkpoint:
        from mllm4wtal.inference.evaluate import evaluate_checkpoint

        result, predictions = evaluate_checkpoint(args.checkpoint, args.overrides)
        if args.predictions:
            files.write_text(args.predictions, json.dumps(predictions), force=args.force,
                             fix="--predictions")
            print(f"wrote {args.predictions}")
    elif args.gt and args.pred:
        result = evaluate_files(args.gt, args.pred, parse_tiou_range(args.tiou),
                                subset=args.subset)
    else:
        raise UserError("evaluate needs --checkpoint, or both --gt and --pred")
    print(result.table())
    for note in result.notes():
        print(f"note: {note}")
    if args.output:
        files.write_text(args.output, json.dumps(result.to_json_dict(), indent=2),
                         force=args.force, fix="--output")
        print(f"wrote {args.output}")
    return 0
