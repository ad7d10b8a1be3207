"""The summary of a sweep (report.summary) and the sweep plots (report.sweep_plots) on
hand-made trial records and Optuna studies, logged to a real sqlite MLflow store."""

from __future__ import annotations

import json
import re

import matplotlib
import optuna
import pytest
from mllm4wtal.report.importances import param_importances, plot_importances
from mllm4wtal.report.summary import gpu_accounting, rank_records, write_summary
from mllm4wtal.sweep.mlflow_store import prepare_store
from mllm4wtal.sweep.tracker import SweepTracker

AVG = "map/avg_0.1-0.7"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, _ = prepare_store(None, "summary", tmp_path_factory.mktemp("store"))
    return uri


RECORDS = [  # total 100 iterations
    {"trial_id": "a", "config": {"train.lr": 1e-4, "loss.kind": "x"}, "metric": 0.40,
     "iterations": 100, "pruned": False, "status": "FINISHED", "wall_s": 1000.0, "gpus": 0.5},
    {"trial_id": "b", "config": {"train.lr": 1e-3, "loss.kind": "y"}, "metric": 0.30,
     "iterations": 25, "pruned": True, "status": "FINISHED", "wall_s": 300.0, "gpus": 0.5},
    {"trial_id": "c", "config": {"train.lr": 3e-4, "loss.kind": "x"}, "metric": 0.45,
     "iterations": 50, "pruned": True, "status": "FINISHED", "wall_s": 400.0, "gpus": 1.0},
    {"trial_id": "d", "config": {"train.lr": 1e-2, "loss.kind": "y"}, "metric": None,
     "iterations": 10, "pruned": False, "status": "FAILED", "wall_s": 60.0, "gpus": 0.5},
]


def test_gpu_accounting_by_hand():
    got = gpu_accounting(RECORDS, 100)
    assert got["gpu_hours_used"] == pytest.approx((500 + 150 + 400 + 30) / 3600)
    # b: 300 s * 75/25 * 0.5 GPU = 450; c: 400 s * 50/50 * 1 GPU = 400
    assert got["gpu_hours_saved_by_pruning"] == pytest.approx(850 / 3600)
    assert got["trial_iterations_used"] == 185
    assert got["trial_iterations_without_pruning"] == 310


def _study(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True)
                   + 0.01 * t.suggest_int("k", 1, 3), n_trials=n)
    return study


def test_write_summary(store, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = SweepTracker(tmp_path / "exp", "summary", store)
    client, parent_id = tracker.client, tracker.parent_run_id
    out = tmp_path / "summary"
    summary = write_summary(client, parent_id, "demo", _study(8), RECORDS, out, metric=AVG,
                            mode="max", total_iterations=100, base="synthetic")
    assert summary["best_trial_id"] == "c" and summary["best_value"] == 0.45
    best = (out / "best_config.yaml").read_text()
    assert best.startswith("# best trial c of sweep 'demo'") and "base: synthetic" in best
    assert "lr: 0.0003" in best
    top = (out / "top10.md").read_text()
    rows = [line for line in top.splitlines() if re.match(r"\| \d", line)]
    assert [r.split(" | ")[1] for r in rows] == ["c", "a", "b"]  # d has no metric
    assert f"`{AVG}` (max)" in top
    imp = json.loads((out / "param_importances.json").read_text())
    assert set(imp["importances"]) == {"lr", "k"}
    assert imp["n_trials"] == 8 and imp["left_out"] == {} and "fewer than 10" in imp["caveat"]
    for png in ("parallel_coordinates.png", "param_importances.png", "optimisation_history.png",
                "pruning.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    parent = client.get_run(parent_id)
    m = parent.data.metrics
    assert m["gpu_hours_used"] == pytest.approx(0.3)
    assert m["gpu_hours_saved_by_pruning"] == pytest.approx(850 / 3600)
    assert m["trial_iterations_used"] == 185 and m["trial_iterations_without_pruning"] == 310
    assert m[f"best/{AVG}"] == 0.45 and parent.data.tags["best_trial_id"] == "c"
    assert parent.data.tags["sweep_metric"] == f"{AVG} (max)"
    assert {a.path for a in client.list_artifacts(parent_id)} == {
        "best_config.yaml", "top10.md", "param_importances.json", "param_importances.png",
        "parallel_coordinates.png", "optimisation_history.png", "pruning.png", "summary.json"}

    few = write_summary(client, parent_id, "demo", _study(1), RECORDS[3:], tmp_path / "few",
                        metric=AVG, mode="min", total_iterations=100)
    assert few["best_trial_id"] is None
    note = json.loads((tmp_path / "few" / "param_importances.json").read_text())
    assert note["importances"] == {} and "at least 2" in note["note"]
    assert "No trial reported" in (tmp_path / "few" / "top10.md").read_text()


def test_rank_records_best_first_ties_by_trial_id():
    recs = [{"trial_id": "b", "metric": 0.5}, {"trial_id": "a", "metric": 0.5},
            {"trial_id": "c", "metric": float("nan")}, {"trial_id": "d", "metric": 0.1}]
    assert [r["trial_id"] for r in rank_records(recs, "max")] == ["a", "b", "d"]
    assert [r["trial_id"] for r in rank_records(recs, "min")] == ["d", "a", "b"]
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        rank_records(recs, "best")


def test_importances_are_optunas_and_the_plot_leaves_the_style_alone(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(8)
    imp = param_importances(study)
    assert imp["importances"] == pytest.approx(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))
    style = dict(matplotlib.rcParams)
    fig = plot_importances(imp, f"{AVG} (max)")
    fig.savefig(tmp_path / "imp.png")
    assert (tmp_path / "imp.png").read_bytes()[:4] == b"\x89PNG"
    assert dict(matplotlib.rcParams) == style
    none = param_importances(_study(1))
    assert none["importances"] == {} and none["n_trials"] == 1
    assert "from 1 trials" in plot_importances(none, "x").axes[0].get_title()
    assert param_importances(None)["note"].startswith("no Optuna study")
