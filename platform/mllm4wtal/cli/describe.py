"""``mllm4wtal describe``: MLLM key/complete descriptions into a JSONL store, or --check one."""

from __future__ import annotations

import argparse

from mllm4wtal import files
from mllm4wtal.cli import options
from mllm4wtal.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
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
  pkg.mod:Class  your own mllm4wtal.describe.backends.Backend subclass
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
    options.add_set(g, "override of the dataset config, e.g. --set data.root=/data/thumos")
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
                   help="a pool of Ray actors, one model each (joins --address or "
                        "$RAY_ADDRESS, else starts a private Ray here); this process writes "
                        "the store")
    options.add_address(g, "--ray-address")
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



def run(args: argparse.Namespace) -> int:
    from mllm4wtal.describe.backends import BackendSpec
    from mllm4wtal.describe.check import check_store, format_check
    from mllm4wtal.describe.job import load_describe_dataset, run_describe
    from mllm4wtal.describe.writer import summary_dict, write_json

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
    files.check_writable(args.out, fix="--out")  # the store (and its lock) before any work
    dataset = load_describe_dataset(args.dataset, args.overrides)
    summary = run_describe(
        dataset, args.out, spec, videos=args.videos, num_frames=args.num_frames,
        max_side=args.max_side, workers=args.workers, use_ray=args.ray,
        ray_address=args.address, actors=args.actors, num_gpus=args.num_gpus,
        num_cpus=args.num_cpus, allow_mixed=args.allow_mixed,
        skip_missing_videos=args.skip_missing_videos, max_failures=args.max_failures,
        limit=args.limit, progress=not args.no_progress)
    print(summary.line())
    if args.json:
        write_json(args.json, summary_dict(summary))
    return 1 if summary.failed else 0
