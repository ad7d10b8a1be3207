"""Plots that explain themselves (issue 13, item 6), read off the matplotlib objects: the
timeline's class legend, the parallel coordinates' colour bar and gaps, importances with
conditional parameters and the trials they rest on, the optimisation history and the
pruning picture (its histories read from MLflow)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from mllm4wtal.report.collect import ExperimentData, RunInfo
from mllm4wtal.report.importances import MIN_TRIALS, param_importances, plot_importances
from mllm4wtal.report.plots import TimelineTrack, timeline_figure
from mllm4wtal.report.sweep_data import asha_rungs, sweep_records, trial_histories
from mllm4wtal.report.sweep_plots import (
    plot_optimisation_history,
    plot_parallel_coordinates,
    plot_pruning,
)
from mllm4wtal.sweep.mlflow_store import prepare_store
from mllm4wtal.sweep.spaces.sections import SchedulerSpec
from mllm4wtal.sweep.tracker import SweepTracker

AVG = "map/avg_0.1-0.7"
D = optuna.distributions


def _lines(ax, gid):
    return [ln for ln in ax.get_lines() if ln.get_gid() == gid]


# --------------------------------------------------------------------------- timelines


def test_timeline_legend_maps_class_colours_to_names():
    seg = SimpleNamespace
    video = SimpleNamespace(name="video_1", duration=20.0,
                            segments=[seg(start=1.0, end=4.0, label=2),
                                      seg(start=9.0, end=12.0, label=0)])
    track = TimelineTrack("MLLM4WTAL", np.linspace(0, 1, 40),
                          [(1.0, 4.0, 0.9, 2), (14.0, 16.0, 0.4, 3)])  # class 3: a wrong one
    classes = ["Diving", "Golf", "Pole", "Shotput"]
    fig = timeline_figure(video, classes, [track], 0.5)
    gt = fig.axes[0]
    legend = gt.get_legend()
    assert legend is not None
    names = [t.get_text() for t in legend.get_texts()]
    assert names == ["Pole", "Diving", "Shotput (proposals only)"]
    colours = {name: to_rgba(h.get_facecolor()) for name, h in
               zip(names, legend.legend_handles, strict=True)}
    spans = {(round(p.get_x(), 3)): to_rgba(p.get_facecolor(), 1.0) for p in gt.patches}
    # the ground truth's span of Pole (1..4 s) and of Diving (9..12 s) have the legend's colours
    assert to_rgba(colours["Pole"], 1.0) == spans[1.0]
    assert to_rgba(colours["Diving"], 1.0) == spans[9.0]
    bars = fig.axes[1].patches
    wrong = next(b for b in bars if round(b.get_x(), 3) == 14.0)
    assert to_rgba(wrong.get_facecolor(), 1.0) == to_rgba(colours["Shotput (proposals only)"],
                                                          1.0)


# --------------------------------------------------------------------------- parallel coords


CONDITIONAL = [  # csr.gamma1 exists only when csr.enabled is True
    {"trial_id": "t1", "config": {"csr.enabled": True, "csr.gamma1": 0.2, "train.lr": 1e-4},
     "metric": 0.40, "pruned": False, "status": "FINISHED", "iterations": 100},
    {"trial_id": "t2", "config": {"csr.enabled": False, "train.lr": 1e-3},
     "metric": 0.30, "pruned": True, "status": "FINISHED", "iterations": 30},
    {"trial_id": "t3", "config": {"csr.enabled": True, "csr.gamma1": 0.8, "train.lr": 3e-3},
     "metric": 0.50, "pruned": False, "status": "FINISHED", "iterations": 100},
    {"trial_id": "t4", "config": {"csr.enabled": False, "train.lr": 1e-2},
     "metric": None, "pruned": False, "status": "FAILED", "iterations": 10},
]


def test_parallel_coordinates_colour_bar_and_gaps_for_unsampled_parameters():
    fig = plot_parallel_coordinates(CONDITIONAL, AVG, "max")
    ax, bar = fig.axes
    assert bar.get_ylabel() == f"{AVG} (max: higher is better)"
    assert bar.get_ylim() == pytest.approx((0.30, 0.50))  # the scores' range
    axes = [t.get_text() for t in ax.get_xticklabels()]
    assert axes == ["csr.enabled", "csr.gamma1", "train.lr", AVG]
    gamma = axes.index("csr.gamma1")
    for rec in CONDITIONAL:
        xs = sorted(x for ln in _lines(ax, rec["trial_id"]) for x in ln.get_xdata())
        sampled = "csr.gamma1" in rec["config"]
        assert (gamma in xs) == sampled
        want = [0, 1, 2, 3] if rec["metric"] is not None else [0, 1, 2]
        assert xs == [i for i in want if sampled or i != gamma]
    # t2 is drawn as two pieces around the gap, not through a value on csr.gamma1
    pieces = [list(ln.get_xdata()) for ln in _lines(ax, "t2")]
    assert pieces == [[0], [2, 3]] and all(ln.get_linestyle() == "--"
                                           for ln in _lines(ax, "t2"))
    assert to_rgba(_lines(ax, "t4")[0].get_color()) == to_rgba("0.7")  # no score: grey
    viridis = colormaps["viridis"]  # bright = better, in both modes
    assert to_rgba(_lines(ax, "t3")[0].get_color()) == to_rgba(viridis(1.0))  # 0.50, best
    assert to_rgba(_lines(ax, "t2")[0].get_color()) == to_rgba(viridis(0.0))  # 0.30
    labels = " ".join(t.get_text() for t in ax.texts)
    assert "sampled by 2/4" in labels  # the conditional axis says how many sampled it

    low = plot_parallel_coordinates(CONDITIONAL, "loss/match", "min")
    assert low.axes[1].get_ylabel() == "loss/match (min: lower is better)"
    assert to_rgba(_lines(low.axes[0], "t2")[0].get_color()) == to_rgba(viridis(1.0))


# --------------------------------------------------------------------------- importances


def _conditional_study(n: int, seed: int = 0) -> optuna.Study:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(t: optuna.Trial) -> float:
        lr = t.suggest_float("train.lr", 1e-4, 1e-2, log=True)
        if t.suggest_categorical("csr.enabled", [True, False]):
            return 2.0 * t.suggest_float("csr.gamma1", 0.0, 1.0) + lr
        return 0.5 + lr

    study.optimize(objective, n_trials=n)
    return study


def test_importances_include_conditional_parameters_and_state_their_trials():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _conditional_study(24)
    sampled = sum("csr.gamma1" in t.params for t in study.trials)
    assert 2 <= sampled < 24  # conditional: not in every trial
    imp = param_importances(study)
    assert set(imp["importances"]) == {"train.lr", "csr.enabled", "csr.gamma1"}
    assert sum(imp["importances"].values()) == pytest.approx(1.0)
    assert imp["conditional"] == {
        "csr.gamma1": f"sampled in {sampled} of the 24 completed trials"}
    assert imp["n_trials"] == 24 and imp["left_out"] == {} and "caveat" not in imp
    json.loads(json.dumps(imp))  # what param_importances.json holds

    fig = plot_importances(imp, f"{AVG} (max)")
    ax = fig.axes[0]
    assert "from 24 trials" in ax.get_title()
    bars = {b.get_gid(): b for b in ax.patches}
    assert set(bars) == set(imp["importances"])
    assert bars["csr.gamma1"].get_hatch() == "//" and not bars["train.lr"].get_hatch()
    assert bars["csr.gamma1"].get_width() == pytest.approx(imp["importances"]["csr.gamma1"])


def test_importances_of_few_trials_carry_a_caveat_and_what_was_left_out():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    lr, on = D.FloatDistribution(1e-4, 1e-2, log=True), D.CategoricalDistribution([True, False])
    gamma, k = D.FloatDistribution(0.0, 1.0), D.IntDistribution(1, 3)
    for value, params in [(0.4, {"lr": 1e-4, "on": True, "gamma": 0.3, "k": 2}),
                          (0.3, {"lr": 1e-3, "on": False, "k": 2}),
                          (0.5, {"lr": 3e-3, "on": False, "k": 2}),
                          (0.2, {"lr": 5e-3, "on": False, "k": 2})]:
        dists = {"lr": lr, "on": on, "gamma": gamma, "k": k}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={p: dists[p] for p in params}, value=value))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 2e-3, "on": False, "k": 2}, distributions={"lr": lr, "on": on, "k": k},
        state=optuna.trial.TrialState.PRUNED, intermediate_values={10: 0.1}))
    imp = param_importances(study)
    assert imp["n_trials"] == 4 and imp["not_counted"] == {"pruned": 1}
    assert set(imp["importances"]) == {"lr", "on"}
    assert imp["left_out"] == {
        "gamma": "sampled in only 1 of the 4 completed trials; an importance needs 2 or more",
        "k": "the same value (2) in every completed trial that sampled it"}
    assert imp["caveat"].startswith(f"rests on only 4 completed trial(s) (fewer than "
                                    f"{MIN_TRIALS})")
    assert "1 pruned trial(s) not counted" in imp["caveat"]
    fig = plot_importances(imp, "m (max)")
    assert "from 4 trials" in fig.axes[0].get_title()
    foot = " ".join(t.get_text() for t in fig.texts)
    assert "caveat: rests on only 4" in foot and "left out: gamma" in foot

    none = param_importances(optuna.create_study())
    assert none["n_trials"] == 0 and none["importances"] == {} and "at least 2" in none["note"]
    assert "from 0 trials" in plot_importances(none, "m").axes[0].get_title()


# --------------------------------------------------------------------------- history, pruning


def test_optimisation_history_scores_and_best_so_far():
    records = [{"trial_id": "a", "metric": None, "status": "FAILED"},
               {"trial_id": "b", "metric": 0.30, "pruned": True},
               {"trial_id": "c", "metric": 0.45},
               {"trial_id": "d", "metric": 0.40, "pruned": True},
               {"trial_id": "e", "metric": 0.50}]
    ax = plot_optimisation_history(records, AVG, "max", "best").axes[0]
    best = _lines(ax, "best_so_far")[0]
    assert list(best.get_xdata()) == [1, 2, 3, 4, 5]
    ys = list(best.get_ydata())
    assert math.isnan(ys[0]) and ys[1:] == [0.30, 0.45, 0.45, 0.50]
    finished = _lines(ax, "trials:finished")[0]
    pruned = _lines(ax, "trials:pruned by ASHA")[0]
    assert list(finished.get_xdata()) == [3, 5] and list(finished.get_ydata()) == [0.45, 0.50]
    assert list(pruned.get_xdata()) == [2, 4]
    assert "1 without a score" in ax.get_title()
    assert "best evaluation during the run" in ax.get_ylabel()
    low = plot_optimisation_history(records, "loss/match", "min").axes[0]
    assert list(_lines(low, "best_so_far")[0].get_ydata())[1:] == [0.30, 0.30, 0.30, 0.30]


def test_asha_rungs_are_rays():
    from ray.tune.schedulers import ASHAScheduler

    for grace, rf, max_t in [(10, 3, 100), (10, 3, 90), (2, 2, 16), (5, 4, 19), (4, 3, 4 * 27)]:
        spec = SchedulerSpec(type="asha", grace_period=grace, reduction_factor=rf, max_t=max_t)
        ray_asha = ASHAScheduler(time_attr="iteration", metric="m", mode="max", max_t=max_t,
                                 grace_period=grace, reduction_factor=rf)
        ray_rungs = sorted(m for m, _ in ray_asha._brackets[0]._rungs)  # Ray's own state
        assert asha_rungs(spec) == ray_rungs, (grace, rf, max_t)
    assert asha_rungs(SchedulerSpec(type="none")) == []


def test_pruning_picture_curves_rungs_and_where_asha_stopped():
    records = [{"trial_id": "a", "pruned": False, "status": "FINISHED", "iterations": 90},
               {"trial_id": "b", "pruned": True, "status": "FINISHED", "iterations": 30},
               {"trial_id": "c", "pruned": False, "status": "FAILED", "iterations": 20},
               {"trial_id": "d", "pruned": False, "status": "FINISHED", "iterations": 0}]
    histories = {"a": [(10, 0.1), (20, 0.2), (30, 0.3), (60, 0.35), (90, 0.4)],
                 "b": [(10, 0.15), (20, 0.12), (30, 0.11)], "c": [(10, 0.05), (20, 0.07)]}
    ax = plot_pruning(records, histories, [10, 30, 90], AVG, "max").axes[0]
    assert list(_lines(ax, "a")[0].get_xdata()) == [10, 20, 30, 60, 90]
    assert list(_lines(ax, "b")[0].get_ydata()) == [0.15, 0.12, 0.11]
    stop = _lines(ax, "stop:b")
    assert len(stop) == 1 and (list(stop[0].get_xdata()), list(stop[0].get_ydata())) == (
        [30], [0.11])
    assert not _lines(ax, "stop:a") and not _lines(ax, "stop:c") and not _lines(ax, "d")
    rungs = sorted(ln.get_xdata()[0] for ln in ax.get_lines()
                   if str(ln.get_gid()).startswith("rung:"))
    assert rungs == [10, 30, 90]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["finished (1)", "pruned (1)", "failed (1)", "stopped by ASHA (1)",
                      "ASHA rungs: 10, 30, 90"]
    unknown = plot_pruning(records, histories, None, AVG, "max").axes[0]
    assert "ASHA rungs not known" in unknown.get_title()


# --------------------------------------------------------------------------- read back


def test_histories_from_mlflow_and_only_sampled_keys_read_back(tmp_path):
    uri, _ = prepare_store(None, "explain", tmp_path / "store")
    tracker = SweepTracker(tmp_path / "exp", "explain", uri)
    for tid, values in {"t1": [0.1, 0.3], "t2": [0.2]}.items():
        tracker.trial_run(tid, {"train.lr": 1e-3})
        for i, v in enumerate(values, 1):
            tracker.log_result(tid, {"iteration": 10 * i, AVG: v, "loss/total": 1.0})
    other = SweepTracker(tmp_path / "exp2", "explain", uri)  # another sweep, same experiment
    other.trial_run("x", {})
    other.log_result("x", {"iteration": 10, AVG: 0.9})
    got = trial_histories(tracker.client, tracker.parent_run_id, AVG)
    assert got == {"t1": [(10, 0.1), (20, 0.3)], "t2": [(10, 0.2)]}

    # read back from MLflow, a run's params are the whole config: the Optuna study tells
    # which of them the trial sampled
    study = _conditional_study(6, seed=3)
    runs = []
    for t in study.trials:
        params = {"csr.enabled": "False", "csr.gamma1": "0.5", "train.lr": "0.001",
                  **{k: str(v) for k, v in t.params.items()}}
        runs.append(RunInfo(run_id=str(t.number), trial_id=f"t{t.number}", variant=None,
                            seed=0, status="FINISHED", pruned=False, start_time=t.number,
                            params=params, metrics={f"best/{AVG}": t.value}, tags={}))
    data = ExperimentData(name="e", experiment_id="0", tracking_uri=uri, kind="sweep",
                          title="e", study=None, parent_run_id=None, parent_tags={},
                          runs=runs, client=None)
    records = sweep_records(data, AVG, "max", study)
    for rec, trial in zip(records, study.trials, strict=True):
        assert set(rec["config"]) == set(trial.params)
        assert rec["metric"] == trial.value
    assert any("csr.gamma1" not in r["config"] for r in records)
    assert any("csr.gamma1" in r["config"] for r in records)
    without = sweep_records(data, AVG, "max")  # no study: every varying param
    assert all("csr.gamma1" in r["config"] for r in without)
