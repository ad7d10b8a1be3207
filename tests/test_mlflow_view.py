"""The sweep in MLflow's UI: readable run names, the score each report logs (and goes on with
after a resume), outcome tags a filter finds, the experiment kind and the saved view of the
runs table, on a real sqlite store with stand-in trials; then the real thing in headless
Chromium (``jobs/ui/check_mlflow_ui.py``: a small sweep, ``mlflow server``, the page)."""

from __future__ import annotations

import json
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from conftest import TINY
from mllm4wtal.report.summary import FILES
from mllm4wtal.sweep.mlflow_store import prepare_store, search_runs
from mllm4wtal.sweep.mlflow_tags import (
    EXPERIMENT_KIND_TAG,
    KIND_ABLATION,
    KIND_TAG,
    KIND_TRAINING,
    PARENT_TAG,
    SAVED_VIEW_TAG_PREFIX,
    SEED_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
)
from mllm4wtal.sweep.mlflow_view import (
    cell_run_name,
    compact,
    ray_trial_number,
    runs_view,
    short_names,
    trial_run_name,
)
from mllm4wtal.sweep.tracker import PARENT_RUN_FILE, SweepTracker
from mllm4wtal.sweep.tune_callback import MlflowTuneCallback

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "jobs" / "ui" / "check_mlflow_ui.py"
CHROMIUM = Path("/usr/bin/chromium")
AVG = "map/avg_0.1-0.7"
SCORE = f"best/{AVG}"
TOTAL = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, _ = prepare_store(None, "first", tmp_path_factory.mktemp("store"))
    return uri


def trial(trial_id: str, number: int, last: int | None = None, **config) -> SimpleNamespace:
    """A stand-in for a Ray trial: what the callback reads of one."""
    return SimpleNamespace(trial_id=trial_id, config=config,
                           experiment_tag=f"{number}_" + ",".join(config),
                           last_result={"iteration": last} if last else {})


def callback(tracker: SweepTracker, **kw) -> MlflowTuneCallback:
    kw = {"metric": AVG, "mode": "max", "score": "best", "strict": True, **kw}
    return MlflowTuneCallback(tracker, dict, TOTAL, **kw)


def report(cb: MlflowTuneCallback, t: SimpleNamespace, *points: tuple[int, float]) -> None:
    for step, value in points:
        cb.on_trial_result(0, [], t, {"iteration": step, AVG: value})


def history(tracker: SweepTracker, trial_id: str, key: str = SCORE) -> list[tuple[int, float]]:
    got = tracker.client.get_metric_history(tracker.child_run_id(trial_id), key)
    return sorted((m.step, m.value) for m in got)


def test_run_names():
    assert trial_run_name(3, {"loss.lambda1": 1.2, "csr.mask_ratio": 1 / 3}) == \
        "trial 3: lambda1=1.2 mask_ratio=0.333"
    assert trial_run_name(1, {"train.lr": 0.000512, "csr.contrast": True,
                              "model.base": "delu"}) == \
        "trial 1: lr=0.000512 contrast=true base=delu"
    assert trial_run_name(2, {}) == "trial 2"
    # two keys ending alike keep enough of their path to stay apart
    assert short_names(["ksm.dim", "csr.dim", "train.lr"]) == {
        "ksm.dim": "ksm.dim", "csr.dim": "csr.dim", "train.lr": "lr"}
    assert trial_run_name(4, {"train": {"lr": 0.1}}) == "trial 4: lr=0.1"  # nested config
    assert compact("x" * 40) == "x" * 27 + "..." and compact([1, 2]) == "[1, 2]"
    assert cell_run_name("no-csr", 2) == "no-csr seed 2"
    # Ray's count of a trial heads its experiment tag (a searcher's: from 1; a grid's: from 0)
    assert ray_trial_number(SimpleNamespace(experiment_tag="12_loss.lambda1=1.2")) == 12
    assert ray_trial_number(SimpleNamespace(experiment_tag="0")) == 0
    assert ray_trial_number(SimpleNamespace(experiment_tag="")) is None
    assert ray_trial_number(SimpleNamespace()) is None


