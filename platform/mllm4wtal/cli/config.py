"""``mllm4wtal config``: a resolved config, or every key explained."""

from __future__ import annotations

import argparse

from mllm4wtal.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print a resolved config or explain every key")
    options.add_config(p)
    p.add_argument("--explain", action="store_true", help="list every key, default, range, help")
    p.add_argument("--flat", action="store_true", help="print dotted key=value lines")


def run(args: argparse.Namespace) -> int:
    from mllm4wtal.config import explain, to_flat, to_tree

    if args.explain:
        print(explain())
        return 0
    cfg = options.load_cfg(args)
    if args.flat:
        for k, v in to_flat(cfg).items():
            print(f"{k}={v}")
    else:
        import yaml

        print(yaml.safe_dump(to_tree(cfg), sort_keys=False), end="")
    return 0
