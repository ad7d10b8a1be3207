"""Options several commands share, declared once."""

from __future__ import annotations

import argparse

from mllm4wtal.config import Config


def add_set(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): dotted config overrides, into ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=help)


def add_config(p: argparse.ArgumentParser, default: str = "synthetic") -> None:
    """``--config PRESET|YAML`` and ``--set``."""
    p.add_argument("--config", default=default, metavar="PRESET|YAML",
                   help="a preset (synthetic, thumos14, activitynet12) or a YAML file "
                        f"(default: {default})")
    add_set(p, "dotted override, repeatable, e.g. --set loss.lambda1=2.0")


def add_location(p: argparse.ArgumentParser) -> None:
    """Where a sweep or study writes, and a dry run; shared by `sweep` and `ablate`."""
    p.add_argument("--storage", default=None, metavar="DIR|URI",
                   help="where the experiment directory goes (overrides storage.path; must "
                        "be absolute or remote under `ray job submit`)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (overrides mlflow.tracking_uri; default: "
                        "<storage>/mlflow.db)")
    p.add_argument("--check", action="store_true",
                   help="validate the file and print the plan; start nothing")


def add_force(p: argparse.ArgumentParser, what: str) -> None:
    """``--force``: overwrite ``what`` when it exists (refused otherwise; nothing is
    overwritten silently). Writes still go to a temporary name and are renamed into place."""
    p.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists")


def load_cfg(args: argparse.Namespace) -> Config:
    """The config of ``--config`` with ``--set``."""
    from mllm4wtal.config import load_config

    return load_config(args.config, args.overrides)
