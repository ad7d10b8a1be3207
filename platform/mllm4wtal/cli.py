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
  mllm4wtal ablate search_spaces/ablations/components.yaml  # variants x seeds -> table
  mllm4wtal report --experiment components                  # tables + plots from MLflow
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


def _add_location_args(p: argparse.ArgumentParser) -> None:
    """Where a sweep or study writes, and a dry run; shared by `sweep` and `ablate`."""
    p.add_argument("--storage", default=None, metavar="DIR|URI",
                   help="where the experiment directory goes (overrides storage.path; must "
                        "be absolute or remote under `ray job submit`)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (overrides mlflow.tracking_uri; default: "
                        "<storage>/mlflow.db)")
    p.add_argument("--check", action="store_true",
                   help="validate the file and print the plan; start nothing")


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
    _add_location_args(p)
    p.add_argument("--resume", default=None, metavar="EXPERIMENT_DIR",
                   help="continue an interrupted sweep (finished trials are not rerun, "
                        "errored ones resume from their checkpoints)")

    p = sub.add_parser("ablate", help="ablation study: variants x seeds -> paper-style table",
                       description="Run every variant x seed of a study YAML (schema: "
                                   "search_spaces/ablations/*.yaml, mllm4wtal.sweep.ablate) as "
                                   "Ray Tune trials with fixed hyperparameters and no pruning, "
                                   "logged to MLflow (one parent run per study, one child run "
                                   "per cell, tagged study/variant/seed). Cells already "
                                   "finished in the experiment are skipped: run it again to "
                                   "finish an interrupted study, or with more --seeds to "
                                   "extend one. Ends with the table (mllm4wtal report).")
    p.add_argument("study", metavar="STUDY.yaml",
                   help="study file, e.g. search_spaces/ablations/components.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of every variant's config, repeatable, e.g. "
                        "--set train.iterations=300")
    p.add_argument("--seeds", default=None, metavar="N|LIST",
                   help="seeds per variant: a count (3 = seeds 0,1,2) or a list (0,1,7); "
                        "default: the file's seeds (3)")
    _add_location_args(p)
    p.add_argument("--no-report", action="store_true",
                   help="do not write the report (tables and plots) at the end")

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
    p.add_argument("--at", choices=["final", "best"], default="final",
                   help="each run's last evaluation (default) or its best one by the "
                        "table's metric")
    p.add_argument("--videos", type=int, default=3, metavar="N",
                   help="test videos to draw timelines of (loads each row's checkpoint; "
                        "0 = none; default 3)")
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="sweeps: rows besides the reference (default 20)")
    p.add_argument("--study", default=None,
                   help="the study, when the experiment holds runs of several")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the files as artifacts of the parent run")

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

    p = sub.add_parser(
        "describe", help="MLLM key/complete descriptions of every training (video, class) "
                         "pair into a JSONL store (resumable, Ray), or --check a store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "For each training video and each of its labelled classes, ask a backend the two\n"
            "prompts of MLLM4WTAL, P_key (eq. 1) and P_complete (eq. 11), with frames sampled\n"
            "uniformly from the video, and append one record per (video, class) to --out:\n"
            "video, class, key, complete, backend, model, prompt, frames_hash, num_frames,\n"
            "finish, seconds. A rerun skips the pairs already there: a crash loses at most the\n"
            "videos in flight, and a cut-off last line is moved to <out>.corrupt-<n>. Training\n"
            "reads the store with --set text.backend=file --set text.store=<out>.\n"
            "Exit status: 0 done; 1 some videos failed (a rerun retries them) or --check\n"
            "found missing pairs or empty answers; 2 a usage error."),
        epilog="""backends:
  template   no model, no video: the label-text sentences (what training uses by default)
  hf         a Hugging Face video-language model in a local directory (transformers; never
             downloads); frames as one video (Qwen2-VL, LLaVA-OneVision, ...; needs
             torchvision) or as images (LLaVA, ...); batched greedy decoding
  openai     an OpenAI-compatible chat server that takes images (vLLM, SGLang); frames as
             base64 JPEGs; key from $OPENAI_API_KEY (or --api-key-env), never logged
  pkg.mod:Class  your own mllm4wtal.text.backends.Backend subclass
  (hf and openai: pip install 'mllm4wtal[mllm]')

examples:
  mllm4wtal describe --dataset synthetic --backend template --out runs/desc.jsonl
  mllm4wtal describe --dataset thumos14 --set data.root=/data/thumos --videos /data/thumos/videos \\
      --backend hf --model /models/Qwen2-VL-7B-Instruct --num-frames 8 --out thumos_desc.jsonl
  vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 &   # then:
  mllm4wtal describe --dataset thumos14 --set data.root=/data/thumos --videos /data/thumos/videos \\
      --backend openai --api-base http://localhost:8000/v1 --concurrency 16 --out thumos_desc.jsonl
  mllm4wtal describe --ray --num-gpus 1 --backend hf --model /models/m ...   # one model per GPU
  mllm4wtal describe --check thumos_desc.jsonl --dataset thumos14 --set data.root=/data/thumos
  mllm4wtal train --config thumos14 --set data.root=/data/thumos --set text.backend=file \\
      --set text.store=thumos_desc.jsonl
""")
    g = p.add_argument_group("what to describe")
    g.add_argument("--dataset", default="synthetic", metavar="PRESET|YAML|DIR",
                   help="a preset (synthetic, thumos14, activitynet12), a config YAML, or a "
                        "<Name>-Annotations directory (or its parent); only the annotations "
                        "are read (default: synthetic)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the dataset config, e.g. --set data.root=/data/thumos")
    g.add_argument("--videos", default=None, metavar="DIR",
                   help="folder with one video file (<name>.mp4, .avi, .mkv, ...) or one "
                        "folder of frame images per training video (not for template)")
    g.add_argument("--out", default=None, metavar="STORE.jsonl",
                   help="the description store to write or resume")
    g.add_argument("--check", default=None, metavar="STORE.jsonl",
                   help="do not describe: report coverage, empty/truncated answers, answers "
                        "naming neither the class nor an action verb, lengths; exit 1 if "
                        "pairs are missing or answers empty")
    g.add_argument("--json", default=None, metavar="PATH",
                   help="also write the run summary (or the --check report) as JSON")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N videos still to do (a smoke test of a model)")
    g = p.add_argument_group("backend")
    g.add_argument("--backend", default="template", metavar="NAME",
                   help="template, hf, openai or package.module:Class (default: template)")
    g.add_argument("--model", default=None, metavar="PATH|NAME",
                   help="hf: local model directory; openai: served model name (default "
                        "$OPENAI_MODEL, else the server's only model)")
    g.add_argument("--num-frames", type=int, default=8, metavar="N",
                   help="frames sampled uniformly from each video (default 8)")
    g.add_argument("--max-side", type=int, default=0, metavar="PX",
                   help="scale frames down to at most PX on the longer side (default 0: as "
                        "decoded; hf processors resize anyway; for openai, 448-768 keeps "
                        "requests small)")
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="longest answer in tokens (default 256); answers cut there are "
                        "marked finish=length")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="0 = greedy decoding (default); > 0 samples")
    g.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="hf: prompts per generate call (default 8; a video's prompts are "
                        "2 per labelled class)")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="hf: auto, cpu, cuda, cuda:1 (default auto)")
    g.add_argument("--dtype", default="auto", metavar="DTYPE",
                   help="hf: auto (bf16 on GPU, else fp32), float32, float16, bfloat16")
    g.add_argument("--frames-as", default="auto", choices=["auto", "video", "images"],
                   help="hf: give the frames as one video or as images (default auto: video "
                        "when the processor has a video processor)")
    g.add_argument("--attn-implementation", default=None, metavar="NAME",
                   help="hf: e.g. sdpa or flash_attention_2")
    g.add_argument("--api-base", default=None, metavar="URL",
                   help="openai: server URL ending in /v1 (default $OPENAI_BASE_URL)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="openai: environment variable holding the key (default "
                        "OPENAI_API_KEY; unset is fine for a local server)")
    g.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="openai: seconds per request (default 120)")
    g.add_argument("--retries", type=int, default=5, metavar="N",
                   help="openai: retries with back-off on 429/5xx/timeouts (default 5)")
    g.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="openai: requests in flight per video being described (default "
                        "8; times --workers or the number of actors in all)")
    g = p.add_argument_group("scale and resume")
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="without --ray: videos in flight in this process (default 2: one "
                        "decodes while the other generates)")
    g.add_argument("--ray", action="store_true",
                   help="a pool of Ray actors, one model each (joins $RAY_ADDRESS or "
                        "--ray-address, else starts Ray here); this process writes the store")
    g.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster to join")
    g.add_argument("--actors", type=int, default=None, metavar="N",
                   help="Ray actors (default: GPUs / --num-gpus, or up to 4 CPU actors)")
    g.add_argument("--num-gpus", type=float, default=None, metavar="G",
                   help="GPUs per actor (default: 1 for hf on a cluster with GPUs, else 0)")
    g.add_argument("--num-cpus", type=float, default=1.0, metavar="C",
                   help="CPUs per actor (default 1)")
    g.add_argument("--allow-mixed", action="store_true",
                   help="resume a store written by another backend/model anyway")
    g.add_argument("--skip-missing-videos", action="store_true",
                   help="describe the videos that exist; without it a missing one stops the "
                        "job before it starts")
    g.add_argument("--max-failures", type=int, default=20, metavar="N",
                   help="stop after N videos failed (default 20); failed ones are retried by "
                        "the next run")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    print(runner.plan(space))
    if args.check:
        return 0
    if not args.resume:
        runner.claim(space, args.overrides, args.edits)
    result = runner.run_sweep(space, resume=bool(args.resume))
    print(runner.conclusion(space, result))
    return 130 if result.interrupted else 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from mllm4wtal.sweep import ablate

    study = ablate.load_study(args.study, args.overrides, args.seeds, args.storage,
                              args.tracking_uri)
    print(ablate.plan(study))
    if args.check:
        ablate.preflight(study)
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


