"""Reports: the statistics and table formats on hand-made numbers, and the report of a real
sweep (Ray Tune in-process, one session; MLflow sqlite, one store for the module; the tiny
synthetic benchmark)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import yaml
from conftest import TINY
from mllm4wtal.config import parse_override
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import start_ray
from mllm4wtal.report.build import make_report
from mllm4wtal.report.collect import read_experiment
from mllm4wtal.report.render import to_csv, to_latex, to_markdown
from mllm4wtal.report.stats import paired_ttest, summarize
from mllm4wtal.report.summary import write_sweep_summary
from mllm4wtal.report.sweep_data import (
    stored_study,
    sweep_records,
    sweep_rungs,
    sweep_study,
)
from mllm4wtal.report.tables import Row, Table, column_label, column_value
from mllm4wtal.sweep import runner
from scipy import stats

TIOUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AVG = "map/avg_0.1-0.7"


# --------------------------------------------------------------------------- statistics


def test_summary_is_mean_and_sample_std():
    s = summarize([0.1, 0.2, 0.6])
    assert s.n == 3 and s.mean == pytest.approx(0.3)
    assert s.std == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    one = summarize([0.4, float("nan")])
    assert (one.mean, one.std, one.n) == (0.4, None, 1)
    assert summarize([]).mean is None


def test_paired_t_test_over_shared_seeds():
    x = {0: 0.40, 1: 0.45, 2: 0.43, 3: 0.50}
    y = {0: 0.38, 1: 0.41, 2: 0.42, 7: 0.10}  # seed 3 / 7 unpaired: left out
    t = paired_ttest(x, y)
    d = np.array([0.02, 0.04, 0.01])
    assert t.n == 3 and t.seeds == (0, 1, 2)
    assert t.mean == pytest.approx(d.mean()) and t.std == pytest.approx(d.std(ddof=1))
    by_hand = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert t.t == pytest.approx(by_hand)
    assert t.p == pytest.approx(2 * stats.t.sf(abs(by_hand), df=2))
    assert t.p == pytest.approx(stats.ttest_rel([0.40, 0.45, 0.43], [0.38, 0.41, 0.42]).pvalue)


def test_no_p_value_without_two_pairs_or_spread():
    one = paired_ttest({0: 0.5, 1: 0.6}, {1: 0.4})
    assert one.n == 1 and one.p is None and one.mean == pytest.approx(0.2)
    assert "1 shared seed" in one.note
    same = paired_ttest({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})
    assert same.p is None and same.std == 0.0 and "identical" in same.note
    assert paired_ttest({0: 0.5}, {1: 0.5}).note == "no shared seeds"


def test_columns_and_derived_averages():
    values = {f"map/{t}": t for t in TIOUS} | {AVG: 0.4}
    assert column_value(AVG, values, TIOUS) == 0.4  # logged: as logged
    assert column_value("map/avg_0.3-0.7", values, TIOUS) == pytest.approx(0.5)
    assert column_value("map/avg_0.1-0.5", {"map/0.1": 0.2}, TIOUS) is None
    assert column_label("map/avg_0.3-0.7") == "AVG 0.3-0.7" and column_label("map/0.5") == "0.5"


def _table() -> Table:
    cols = ["map/0.5", AVG]
    ref = Row(label="Base_line", description="x|y", reference=None, runs={0: None, 1: None},
              values={"map/0.5": {0: 0.30, 1: 0.34}, AVG: {0: 0.20, 1: 0.22}},
              cells={"map/0.5": summarize([0.30, 0.34]), AVG: summarize([0.20, 0.22])},
              paper={"map/0.5": 40.5})
    new = Row(label="+KSM & more", description="", reference="Base_line", runs={0: None},
              values={"map/0.5": {0: 0.40}, AVG: {0: 0.25}},
              cells={"map/0.5": summarize([0.40]), AVG: summarize([0.25])}, paper={})
    new.diff = paired_ttest(new.values[AVG], ref.values[AVG])
    return Table(experiment="e", title="demo", kind="ablation", columns=cols, metric=AVG,
                 at="final", rows=[ref, new], paper={"source": "p.txt", "table": "3"})


def test_formats():
    table = _table()
    md = to_markdown(table)
    assert "| Variant | n | 0.5 | 0.5 paper | AVG 0.1-0.7 | Δ AVG 0.1-0.7 | p (paired t) |" in md
    assert "| Base_line | 2 | 32.0 ± 2.8 | 40.5 | 21.0 ± 1.4 | (reference) |  |" in md
    assert "| +KSM & more | 1 | 40.0 | – | 25.0 | +5.0 vs Base_line | n/a: 1 shared seed" in md
    assert "x\\|y" in md and "Paper: p.txt, table 3" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["map/0.5 mean (%)"] == "32" and rows[0]["map/0.5 paper (%)"] == "40.5"
    assert rows[1]["delta mean (%)"] == "5" and rows[1]["p"] == ""
    assert rows[1]["note"].startswith("1 shared seed")
    tex = to_latex(table)
    assert "Base\\_line & 2 & $32.0 \\pm 2.8$ {\\color{gray}(40.5)}" in tex
    assert "+KSM \\& more & 1 & $40.0$" in tex and "$+5.0$ & n/a" in tex


# --------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    overrides = dict(parse_override(o) for o in TINY)
    overrides.update({"text.cache_dir": str(root / "cache")})
    doc = {"name": "sw", "base": "synthetic", "overrides": overrides,
           "metric": "loss/match", "mode": "min",
           "space": {"loss.mu1": {"type": "float", "low": 0.1, "high": 5.0, "log": True},
                     "ksm.prompt": {"type": "categorical",
                                    "choices": ["learnable", "handcraft"]}},
           "points_to_evaluate": [{"loss.mu1": 1.0, "ksm.prompt": "learnable"}],
           "searcher": {"sampler": "random", "seed": 1},
           "scheduler": {"type": "none"},
           "trials": {"num_samples": 2, "max_concurrent": 2},
           "resources": {"cpu": 1, "gpu": 0},
           "storage": {"path": str(root / "sweeps")}}
    path = root / "sw.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    start_ray(num_cpus=2)
    try:
        space = runner.load(path, [])
        runner.claim(space, [])
        result = runner.run_sweep(space, verbose=0)
    finally:
        ray.shutdown()
    assert not result.interrupted
    write_sweep_summary(space, result)  # as `mllm4wtal sweep` does: tags the sweep's metric
    return root, result


def test_report_of_a_sweep(sweep):
    root, result = sweep
    report = make_report("sw", result.tracking_uri, root / "out", n_videos=1)
    table = report.table
    assert report.data.kind == "sweep" and table.kind == "sweep"
    records = {r["trial_id"]: r for r in result.records}
    assert len(table.rows) == 2 and all(r.n == 1 for r in table.rows)
    first = min(report.data.runs, key=lambda r: r.start_time)
    assert table.rows[0].label == first.trial_id and table.rows[0].diff is None
    for row in table.rows[1:]:
        assert row.reference == first.trial_id
        assert row.diff.p is None and "1 shared seed" in row.diff.note
        run = next(iter(row.runs.values()))
        assert row.cells[AVG].mean == pytest.approx(run.metrics[AVG])
        assert f"loss.mu1={run.params['loss.mu1']}" in row.description
        assert run.trial_id in records
    names = {p.name for p in report.files}
    assert {"table.md", "table.csv", "table.tex", "map_curves.png", "parallel_coordinates.png",
            "param_importances.json", "param_importances.png", "optimisation_history.png",
            "pruning.png"} <= names
    assert any(n.startswith("timeline_") for n in names)
    imp = json.loads((root / "out" / "param_importances.json").read_text())
    assert imp["metric"] == "loss/match (min)"
    assert set(imp["importances"]) <= {"loss.mu1", "ksm.prompt"} and imp["n_trials"] == 2
    client = mlflow.MlflowClient(result.tracking_uri)
    parent = json.loads((result.experiment_dir / "mlflow_parent_run.json").read_text())["run_id"]
    assert report.logged_to == parent
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/table.md", "report/parallel_coordinates.png"} <= logged


def test_importances_without_the_optuna_study(sweep):
    root, result = sweep
    data = read_experiment("sw", result.tracking_uri)
    stored = stored_study(data)  # the sweep's own study: which keys each trial sampled,
    for run in data.runs:        # found by the values MLflow holds
        assert any(all(run.params[k] == str(v) for k, v in t.params.items())
                   for t in stored.trials)
    assert sweep_records(data, "loss/match", "min", stored) == sweep_records(
        data, "loss/match", "min")  # no conditional parameter: every varying key sampled
    assert sweep_rungs(data) == []  # read from the sweep's copy of its file: no ASHA
    data.parent_tags.pop("sweep_dir")  # e.g. a remote sweep: the study is not reachable
    assert stored_study(data) is None and sweep_rungs(data) is None
    records = sweep_records(data, "loss/match", "min")
    assert len(records) == 2 and all(r["metric"] is not None for r in records)
    study = sweep_study(data, records, "min")
    assert len(study.trials) == 2 and study.direction.name == "MINIMIZE"
    assert {t.value for t in study.trials} == {r["metric"] for r in records}


def test_clear_errors(sweep, tmp_path):
    root, result = sweep
    with pytest.raises(UserError, match=r"has no experiment 'sww'; did you mean 'sw'\?"):
        read_experiment("sww", result.tracking_uri)
    with pytest.raises(UserError, match="no MLflow store at"):
        read_experiment("sw", str(tmp_path / "absent.db"))
    assert Path(result.tracking_uri.removeprefix("sqlite:///")).is_file()
