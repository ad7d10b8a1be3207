"""``mllm4wtal sweep``: a search-space file run with Ray Tune + Optuna + ASHA + MLflow."""

from __future__ import annotations

import argparse

from mllm4wtal.cli import options
from mllm4wtal.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyperparameter search: Ray Tune + Optuna + ASHA + MLflow",
                       description="Run the search a search-space YAML describes (schema: "
                                   "search_spaces/*.yaml, mllm4wtal.sweep.spaces): each trial "
                                   "is one training run as Ray Tune trial, Optuna proposes "
                                   "configs, ASHA stops poor trials at its rungs, MLflow gets "
                                   "one parent run per sweep and one child run per trial. "
                                   "The file is validated completely before Ray starts. Joins "
                                   "the cluster of --address or RAY_ADDRESS (set by `ray job "
                                   "submit`), else starts a private Ray in-process.")
    p.add_argument("space", nargs="?", default=None, metavar="SPACE.yaml",
                   help="search-space file, e.g. search_spaces/quickstart.yaml")
    options.add_set(p, "override of the base training config, repeatable")
    p.add_argument("--space-set", dest="edits", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="change the search-space file's own sections, repeatable, e.g. "
                        "--space-set trials.num_samples=4 --space-set scheduler.max_t=200")
    options.add_location(p)
    options.add_address(p)
    p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR",
                   help="continue an interrupted sweep (finished trials are not rerun, "
                        "errored ones resume from their checkpoints)")


def run(args: argparse.Namespace) -> int:
    options.use_address(args)  # first: a dead cluster address fails in seconds
    from mllm4wtal.sweep import preflight, runner
    from mllm4wtal.sweep.mlflow_queue import pending_line

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
    print(runner.plan(space))
    # --check and the start refuse the same things, all at once, before anything is written
    checked = preflight.check(space, resume=bool(args.resume))
    checked.refuse()
    if args.check:
        print(checked.report())
        return 0
    if not args.resume:
        runner.claim(space, args.overrides, args.edits)
    result = runner.run_sweep(space, resume=bool(args.resume))
    pending = pending_line(result.experiment_dir, result.tracking_uri)
    if pending is not None:  # the MLflow server is down: its writes wait for --resume
        print(pending)
        return 130 if result.interrupted else 0
    if not result.interrupted:
        from mllm4wtal.report.summary import write_sweep_summary

        write_sweep_summary(space, result)
    print(runner.conclusion(space, result))
    return 130 if result.interrupted else 0
