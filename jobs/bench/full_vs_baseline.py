"""Full KSM+CSR+DPID vs the untrained model and the `mil` baseline on the synthetic benchmark,
at the same budget (the preset's iterations), over seeds. Prints a Markdown table of the
best average mAP@0.1:0.7 each run reached, the one at its last evaluation, and the wall
time.

    python jobs/bench/full_vs_baseline.py --seeds 0 1 [--set train.iterations=600]

Variants: ``untrained`` (the full model at iteration 0), ``mil`` (the papers' Baseline:
attention-MIL with a conv class head, no text, no localization head, proposals from its
CAS), ``mil+loc`` (the Baseline with the prior-driven localization head, still no text),
``full`` (KSM + CSR + DPID + localization head, the synthetic preset: class-specific
prompt context), ``full/unified`` (the same with the paper's context shared by all classes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from mllm4wtal.config import load_config
from mllm4wtal.data.load import load_from_config
from mllm4wtal.inference.evaluate import ModelEvaluator, evaluate_model, primary_metric
from mllm4wtal.report.stats import summarize
from mllm4wtal.text.bundle import build_text_bundle
from mllm4wtal.train.loop import build_model, seed_everything, train

VARIANTS = {
    "mil": ["ksm.enabled=false", "csr.enabled=false", "loc_head.enabled=false",
            "inference.source=cas"],
    "mil+loc": ["ksm.enabled=false", "csr.enabled=false"],
    "full": [],
    "full/unified": ["ksm.prompt=learnable"],
}


def untrained(overrides: list[str]) -> float:
    cfg = load_config("synthetic", overrides)
    data = load_from_config(cfg.data)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, data, build_text_bundle(cfg, data))
    result, _ = evaluate_model(model, data, cfg, torch.device("cpu"))
    return result.flat_metrics()[primary_metric(cfg)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="which trained variants to run (default: all)")
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {"untrained": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            common = [*args.overrides, f"train.seed={seed}", "train.device=cpu",
                      f"text.cache_dir={tmp}/cache"]
            score = untrained(common)
            rows["untrained"].append((score, score, 0.0))
            for name in args.variants:
                extra = VARIANTS[name]
                cfg = load_config("synthetic", common + extra)
                data = load_from_config(cfg.data)
                t0 = time.perf_counter()
                res = train(cfg, data, Path(tmp) / f"{name}-{seed}",
                            evaluate=ModelEvaluator(cfg, data), progress=False)
                last = res.last_metrics[primary_metric(cfg)]
                rows.setdefault(name, []).append((res.best_metric, last,
                                                  time.perf_counter() - t0))
                print(f"seed {seed} {name}: {res.best_metric * 100:.1f} "
                      f"(best at {res.best_iteration}), {last * 100:.1f} last", flush=True)
    iters = load_config("synthetic", args.overrides).train.iterations
    print(f"\n{iters} iterations, seeds {args.seeds}, {torch.get_num_threads()} threads\n")
    print("| variant | best avg mAP@0.1:0.7, per seed | mean ± std | last evaluation, "
          "mean ± std | wall s (mean) |")
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        best, last = [v[0] * 100 for v in vals], [v[1] * 100 for v in vals]
        print(f"| {name} | {', '.join(f'{m:.1f}' for m in best)} | {_mean_std(best)} | "
              f"{_mean_std(last)} | {summarize([v[2] for v in vals]).mean:.0f} |")


def _mean_std(values: list[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.1f}" + (f" ± {s.std:.1f}" if s.std is not None else "")


if __name__ == "__main__":
    main()