def test_names_scores_outcomes_and_filters(store, tmp_path):
    tracker = SweepTracker(tmp_path / "exp", "view", store, sweep_name="s1",
                           tags={SWEEP_TAG: "s1"})
    cb = callback(tracker)
    done = trial("t1", 3, last=TOTAL, **{"loss.lambda1": 1.2, "csr.mask_ratio": 1 / 3})
    pruned = trial("t2", 4, last=2, **{"loss.lambda1": 0.5, "csr.mask_ratio": 0.2})
    failed = trial("t3", 5, **{"loss.lambda1": 2.0, "csr.mask_ratio": 0.4})
    killed = trial("t4", 6, **{"loss.lambda1": 3.0, "csr.mask_ratio": 0.5})
    for t in (done, pruned, failed, killed):
        cb.on_trial_start(0, [], t)
    report(cb, done, (2, 0.30), (4, 0.20), (6, 0.25))
    report(cb, pruned, (2, 0.10))
    report(cb, killed, (2, 0.40))
    cb.on_trial_complete(0, [], done)
    cb.on_trial_complete(0, [], pruned)
    cb.on_trial_error(0, [], failed)
    tracker.finish("FINISHED")  # the sweep ends with t4 still running

    runs = {t.trial_id: tracker.client.get_run(tracker.child_run_id(t.trial_id))
            for t in (done, pruned, failed, killed)}
    assert runs["t1"].info.run_name == "trial 3: lambda1=1.2 mask_ratio=0.333"
    assert runs["t4"].info.run_name == "trial 6: lambda1=3 mask_ratio=0.5"
    assert runs["t1"].data.tags["trial_id"] == "t1"
    assert runs["t1"].data.tags["trial_number"] == "3"
    # the score so far at every report: the best yet (max), not the last
    assert history(tracker, "t1") == [(2, 0.30), (4, 0.30), (6, 0.30)]
    assert history(tracker, "t1", AVG) == [(2, 0.30), (4, 0.20), (6, 0.25)]
    assert runs["t1"].data.metrics[SCORE] == 0.30
    # how each ended, as a tag a filter finds
    assert {t: r.data.tags["outcome"] for t, r in runs.items()} == {
        "t1": "finished", "t2": "pruned", "t3": "failed", "t4": "killed"}
    assert runs["t2"].data.tags["pruned"] == "true"
    assert runs["t2"].data.tags["pruned_at_iteration"] == "2"
    mine = f"tags.`{PARENT_TAG}` = '{tracker.parent_run_id}'"
    for outcome, trial_id in [("pruned", "t2"), ("failed", "t3"), ("killed", "t4"),
                              ("finished", "t1")]:
        hits = search_runs(tracker.client, tracker.experiment_id,
                           f"tags.outcome = '{outcome}' and {mine}")
        assert [r.data.tags["trial_id"] for r in hits] == [trial_id]
    hits = search_runs(tracker.client, tracker.experiment_id, "tags.outcome != 'finished'")
    assert {r.data.tags["trial_id"] for r in hits} == {"t2", "t3", "t4"}


@pytest.mark.parametrize("score, mode, values, expected", [
    ("best", "max", [0.5, 0.2, 0.4], [0.5, 0.5, 0.5]),
    ("best", "min", [0.5, 0.2, 0.4], [0.5, 0.2, 0.2]),
    ("last", "max", [0.5, 0.2, 0.4], [0.5, 0.2, 0.4]),
    ("best", "max", [0.3, math.nan, 0.2], [0.3, 0.3, 0.3]),  # NaN is never best
])
def test_score_rules(store, tmp_path, score, mode, values, expected):
    tracker = SweepTracker(tmp_path / "exp", "rules", store)
    cb = callback(tracker, score=score, mode=mode)
    t = trial("t1", 1, **{"loss.lambda1": 1.0})
    cb.on_trial_start(0, [], t)
    report(cb, t, *[(2 * (i + 1), v) for i, v in enumerate(values)])
    key = f"{score}/{AVG}"
    assert history(tracker, "t1", key) == [(2 * (i + 1), v) for i, v in enumerate(expected)]


