"""The ``mllm4wtal`` command line: one module per command (``add_parser`` + ``run``), the
options several share in ``options``. Heavy imports happen inside each ``run``, so ``--help``
answers at once. User errors (bad config, missing files, malformed inputs) print one line
naming the file/key and the fix, and exit with status 2."""

from __future__ import annotations

import argparse
import sys

from mllm4wtal.cli import ablate, config, data, describe, evaluate, report, sweep, train
from mllm4wtal.errors import DivergenceError, UserError

EPILOG = """examples:
  mllm4wtal train --config synthetic                        # a run on the built-in benchmark
  mllm4wtal train --config thumos14 --set data.root=/data/thumos --set loss.lambda1=2.0
  mllm4wtal evaluate --gt gt.json --pred predictions.json --tiou 0.1:0.7:0.1
  mllm4wtal sweep search_spaces/quickstart.yaml             # Ray Tune + Optuna + ASHA + MLflow
  mllm4wtal sweep --resume sweeps/quickstart                # continue an interrupted sweep
  mllm4wtal ablate search_spaces/ablations/components.yaml  # variants x seeds -> table
  mllm4wtal report --experiment components                  # tables + plots from MLflow
  mllm4wtal data info --config thumos14 --set data.root=/data/thumos
  mllm4wtal data pack --config thumos14 --set data.root=/data/thumos --out /data/thumos-packed
  mllm4wtal config --explain                                # every key, default and range
"""

#: command name -> its module, in the order ``--help`` lists them
COMMANDS = {"train": train, "evaluate": evaluate, "sweep": sweep, "ablate": ablate,
            "report": report, "data": data, "config": config, "describe": describe}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mllm4wtal",
        description="Train, evaluate, sweep and ablate MLLM4WTAL (MLLM-guided weakly-supervised "
                    "temporal action localization).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, DivergenceError) as e:  # the message names the file/key and the fix
        print(f"mllm4wtal {args.command}: error: {e}", file=sys.stderr)
        return 2
