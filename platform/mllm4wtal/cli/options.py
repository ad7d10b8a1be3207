"""Options several commands share, declared once."""

from __future__ import annotations

import argparse
import os

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


def add_address(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                *aliases: str) -> None:
    """``--address HOST:PORT``: the Ray cluster to run on (``ray_session.start_ray``)."""
    p.add_argument("--address", *aliases, dest="address", default=None,
                   metavar="HOST:PORT",
                   help="the Ray cluster to run on: its GCS address (HOST:6379) or "
                        "ray://HOST:10001; default: $RAY_ADDRESS (`ray job submit` sets it), "
                        "else a private Ray in this process, on 127.0.0.1")


def use_address(args: argparse.Namespace) -> None:
    """Check ``--address`` / ``$RAY_ADDRESS`` (its form, and that something answers there)
    before anything is written, and hand ``--address`` to every Ray start of this command
    (``ray_session`` reads ``$RAY_ADDRESS``)."""
    from mllm4wtal.ray_session import ADDRESS_ENV, check_address

    check_address(args.address)
    if args.address:
        os.environ[ADDRESS_ENV] = args.address


def add_force(p: argparse.ArgumentParser, what: str) -> None:
    """``--force``: overwrite ``what`` when it exists (refused otherwise; nothing is
    overwritten silently). Writes still go to a temporary name and are renamed into place."""
    p.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists")


def load_cfg(args: argparse.Namespace) -> Config:
    """The config of ``--config`` with ``--set``."""
    from mllm4wtal.config import load_config

    return load_config(args.config, args.overrides)