def test_resumed_trial_goes_on_from_its_score(store, tmp_path):
    exp = tmp_path / "exp"
    tracker = SweepTracker(exp, "resume", store)
    pickled = pickle.dumps(callback(tracker))  # what Ray keeps of it, before any trial
    cb = pickle.loads(pickled)
    t = trial("t1", 1, **{"loss.lambda1": 1.0})
    cb.on_trial_start(0, [], t)
    report(cb, t, (2, 0.5), (4, 0.2))
    # the driver dies; a resumed sweep re-attaches, the trial restarts from its checkpoint
    # at iteration 2 (iteration 4 again: already logged, skipped) and goes on
    again = pickle.loads(pickled)
    again.on_trial_start(0, [], t)
    assert again.tracker.resumed
    report(again, t, (4, 0.45), (6, 0.3))
    assert history(again.tracker, "t1") == [(2, 0.5), (4, 0.5), (6, 0.5)]
    assert history(again.tracker, "t1", AVG) == [(2, 0.5), (4, 0.2), (6, 0.3)]

    # a run an older version named by its trial id gets its readable name when re-attached
    again.tracker.trial_run("t9", {"loss.lambda1": 2.0})
    assert again.tracker.client.get_run(again.tracker.child_run_id("t9")).info.run_name == "t9"
    again.on_trial_start(0, [], trial("t9", 9, **{"loss.lambda1": 2.0}))
    run = again.tracker.client.get_run(again.tracker.child_run_id("t9"))
    assert run.info.run_name == "trial 9: lambda1=2"

    # a callback an older version pickled (no score settings) still tracks, with no score
    old = pickle.loads(pickled)
    state = {k: v for k, v in old.__dict__.items()
             if k not in ("metric", "mode", "score", "view_params", "_score", "_seeded")}
    older = MlflowTuneCallback.__new__(MlflowTuneCallback)
    older.__setstate__(state)
    older.tracker = again.tracker
    u = trial("t10", 10, **{"loss.lambda1": 3.0})
    older.on_trial_start(0, [], u)
    report(older, u, (2, 0.1))
    assert history(older.tracker, "t10", AVG) == [(2, 0.1)]
    assert history(older.tracker, "t10") == []


def test_experiment_kind_new_and_old(tmp_path):
    uri, new_id = prepare_store(None, "fresh", tmp_path)
    client = mlflow.MlflowClient(uri)
    assert client.get_experiment(new_id).tags[EXPERIMENT_KIND_TAG] == KIND_TRAINING
    # experiments made before the tag existed (or made GenAI by someone) get it on resume
    plain = client.create_experiment("plain")
    genai = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name, exp_id in (("plain", plain), ("genai", genai)):
        assert prepare_store(uri, name, tmp_path)[1] == exp_id
        assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == KIND_TRAINING


