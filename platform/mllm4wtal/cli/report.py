"""``mllm4wtal report``: tables and plots of a study or sweep, read back from MLflow."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots of a study or sweep from MLflow",
                       description="Read an MLflow experiment written by `mllm4wtal ablate` "
                                   "or `mllm4wtal sweep` and write Markdown, CSV and LaTeX "
                                   "tables (one row per variant: mAP at each tIoU and the "
                                   "averages, mean +- std over seeds, the difference to the "
                                   "reference row with a paired t-test over seeds, the "
                                   "paper's figures beside ours) and plots (mAP over "
                                   "training, per-video timelines of ground truth, "
                                   "actionness and proposals; for sweeps parallel "
                                   "coordinates and parameter importances), logged as "
                                   "artifacts of the parent run.")
    p.add_argument("--experiment", required=True, metavar="NAME",
                   help="MLflow experiment name (a study's or a sweep's name by default)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store (URI or path of mlflow.db); default: "
                        "$MLFLOW_TRACKING_URI, else ./sweeps/mlflow.db")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: reports/<experiment>)")
    p.add_argument("--at", choices=["final", "best"], default=None,
                   help="each run's best evaluation by the table's metric (what best.pt "
                        "holds) or its final one; default: a sweep's own `score:` rule, "
                        "else best")
    p.add_argument("--videos", type=int, default=3, metavar="N",
                   help="test videos to draw timelines of (loads each row's checkpoint; "
                        "0 = none; default 3)")
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="sweeps: rows besides the reference (default 20)")
    p.add_argument("--study", default=None,
                   help="the study, when the experiment holds runs of several")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the files as artifacts of the parent run")


def run(args: argparse.Namespace) -> int:
    from mllm4wtal.report.build import make_report

    report = make_report(args.experiment, args.tracking_uri, args.out, at=args.at,
                         n_videos=args.videos, top_k=args.top, log=not args.no_log,
                         study=args.study)
    print(report.markdown, end="")
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {len(report.files)} files to {report.out_dir}"
          + (f"; logged under report/ of parent run {report.logged_to}"
             if report.logged_to else ""))
    return 0
