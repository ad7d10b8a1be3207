"""Honest model selection (issue 13): the three data roles, the select-chosen trial tested
once, and one meaning of best across every output of a sweep."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import TINY
from mllm4wtal.config import load_config, parse_override
from mllm4wtal.data.load import load_from_config
from mllm4wtal.data.splits import assign_roles, describe, holdout_names, split_record
from mllm4wtal.data.synthetic import make_synthetic
from mllm4wtal.inference.evaluate import evaluate_on_test
from mllm4wtal.report.collect import read_experiment
from mllm4wtal.report.summary import write_sweep_summary
from mllm4wtal.report.tables import build_table
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.records import trial_score

AVG = "map/avg_0.1-0.7"


# ------------------------------------------------------------------ the roles


def test_holdout_is_disjoint_stratified_seeded_and_order_free():
    ds = make_synthetic()  # 200 training videos, 20 classes
    cfg = load_config("synthetic")
    roles = assign_roles(ds, cfg.data)
    train, select = {v.name for v in roles.train}, {v.name for v in roles.select}
    pool = {v.name for v in ds.split(ds.train_subset)}
    assert train.isdisjoint(select) and train | select == pool
    assert not select & {v.name for v in roles.test}
    assert abs(len(select) - 0.15 * len(pool)) <= 4
    for c in range(ds.num_classes):  # every class trains, and is held out about in proportion
        n_all = sum(c in v.labels for v in ds.split(ds.train_subset))
        n_sel = sum(c in v.labels for v in roles.select)
        assert sum(c in v.labels for v in roles.train) >= 1
        if n_all >= 7:
            assert 0.04 <= n_sel / n_all <= 0.35, (c, n_sel, n_all)
    shuffled = list(ds.split(ds.train_subset))
    random.Random(3).shuffle(shuffled)
    assert holdout_names(shuffled, 0.15, 0) == tuple(sorted(select))  # order-free
    assert holdout_names(shuffled, 0.15, 1) != tuple(sorted(select))  # seeded
    assert assign_roles(roles, cfg.data) is roles  # idempotent
    rec = split_record(roles)
    assert rec["select"] == "holdout" and rec["select_videos"] == sorted(select)
    assert rec["train_count"] == len(train) and len(rec["select_hash"]) == 12
    assert "hold-out of 15% of the training videos (seed 0" in describe(roles)


def test_select_test_is_the_fields_protocol_and_says_so():
    cfg = load_config("synthetic", ["data.select=test"])
    ds = load_from_config(cfg.data)
    assert [v.name for v in ds.select] == [v.name for v in ds.test]
    assert len(ds.train) == len(ds.split(ds.train_subset))  # nothing held out
    assert "the field's protocol: chosen on the test videos" in describe(ds)
    assert split_record(ds)["select_videos"] == [v.name for v in ds.test]


def test_train_cli_chooses_on_select_and_tests_best_pt_once(tmp_path):
    run_dir = tmp_path / "run"
    sets = [a for o in TINY for a in ("--set", o)]
    out = subprocess.run([sys.executable, "-m", "mllm4wtal.cli", "train", "--config",
                          "synthetic", *sets, "--set", f"text.cache_dir={tmp_path}/c",
                          "--run-dir", str(run_dir), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    split = json.loads((run_dir / "split.json").read_text())
    cfg = load_config("synthetic", [*TINY, f"text.cache_dir={tmp_path}/c"])
    roles = assign_roles(load_from_config(cfg.data), cfg.data)
    assert split["select_videos"] == sorted(v.name for v in roles.select) != []
    # the metrics of every evaluation are on select: best.pt holds the best of them
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tested = json.loads((run_dir / "test_metrics.json").read_text())
    assert tested["iteration"] == max(rows, key=lambda r: r[AVG])["iteration"]
    again = evaluate_on_test(run_dir / "best.pt")
    assert tested["metrics"] == again
    assert "chosen on select (hold-out of 15% of the training videos" in out.stdout
    assert f"{again['test/' + AVG] * 100:.2f}%" in out.stdout


def test_trial_score_best_or_last():
    values = [0.2, float("nan"), 0.5, 0.3]
    assert trial_score(values, "max", "best") == 0.5
    assert trial_score(values, "min", "best") == 0.2
    assert trial_score(values, "max", "last") == 0.3


# ------------------------------------------------------------------ a sweep, end to end


def sweep_file(tmp_path: Path) -> Path:
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"train.iterations": 6, "train.eval_interval": 2,
                      "text.cache_dir": str(tmp_path / "cache"),
                      # more select and test videos: the two choices can disagree
                      "data.synthetic.train_videos": 40, "data.synthetic.test_videos": 24,
                      "data.select_fraction": 0.2, "train.lr": 0.015})
    doc = {"name": "honest", "base": "synthetic", "overrides": overrides,
           "metric": AVG, "mode": "max",
           # trials that differ by their seed only: select and test rank them differently
           "space": {"train.seed": {"type": "int", "low": 0, "high": 100}},
           "points_to_evaluate": [{"train.seed": v} for v in range(5)],
           "searcher": {"sampler": "random", "seed": 0}, "scheduler": {"type": "none"},
           "trials": {"num_samples": 5, "max_concurrent": 2, "max_failures": 0},
           "resources": {"cpu": 1, "gpu": 0}, "storage": {"path": str(tmp_path / "sweeps")}}
    path = tmp_path / "honest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_sweep_chooses_on_select_tests_once_and_says_so_everywhere(tmp_path, capfd):
    path = sweep_file(tmp_path)
    space = runner.load(path, [])
    runner.claim(space, [])
    result = runner.run_sweep(space, verbose=1)
    progress = [ln for ln in capfd.readouterr().out.splitlines()
                if ln.startswith("sweep 'honest': ")]
    assert not result.interrupted and len(result.records) == 5
    exp = Path(space.experiment_dir)

    # every trial trained on the same training videos and chose on the same hold-out
    splits = [json.loads(p.read_text()) for p in exp.glob("run_trial_*/checkpoint_*/split.json")]
    assert splits and len({s["select_hash"] for s in splits}) == 1
    assert len({s["train_hash"] for s in splits}) == 1

    # each trial's test figure, measured here for the test only: the two choices differ
    test_of, ckpt_of = {}, {}
    for trial_dir in exp.glob("run_trial_*"):
        last = sorted(trial_dir.glob("checkpoint_*"))[-1]
        tid = "_".join(trial_dir.name.split("_")[2:3])
        ckpt_of[tid] = last
        test_of[tid] = evaluate_on_test(last / "best.pt")["test/" + AVG]
    by_select = max(result.records, key=lambda r: r["metric"])["trial_id"]
    by_test = max(test_of, key=test_of.get)
    assert by_select != by_test, "the premise of this test: the choices disagree"
    chosen = result.chosen
    assert chosen.trial_id == by_select and chosen.checkpoint == "best.pt"
    assert chosen.test_value == pytest.approx(test_of[by_select], abs=1e-12)
    assert "hold-out of 20% of the training videos" in chosen.select_split

    # the console: the last progress line and the conclusion
    assert f"leader: trial {by_select} best/{AVG} = {chosen.select_value:.4f} (max)" \
        in progress[-1]
    text = runner.conclusion(space, result)
    assert f"best trial {by_select}:" in text and "on select" in text
    assert f"test, once for this trial (best.pt): {AVG} = {chosen.test_value:.4f}" in text

    # the summary
    summary = write_sweep_summary(space, result)
    assert summary["best_trial_id"] == by_select and summary["score"] == "best"
    assert summary["test_value"] == pytest.approx(test_of[by_select], abs=1e-12)
    top = (exp / "summary" / "top10.md").read_text()
    assert top.index(by_select) < min(top.index(t) for t in test_of if t != by_select)
    assert "best evaluation during the run" in top
    assert "test (best.pt, evaluated once)" in (exp / "summary" / "best_config.yaml").read_text()

    # MLflow: the parent and the chosen child carry select and test side by side
    client = mlflow.MlflowClient(space.mlflow.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["best_trial_id"] == by_select
    assert parent.data.tags["select_split"] == chosen.select_split
    assert parent.data.metrics[f"select/{AVG}"] == pytest.approx(chosen.select_value)
    assert parent.data.metrics[f"test/{AVG}"] == pytest.approx(chosen.test_value)
    assert parent.data.metrics[f"best/{AVG}"] == pytest.approx(chosen.select_value)
    kids = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [parent.info.experiment_id]) if "mlflow.parentRunId" in r.data.tags}
    assert f"test/{AVG}" in kids[by_select].data.metrics
    for run in kids.values():  # each run records its split
        assert "split.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.params["data.select"] == "holdout"
    assert not any(f"test/{AVG}" in r.data.metrics for t, r in kids.items() if t != by_select)

    # the report: its default is the same best evaluation; it names the chosen trial
    data = read_experiment(space.mlflow.experiment, space.mlflow.tracking_uri)
    table = build_table(data)
    assert table.at == "best"
    assert table.notes[0] == (
        f"chosen on select ({chosen.select_split}): trial {by_select}, {AVG} = "
        f"{chosen.select_value * 100:.2f} on select, {chosen.test_value * 100:.2f} on test "
        "(evaluated once, for this trial only)")
