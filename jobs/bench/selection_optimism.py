"""How much choosing on the test videos overstates: a sweep's best test mAP when trials and
checkpoints are chosen by test mAP (the field's protocol) vs the test mAP of the config and
checkpoint chosen on the held-out select videos (this platform's default), over seeds.

    python jobs/bench/selection_optimism.py --trials 16 --seeds 0 1 2 [--workers 2]

For each seed: ``--trials`` configs drawn at random (Optuna's RandomSampler, that seed) from
the search space (default: the README's quickstart), each trained once with that
``train.seed`` on the training videos less the hold-out, evaluated every
``train.eval_interval`` iterations on both the select and the test videos (the test figures
are for this benchmark only: the platform never computes them before choosing). Then

- chosen on test: the largest test mAP over every trial and evaluation;
- chosen on select: the test mAP of the evaluation with the largest select mAP (the trial
  and the best.pt a sweep would choose);
- optimism = the first minus the second, in mAP points.

Training data are the same for both choices, so the difference is the selection bias alone.
Prints a Markdown table and writes it as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna
import torch
from mllm4wtal.config import from_flat, parse_override, to_flat
from mllm4wtal.data.load import load_from_config
from mllm4wtal.inference.evaluate import ModelEvaluator, evaluate_model
from mllm4wtal.report.stats import summarize
from mllm4wtal.sweep.spaces.optuna_space import suggest
from mllm4wtal.sweep.spaces.search_space import load_search_space
from mllm4wtal.train.loop import train


class BothSplits(ModelEvaluator):
    """The select evaluation that chooses best.pt, plus the test figures beside it."""

    def __call__(self, model):  # type: ignore[override]
        scores, predictions = super().__call__(model)
        device = next(model.parameters()).device
        test, _ = evaluate_model(model, self.dataset, self.cfg, device, role="test")
        return {**scores, **{f"test/{k}": v for k, v in test.flat_metrics().items()}}, \
            predictions


def run_one(job: tuple[dict, str, str]) -> list[tuple[int, float, float]]:
    """Train one config; ``[(iteration, select value, test value)]`` of its evaluations."""
    flat, metric, out = job
    torch.set_num_threads(1)
    cfg = from_flat(flat)
    dataset = load_from_config(cfg.data)
    train(cfg, dataset, out, evaluate=BothSplits(cfg, dataset), progress=False)
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return [(int(r["iteration"]), r[metric], r[f"test/{metric}"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/quickstart.yaml")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config overrides for every trial (e.g. train.iterations=200)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    space = load_search_space(args.space)  # its scheduler is not used: no trial is pruned
    metric = space.metric
    base = {**to_flat(space.base_config), **dict(parse_override(o) for o in args.overrides)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        for seed in args.seeds:
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            jobs = []
            for i in range(args.trials):
                drawn = suggest(space.params, study.ask())
                flat = {**base, **drawn, "train.seed": seed,
                        "text.cache_dir": f"{tmp}/cache"}
                jobs.append((flat, metric, f"{tmp}/s{seed}_t{i}"))
            runs = list(pool.map(run_one, jobs))
            evals = [e for run in runs for e in run if math.isfinite(e[1])]
            on_test = max(t for _, _, t in evals)
            chosen = max(range(len(runs)), key=lambda k: max(s for _, s, _ in runs[k]))
            step = max(runs[chosen], key=lambda e: e[1])
            per_seed.append({"seed": seed, "chosen_on_test": on_test,
                             "chosen_on_select_test": step[2], "select": step[1],
                             "chosen_trial": chosen, "optimism": on_test - step[2]})
            print(f"seed {seed}: chosen on test {on_test * 100:.2f}, chosen on select "
                  f"{step[2] * 100:.2f} (select {step[1] * 100:.2f}, trial {chosen}), "
                  f"optimism {(on_test - step[2]) * 100:+.2f}", flush=True)
    print(f"\n{args.trials} trials per seed, {base['train.iterations']} iterations, "
          f"{metric}, seeds {args.seeds}\n")
    print("| | mean ± std (mAP points) |\n|---|---|")
    for key, label in (("chosen_on_test", "best test mAP, chosen on test (field)"),
                       ("chosen_on_select_test", "test mAP, chosen on select (this platform)"),
                       ("optimism", "optimism of choosing on test")):
        s = summarize([r[key] * 100 for r in per_seed])
        print(f"| {label} | {s.mean:.2f} ± {s.std or 0:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(per_seed, indent=1) + "\n")


if __name__ == "__main__":
    main()
