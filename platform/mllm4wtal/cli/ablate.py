"""``mllm4wtal ablate``: an ablation study, variants x seeds, ending with its table."""

from __future__ import annotations

import argparse

from mllm4wtal.cli import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="ablation study: variants x seeds -> paper-style table",
                       description="Run every variant x seed of a study YAML (schema: "
                                   "search_spaces/ablations/*.yaml, mllm4wtal.sweep.study_file) as "
                                   "Ray Tune trials with fixed hyperparameters and no pruning, "
                                   "logged to MLflow (one parent run per study, one child run "
                                   "per cell, tagged study/variant/seed). Cells already "
                                   "finished in the experiment are skipped: run it again to "
                                   "finish an interrupted study, or with more --seeds to "
                                   "extend one. Ends with the table (mllm4wtal report).")
    p.add_argument("study", metavar="STUDY.yaml",
                   help="study file, e.g. search_spaces/ablations/components.yaml")
    options.add_set(p, "override of every variant's config, repeatable, e.g. "
                       "--set train.iterations=300")
    p.add_argument("--seeds", default=None, metavar="N|LIST",
                   help="seeds per variant: a count (3 = seeds 0,1,2) or a list (0,1,7); "
                        "default: the file's seeds (3)")
    options.add_location(p)
    options.add_address(p)
    p.add_argument("--no-report", action="store_true",
                   help="do not write the report (tables and plots) at the end")


def run(args: argparse.Namespace) -> int:
    options.use_address(args)  # first: a dead cluster address fails in seconds
    from mllm4wtal.sweep import ablate
    from mllm4wtal.sweep import preflight as start_check

    study = ablate.load_study(args.study, args.overrides, args.seeds, args.storage,
                              args.tracking_uri)
    print(ablate.plan(study))
    # --check and the start refuse the same things (the experiment folder, the MLflow store,
    # resources), all at once, before anything is written
    checked = start_check.check(study, study=True)
    checked.refuse()
    if args.check:
        ablate.preflight(study)
        print(checked.report())
        return 0
    result = ablate.run_ablation(study)
    print(ablate.conclusion(study, result))
    if not args.no_report and not result.interrupted:
        from mllm4wtal.report.build import make_report

        report = make_report(result.experiment, result.tracking_uri,
                             result.experiment_dir / "report")
        print()
        print(report.markdown, end="")
        print(f"report: {report.out_dir}")
    return 130 if result.interrupted else 0
