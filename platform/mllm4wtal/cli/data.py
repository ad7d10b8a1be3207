"""``mllm4wtal data info|pack|export``."""

from __future__ import annotations

import argparse

from mllm4wtal.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect, pack or export datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = dsub.add_parser("info", help="videos per split, classes, instances, snippet lengths")
    options.add_config(q)
    q = dsub.add_parser("pack", help="write the packed float16 memory-mapped format",
                        description="Pack a dataset into one float16 memory-mapped matrix plus "
                                    "a JSON index; loads in well under a second, no pickle.")
    options.add_config(q)
    q.add_argument("--out", required=True,
                   help="output directory (must not exist or be empty, unless --force)")
    options.add_force(q, "--out's features.f16 and index.json (other files are kept)")
    q = dsub.add_parser("export", help="write a dataset (e.g. the synthetic one) in the WTAL "
                                       "layout <root>/<name>-I3D-JOINTFeatures.npy + annotations")
    options.add_config(q)
    q.add_argument("--out", required=True,
                   help="output directory (must not exist or be empty, unless --force)")
    q.add_argument("--name", default="Synthetic", help="file stem (default Synthetic)")
    options.add_force(q, "--out's <name> feature file and annotations (other files are kept)")


def run(args: argparse.Namespace) -> int:
    from mllm4wtal import files
    from mllm4wtal.data import dataset_info, pack, save_wtal
    from mllm4wtal.data.load import load_from_config

    cfg = options.load_cfg(args)
    if args.data_command in ("pack", "export"):  # at the door, before the data is read
        files.check_target(args.out, args.force, fix="--out", folder=True)
    ds = load_from_config(cfg.data)
    if args.data_command == "info":
        print(dataset_info(ds))
    elif args.data_command == "pack":
        pack(ds, args.out, force=args.force)
        print(f"packed {len(ds.videos)} videos into {args.out}")
    elif args.data_command == "export":
        save_wtal(ds, args.out, args.name, force=args.force)
        print(f"wrote {args.out}/{args.name}-I3D-JOINTFeatures.npy and "
              f"{args.out}/{args.name}-Annotations/")
    return 0