def cmd_report(args: argparse.Namespace) -> int:
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


def cmd_describe(args: argparse.Namespace) -> int:
    from mllm4wtal.text.backends import BackendSpec
    from mllm4wtal.text.describe import (
        check_store,
        format_check,
        load_describe_dataset,
        run_describe,
        summary_dict,
        write_json,
    )

    if args.check:
        if args.out:
            raise UserError("--check reads a store and --out writes one: give one of them")
        dataset = load_describe_dataset(args.dataset, args.overrides)
        report = check_store(args.check, dataset)
        print(format_check(report))
        if args.json:
            write_json(args.json, report)
        return 0 if report["ok"] else 1
    if not args.out:
        raise UserError("describe needs --out STORE.jsonl (the store to write or resume), or "
                        "--check STORE.jsonl")
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
               "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
               "frames_as": args.frames_as, "attn_implementation": args.attn_implementation,
               "api_base": args.api_base, "api_key_env": args.api_key_env,
               "timeout": args.timeout, "retries": args.retries,
               "concurrency": args.concurrency}
    spec = BackendSpec(name=args.backend, model=args.model or "", options=options)
    dataset = load_describe_dataset(args.dataset, args.overrides)
    summary = run_describe(
        dataset, args.out, spec, videos=args.videos, num_frames=args.num_frames,
        max_side=args.max_side, workers=args.workers, use_ray=args.ray,
        ray_address=args.ray_address, actors=args.actors, num_gpus=args.num_gpus,
        num_cpus=args.num_cpus, allow_mixed=args.allow_mixed,
        skip_missing_videos=args.skip_missing_videos, max_failures=args.max_failures,
        limit=args.limit, progress=not args.no_progress)
    print(summary.line())
    if args.json:
        write_json(args.json, summary_dict(summary))
    return 1 if summary.failed else 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sweep": cmd_sweep, "data": cmd_data,
            "config": cmd_config, "describe": cmd_describe, "ablate": cmd_ablate,
            "report": cmd_report}


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
