"""The ``mllm4wtal`` command line. Heavy imports happen inside each command, so ``--help``
answers at once. User errors (bad config, missing files, malformed inputs) print one line
naming the file/key and the fix, and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mllm4wtal.errors import DivergenceError, UserError

EPILOG = """examples:
  mllm4wtal train --config synthetic                        # a run on the built-in benchmark
  mllm4wtal train --config thumos14 --set data.root=/data/thumos --set loss.lambda1=2.0
  mllm4wtal evaluate --gt gt.json --pred predictions.json --tiou 0.1:0.7:0.1
  mllm4wtal sweep search_spaces/quickstart.yaml             # Ray Tune + Optuna + ASHA + MLflow
  mllm4wtal sweep --resume sweeps/quickstart                # continue an interrupted sweep
  mllm4wtal data info --config thumos14 --set data.root=/data/thumos
  mllm4wtal data pack --config thumos14 --set data.root=/data/thumos --out /data/thumos-packed
  mllm4wtal config --explain                                # every key, default and range
"""


def _add_config_args(p: argparse.ArgumentParser, default: str | None = "synthetic") -> None:
    p.add_argument("--config", default=default, metavar="PRESET|YAML",
                   help="a preset (synthetic, thumos14, activitynet12) or a YAML file "
                        f"(default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set loss.lambda1=2.0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm4wtal",
        description="Train, evaluate, sweep and ablate MLLM4WTAL (MLLM-guided weakly-supervised "
                    "temporal action localization).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train MLLM4WTAL once (progress bar, checkpoints)",
                       description="Train one model: every train.eval_interval iterations it "
                                   "evaluates mAP on the test subset and writes last.pt, "
                                   "best.pt (best average mAP), predictions.json and "
                                   "metrics.jsonl into the run directory.")
    _add_config_args(p)
    p.add_argument("--run-dir", default=None,
                   help="output directory (default: <train.out_dir>/<config>-<timestamp>)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a run's last.pt (same config; iterations may grow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="mAP@tIoU of a checkpoint, or of predictions vs GT",
                       description="Detection mAP at each tIoU with the ActivityNet protocol "
                                   "(interpolated AP, greedy matching by score). Either "
                                   "--checkpoint (runs the model on the test subset of its "
                                   "dataset) or --gt and --pred (ActivityNet JSON: ground "
                                   "truth with a 'database', predictions with 'results').")
    p.add_argument("--checkpoint", default=None, help="a run's best.pt or last.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --checkpoint: override e.g. data.root or inference.* keys")
    p.add_argument("--predictions", default=None,
                   help="with --checkpoint: write the predictions JSON here")
    p.add_argument("--gt", default=None, help="ground-truth JSON (ActivityNet 'database')")
    p.add_argument("--pred", default=None, help="predictions JSON (ActivityNet 'results')")
    p.add_argument("--subset", default=None, help="only ground-truth videos of this subset")
    p.add_argument("--tiou", default="0.1:0.7:0.1",
                   help="start:stop:step (inclusive) or a comma list (default 0.1:0.7:0.1; "
                        "ActivityNet: 0.5:0.95:0.05)")
    p.add_argument("--output", default=None, help="write {'map': {tiou: value}, 'average': x}")

    p = sub.add_parser("sweep", help="hyperparameter search: Ray Tune + Optuna + ASHA + MLflow",
                       description="Run the search a search-space YAML describes (schema: "
                                   "search_spaces/*.yaml, mllm4wtal.sweep.spaces): each trial "
                                   "is one training run as Ray Tune trial, Optuna proposes "
                                   "configs, ASHA stops poor trials at its rungs, MLflow gets "
                                   "one parent run per sweep and one child run per trial. "
                                   "The file is validated completely before Ray starts. Joins "
                                   "the cluster in RAY_ADDRESS (e.g. under `ray job submit`), "
                                   "else starts Ray in-process.")
    p.add_argument("space", nargs="?", default=None, metavar="SPACE.yaml",
                   help="search-space file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the base training config, repeatable")
    p.add_argument("--space-set", dest="edits", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="change the search-space file's own sections, repeatable, e.g. "
                        "--space-set trials.num_samples=4 --space-set scheduler.max_t=200")
    p.add_argument("--storage", default=None, metavar="DIR|URI",
                   help="where the experiment directory goes (overrides storage.path; must "
                        "be absolute or remote under `ray job submit`)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (overrides mlflow.tracking_uri; default: a "
                        "sqlite file in the experiment directory)")
    p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR",
                   help="continue an interrupted sweep (finished trials are not rerun, "
                        "errored ones resume from their checkpoints)")
    p.add_argument("--check", action="store_true",
                   help="validate the file and print the plan; start nothing")

    p = sub.add_parser("data", help="inspect, pack or export datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("info", help="videos per split, classes, instances, snippet lengths")
    _add_config_args(q)
    q = dsub.add_parser("pack", help="write the packed float16 memory-mapped format",
                        description="Pack a dataset into one float16 memory-mapped matrix plus "
                                    "a JSON index; loads in well under a second, no pickle.")
    _add_config_args(q)
    q.add_argument("--out", required=True, help="output directory (must not exist)")
    q = dsub.add_parser("export", help="write a dataset (e.g. the synthetic one) in the WTAL "
                                       "layout <root>/<name>-I3D-JOINTFeatures.npy + annotations")
    _add_config_args(q)
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--name", default="Synthetic", help="file stem (default Synthetic)")

    p = sub.add_parser("config", help="print a resolved config or explain every key")
    _add_config_args(p)
    p.add_argument("--explain", action="store_true", help="list every key, default, range, help")
    p.add_argument("--flat", action="store_true", help="print dotted key=value lines")
    return parser


def _load_cfg(args: argparse.Namespace):
    from mllm4wtal.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.train.loop import train

    cfg = _load_cfg(args)
    if args.resume:
        run_dir = Path(args.resume).parent
    elif args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        stem = Path(args.config).stem
        run_dir = Path(cfg.train.out_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    dataset = load_from_config(cfg.data)
    print(f"run directory: {run_dir}")
    result = train(cfg, dataset, run_dir, resume=args.resume, progress=not args.no_progress)
    print(f"best {primary(cfg)} = {result.best_metric * 100:.2f}% at iteration "
          f"{result.best_iteration}; checkpoint {run_dir / 'best.pt'}")
    print(f"evaluate it: mllm4wtal evaluate --checkpoint {run_dir / 'best.pt'}")
    return 0


def primary(cfg) -> str:
    from mllm4wtal.train.evaluate import primary_metric

    return primary_metric(cfg)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mllm4wtal.evaluation import evaluate_files, parse_tiou_range

    if args.checkpoint:
        from mllm4wtal.train.evaluate import evaluate_checkpoint

        result, predictions = evaluate_checkpoint(args.checkpoint, args.overrides)
        if args.predictions:
            Path(args.predictions).write_text(json.dumps(predictions))
            print(f"wrote {args.predictions}")
    elif args.gt and args.pred:
        result = evaluate_files(args.gt, args.pred, parse_tiou_range(args.tiou),
                                subset=args.subset)
    else:
        raise UserError("evaluate needs --checkpoint, or both --gt and --pred")
    print(result.table())
    if result.n_ignored_predictions:
        print(f"note: {result.n_ignored_predictions} predictions had labels absent from the "
              "ground truth and were ignored")
    if args.output:
        Path(args.output).write_text(json.dumps(result.to_json_dict(), indent=2))
        print(f"wrote {args.output}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mllm4wtal.sweep import runner

    if args.resume:
        if args.space or args.overrides or args.edits or args.storage or args.tracking_uri:
            raise UserError("--resume takes the experiment directory alone: the sweep goes on "
                            "with the file, --set and locations it was started with")
        space = runner.reload(args.resume)
    elif args.space:
        space = runner.load(args.space, args.overrides, args.storage, args.tracking_uri,
                            args.edits)
    else:
        raise UserError("sweep needs a search-space file (e.g. search_spaces/quickstart.yaml) "
                        "or --resume EXPERIMENT_DIR")
    print(runner.describe(space))
    if args.check:
        return 0
    if not args.resume:
        runner.claim(space, args.overrides, args.edits)
    result = runner.run_sweep(space, resume=bool(args.resume))
    print(runner.conclusion(space, result))
    return 130 if result.interrupted else 0


def cmd_data(args: argparse.Namespace) -> int:
    from mllm4wtal.data import dataset_info, pack, save_wtal
    from mllm4wtal.data.load import load_from_config

    cfg = _load_cfg(args)
    ds = load_from_config(cfg.data)
    if args.data_command == "info":
        print(dataset_info(ds))
    elif args.data_command == "pack":
        pack(ds, args.out)
        print(f"packed {len(ds.videos)} videos into {args.out}")
    elif args.data_command == "export":
        save_wtal(ds, args.out, args.name)
        print(f"wrote {args.out}/{args.name}-I3D-JOINTFeatures.npy and "
              f"{args.out}/{args.name}-Annotations/")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from mllm4wtal.config import explain, to_flat, to_tree

    if args.explain:
        print(explain())
        return 0
    cfg = _load_cfg(args)
    if args.flat:
        for k, v in to_flat(cfg).items():
            print(f"{k}={v}")
    else:
        import yaml

        print(yaml.safe_dump(to_tree(cfg), sort_keys=False), end="")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "data": cmd_data,
            "config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, DivergenceError) as e:  # the message names the file/key and the fix
        print(f"mllm4wtal {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