def test_saved_runs_view(store, tmp_path):
    tracker = SweepTracker(tmp_path / "exp", "views", store, sweep_name="s2",
                           tags={SWEEP_TAG: "s2"})
    cb = callback(tracker, mode="max", view_params=["loss.lambda1", "csr.mask_ratio"])
    # no view saved yet: the address opens the runs, without naming a view
    assert tracker.runs_url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}"
                                "/runs?workflowType=machine_learning")
    cb.setup()
    key = SAVED_VIEW_TAG_PREFIX + tracker.parent_run_id
    saved = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[key])
    assert saved["name"] == f"sweep s2: trials by {SCORE}"
    assert isinstance(saved["createdAt"], int) and saved["updatedAt"] >= saved["createdAt"]
    state = json.loads(saved["state"])
    assert state["orderByKey"] == f"metrics.`{SCORE}`" and state["orderByAsc"] is False
    columns = [f"metrics.`{SCORE}`", f"metrics.`test/{AVG}`", "tags.`outcome`",
               "params.`loss.lambda1`", "params.`csr.mask_ratio`"]
    assert state["selectedColumns"] == columns
    assert state["columnOrder"] == ["attributes.`Run Name`", *columns]
    assert state["searchFilter"] == "tags.`sweep` = 's2'"
    # the view's filter is valid MLflow syntax and finds this sweep's runs
    t = trial("t1", 1, **{"loss.lambda1": 1.0, "csr.mask_ratio": 0.2})
    cb.on_trial_start(0, [], t)
    hits = search_runs(tracker.client, tracker.experiment_id, state["searchFilter"])
    assert {r.info.run_id for r in hits} == {tracker.parent_run_id,
                                             tracker.child_run_id("t1")}
    assert tracker.runs_url == (
        f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?"
        f"viewStateShareKey={tracker.parent_run_id}&workflowType=machine_learning")
    # saved again (a resume): same view, first creation time kept
    cb.setup()
    again = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[key])
    assert again["createdAt"] == saved["createdAt"]

    # a study: its cells by variant and seed, lowest first for a min metric
    study = runs_view("v1", "abl", {STUDY_TAG: "abl", KIND_TAG: KIND_ABLATION}, "best/x",
                      "min", ["test/x", "best/x"])
    assert study.columns == ("metrics.`best/x`", "metrics.`test/x`", "tags.`outcome`",
                             f"tags.`{VARIANT_TAG}`", f"tags.`{SEED_TAG}`")
    assert study.ascending and study.search_filter == "tags.`study` = 'abl'"
    cells = SweepTracker(tmp_path / "study", "views", store, sweep_name="abl",
                         tags={STUDY_TAG: "abl", KIND_TAG: KIND_ABLATION})
    cell_cb = callback(cells, tags_for=lambda config: {VARIANT_TAG: config["cell"]["variant"],
                                                       SEED_TAG: config["cell"]["seed"]})
    cell = SimpleNamespace(trial_id="c1", config={"cell": {"variant": "no-csr", "seed": 2}},
                           experiment_tag="0", last_result={})
    cell_cb.on_trial_start(0, [], cell)
    assert cells.client.get_run(cells.child_run_id("c1")).info.run_name == "no-csr seed 2"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (Debian "
                    "package chromium; .ci/run installs it)")
def test_mlflow_ui_in_chromium(tmp_path):
    """A small real sweep, `mlflow server` on 127.0.0.1, its runs view in headless Chromium:
    the runs table, the trials by name, the score first and best first; the summary on the
    parent run."""
    sets = [x for o in TINY if not o.startswith(("train.iterations", "train.eval_interval"))
            for x in ("--set", o)]
    shot, out = tmp_path / "runs.png", tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(CHECK), "--workdir", str(tmp_path / "sweeps"),
                           "--report", str(out), "--screenshot", str(shot), *sets,
                           "--set", f"text.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["failed"] == []
    assert len(seen["passed"]) == 7
    page = seen["page"]
    assert "Runs" in page["heading"] and "workflowType=machine_learning" in page["href"]
    data = [c for c in page["columns"] if c.startswith(("metrics.", "params.", "tags."))]
    assert data[0] == f"metrics.`{SCORE}`"
    names = [r["attributes.`Run Name`"].splitlines()[-1] for r in page["rows"]]
    assert sum(n.startswith("trial ") for n in names) == 6 and "quickstart" in names
    assert png_size(shot) == (1600, 900)
    # the summary lies on the parent run (report.summary logs it there)
    record = json.loads((tmp_path / "sweeps" / "quickstart" / PARENT_RUN_FILE).read_text())
    client = mlflow.MlflowClient(record["tracking_uri"])
    assert set(FILES) <= {a.path for a in client.list_artifacts(record["run_id"])}
