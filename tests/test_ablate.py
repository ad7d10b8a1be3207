"""Ablation studies: every study file of search_spaces/ablations validated; one tiny study
(2 variants x 2 seeds) end to end with real Ray Tune (in-process, one session for the
module), a real MLflow store (sqlite, one for the module) and the tiny synthetic benchmark:
the table, skipping finished cells, extending with a seed."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import TINY
from mllm4wtal.cli import main
from mllm4wtal.config import leaf_fields, load_config, parse_override
from mllm4wtal.errors import UserError
from mllm4wtal.report.build import make_report
from mllm4wtal.report.collect import read_experiment
from mllm4wtal.report.render import to_csv, to_latex, to_markdown
from mllm4wtal.report.tables import build_table
from mllm4wtal.sweep.ablate import run_ablation
from mllm4wtal.sweep.study_file import StudyError, column_tious, load_study, parse_seeds
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "search_spaces" / "ablations").glob("*.yaml"))
TIOUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AVG = "map/avg_0.1-0.7"


# --------------------------------------------------------------------------- study files


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_papers_studies_are_there():
    names = {p.stem for p in STUDIES}
    assert {"components", "generic", "distillation", "strategy", "reconstructor", "prompt",
            "text_source"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_file_validates(path):
    study = load_study(path)
    assert len(study.variants) >= 2 and study.seeds == (0, 1, 2)
    # independently of the parser: every override is a real config key and every variant
    # config loads
    raw = yaml.safe_load(path.read_text())
    leaves = leaf_fields()
    common = _flat(raw.get("overrides") or {})
    assert set(common) <= set(leaves), set(common) - set(leaves)
    for name, spec in raw["variants"].items():
        ovr = _flat(spec.get("overrides") or {})
        assert set(ovr) <= set(leaves), (name, set(ovr) - set(leaves))
        load_config(raw["base"], {**common, **ovr})
        for column in spec.get("paper") or {}:
            assert column_tious(column, TIOUS), (name, column)
        assert spec.get("reference", raw.get("reference", name)) in raw["variants"]
    assert raw.get("reference", next(iter(raw["variants"]))) in raw["variants"]


def test_components_maps_table_3():
    study = load_study(ROOT / "search_spaces" / "ablations" / "components.yaml")
    assert [v.name for v in study.variants] == ["Baseline", "+KSM", "+CSR", "+KSM+CSR"]
    cfgs = {v.name: study.configs[v.name] for v in study.variants}
    assert [(c.ksm.enabled, c.csr.enabled) for c in cfgs.values()] == [
        (False, False), (True, False), (False, True), (True, True)]
    assert all(c.model.base == "delu" for c in cfgs.values())
    assert study.variant("+KSM+CSR").paper["map/avg_0.3-0.7"] == 39.2


def test_strategy_mapping():
    study = load_study(ROOT / "search_spaces" / "ablations" / "strategy.yaml")
    c = {v.name: study.configs[v.name] for v in study.variants}
    assert all(x.dpid.distill == "ternary_kd" for x in c.values())
    assert (c["Only F step"].loss.lambda1, c["Only F step"].loss.lambda2) == (1.5, 0.0)
    assert (c["Only B step"].loss.lambda1, c["Only B step"].loss.lambda2) == (0.0, 1.5)
    assert c["Alternating"].dpid.schedule == "alternate" and c["Joint"].dpid.schedule == "joint"


def test_parse_seeds():
    assert parse_seeds(3) == (0, 1, 2)
    assert parse_seeds("2") == (0, 1)
    assert parse_seeds("0, 4,7") == (0, 4, 7)
    assert parse_seeds([5, 1]) == (5, 1)
    for bad in (0, [], [1, 1], [-1], "a,b", True, 2.5):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def _doc(tmp_path: Path, **changes) -> dict:
    overrides = dict(parse_override(o) for o in TINY)
    overrides["text.cache_dir"] = str(tmp_path / "cache")
    doc = {"name": "tiny", "base": "synthetic", "overrides": overrides, "seeds": 2,
           "reference": "Baseline",
           "variants": {
               "Baseline": {"description": "no MLLM prior",
                            "overrides": {"ksm.enabled": False, "csr.enabled": False},
                            "paper": {"map/0.3": 56.5, "map/avg_0.3-0.7": 37.4}},
               "+KSM+CSR": {"overrides": {}, "paper": {"map/0.3": 57.3}}},
           "trials": {"max_concurrent": 2, "max_failures": 0},
           "resources": {"cpu": 1, "gpu": 0},
           "storage": {"path": str(tmp_path / "sweeps")}}
    doc.update(changes)
    return doc


def _write(tmp_path: Path, doc: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _variant(**spec):
    return {"Baseline": {"overrides": {"ksm.enabled": False}}, "Other": spec}


BAD = [
    ({"variantz": {}}, "variantz: unknown top-level key; did you mean 'variants'?"),
    ({"variants": {}}, "variants: missing or empty"),
    ({"variants": _variant(overrides={"ksm.enabeld": False})},
     "variants.Other.overrides.ksm.enabeld: unknown config key; did you mean 'ksm.enabled'?"),
    ({"variants": _variant(overrides={"ksm.enabled": "yes"})},
     "variants.Other.overrides: 'ksm.enabled' = 'yes' is invalid"),
    ({"variants": _variant(overrides={"train.seed": 3})},
     "variants.Other.overrides.train.seed: cannot be set per variant"),
    ({"variants": _variant(overrides={"data.synthetic.num_classes": 3})},
     "variants.Other.overrides.data.synthetic.num_classes: defines the dataset"),
    ({"variants": _variant(overrides={"ksm.enabled": False})},
     "variants.Other.overrides: the same as those of variant 'Baseline'"),
    ({"variants": _variant(overrides={"loc_head.enabled": False})},
     "variants.Other.overrides: inference.source = 'loc_head' but loc_head.enabled = false"),
    ({"variants": _variant(overrides={}, paper={"map/0.35": 40.0})},
     "variants.Other.paper.map/0.35: not a column of this study"),
    ({"variants": _variant(overrides={}, paper={"map/0.3": 140})},
     "variants.Other.paper.map/0.3: 140: the paper's figure in percent"),
    ({"variants": _variant(overrides={}, reference="Basline")},
     "variants.Other.reference: 'Basline' must name another variant; did you mean "
     "'Baseline'?"),
    ({"variants": _variant(overrides={}, overides={})},
     "variants.Other.overides: unknown key; did you mean 'overrides'?"),
    ({"reference": "Basline"}, "reference: 'Basline' is not a variant; did you mean "
                               "'Baseline'?"),
    ({"seeds": [1, 1]}, "seeds: seed 1 is listed twice"),
    ({"seeds": 0}, "seeds: 0 seeds; give at least 1"),
    ({"metric": "map/0.35"}, "metric: 'map/0.35' is not a column of this study"),
    ({"trials": {"num_samples": 4}}, "trials.num_samples: unknown key"),
    ({"paper": {"source": "x", "page": 3}}, "paper.page: unknown key"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_one_clear_message_per_mistake(tmp_path, changes, message):
    path = _write(tmp_path, _doc(tmp_path, **changes))
    with pytest.raises(UserError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert message in str(err.value), str(err.value)


def test_command_line_mistakes(tmp_path):
    path = _write(tmp_path, _doc(tmp_path))
    with pytest.raises(StudyError, match=r"variants.Baseline.overrides.ksm.enabled: is also "
                                         r"set with --set"):
        load_study(path, ["ksm.enabled=true"])
    with pytest.raises(StudyError, match="--set train.seed: seeds are set by"):
        load_study(path, ["train.seed=3"])
    with pytest.raises(StudyError, match="--seeds: 'x' is neither"):
        load_study(path, seeds="x")
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("base: synthetic\nvariants: {a: [\n")
    with pytest.raises(StudyError, match="broken.yaml: not valid YAML at line"):
        load_study(tmp_path / "broken.yaml")


def test_object_store_storage_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                     monkeypatch):
    """A study's runner writes its folder in place: an s3:// storage is refused in one line
    (before: a local folder named 's3:' once the MLflow server answered)."""
    path = _write(tmp_path, _doc(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    assert main(["ablate", str(path), "--storage", "s3://lab/ablations", "--tracking-uri",
                 "http://127.0.0.1:1", "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storage.path = 's3://lab/ablations'" in err[0], err
    assert "--storage /shared/ablations" in err[0]
    assert sorted(tmp_path.iterdir()) == before


def test_missing_description_store_is_refused_before_any_run(tmp_path, capsys):
    doc = _doc(tmp_path, variants={"templates": {"overrides": {"text.backend": "template"}},
                                   "mllm": {"overrides": {"text.backend": "file",
                                                          "text.store": "nope.jsonl"}}},
               reference="templates")
    path = _write(tmp_path, doc)
    assert main(["ablate", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "variants.mllm: text.backend = 'file' needs the description store" in err
    assert str(Path("nope.jsonl").absolute()) in err  # relative paths: from the cwd


def test_a_sweep_and_a_study_never_share_a_directory(tmp_path):
    from mllm4wtal.sweep import runner
    from mllm4wtal.sweep.ablate import claim_study

    storage = str(tmp_path / "sweeps")
    for name in ("tiny", "other"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "base": "synthetic", "storage": {"path": storage},
            "space": {"loss.lambda1": {"type": "float", "low": 0.5, "high": 2.0}}}))
    claim_study(load_study(_write(tmp_path, _doc(tmp_path))))
    with pytest.raises(UserError, match="holds the ablation study 'tiny'"):
        runner.claim(runner.load(tmp_path / "tiny.yaml", []), [])
    runner.claim(runner.load(tmp_path / "other.yaml", []), [])
    with pytest.raises(StudyError, match="holds the sweep 'other'"):
        claim_study(load_study(_write(tmp_path, _doc(tmp_path, name="other"), "s2.yaml")))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("ablate")
    path = _write(root, _doc(root))
    study = load_study(path)
    result = run_ablation(study, verbose=0)
    return path, study, result


def _children(result) -> list:
    client = mlflow.MlflowClient(result.tracking_uri)
    exp = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mllm4wtal.role") == "trial"]


def test_every_cell_is_one_tagged_mlflow_run(first_run):
    path, study, result = first_run
    assert not result.interrupted and not result.failed
    cells = {("Baseline", 0), ("+KSM+CSR", 0), ("Baseline", 1), ("+KSM+CSR", 1)}
    assert {tuple(c) for c in result.ran} == cells and result.skipped == []
    runs = _children(result)
    assert {(r.data.tags["variant"], int(r.data.tags["seed"])) for r in runs} == cells
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["study"] == "tiny"
        assert r.data.params["train.seed"] == r.data.tags["seed"]
        assert r.data.params["ksm.enabled"] == str(r.data.tags["variant"] != "Baseline")
        assert r.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert {"best.pt", "predictions.json"} <= {
            a.path for a in mlflow.MlflowClient(result.tracking_uri).list_artifacts(
                r.info.run_id)}


def test_table_shape_and_numbers_match_mlflow(first_run):
    path, study, result = first_run
    data = read_experiment(result.experiment, result.tracking_uri)
    assert data.kind == "ablation" and data.study["reference"] == "Baseline"
    table = build_table(data)
    assert [r.label for r in table.rows] == ["Baseline", "+KSM+CSR"]
    per_tiou = [f"map/{t}" for t in TIOUS]
    # test figures of each cell's best.pt (chosen on select), the choosing figure, optimism
    assert table.tested and table.at == "best"
    assert table.columns == per_tiou + [AVG, "map/avg_0.1-0.5", "map/avg_0.3-0.7",
                                        f"select/{AVG}", f"optimism/{AVG}"]
    assert table.paper_columns == ["map/0.3", "map/avg_0.3-0.7"]
    runs = _children(result)
    client = mlflow.MlflowClient(result.tracking_uri)
    for row in table.rows:
        assert row.n == 2 and row.seeds == [0, 1]
        mine = sorted((r for r in runs if r.data.tags["variant"] == row.label),
                      key=lambda r: int(r.data.tags["seed"]))
        chose = []
        for r in mine:  # best.pt: the evaluation on select with the best AVG
            history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, AVG)}
            chose.append(max(history.values()))
        for column in table.columns:
            if column == f"select/{AVG}":
                vals = chose
            elif column == f"optimism/{AVG}":
                vals = [c - r.data.metrics[f"test/{AVG}"] for c, r in zip(chose, mine, strict=True)]
            elif f"test/{column}" in mine[0].data.metrics:
                vals = [r.data.metrics[f"test/{column}"] for r in mine]
            else:  # an average training did not log: the mean of its tIoUs per run
                ts = column_tious(column, TIOUS)
                vals = [np.mean([r.data.metrics[f"test/map/{t}"] for t in ts]) for r in mine]
            cell = row.cells[column]
            assert cell.n == 2
            assert cell.mean == pytest.approx(np.mean(vals), abs=1e-12)
            assert cell.std == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    full, base = table.row("+KSM+CSR"), table.row("Baseline")
    assert base.diff is None and full.reference == "Baseline"
    assert full.diff.n == 2
    assert full.diff.mean == pytest.approx(full.cells[AVG].mean - base.cells[AVG].mean)
    x, y = full.values[AVG], base.values[AVG]
    if full.diff.p is not None:
        expected = stats.ttest_rel([x[0], x[1]], [y[0], y[1]]).pvalue
        assert full.diff.p == pytest.approx(expected)
    else:  # the two differences were equal: no t statistic
        assert math.isclose(x[0] - y[0], x[1] - y[1])
    last = build_table(data, at="final")  # the choosing figure at each run's last evaluation
    for row in last.rows:
        for seed, run in row.runs.items():
            assert row.values[f"select/{AVG}"][seed] == pytest.approx(run.metrics[AVG])
            assert row.values[AVG][seed] == pytest.approx(run.metrics[f"test/{AVG}"])
    md = to_markdown(table)
    assert "| Baseline | 2 |" in md and "| +KSM+CSR | 2 |" in md
    assert "0.3 paper" in md and "56.5" in md and "vs Baseline" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["variant"] for r in rows] == ["Baseline", "+KSM+CSR"]
    assert float(rows[0][f"{AVG} mean (%)"]) == pytest.approx(base.cells[AVG].mean * 100,
                                                              rel=1e-5)
    assert rows[0]["map/0.3 paper (%)"] == "56.5"
    tex = to_latex(table)
    assert "\\toprule" in tex and "+KSM+CSR & 2 &" in tex and "(56.5)" in tex


def test_report_writes_tables_and_plots_and_logs_them(first_run, tmp_path):
    path, study, result = first_run
    report = make_report(result.experiment, result.tracking_uri, tmp_path / "report",
                         n_videos=1)
    names = {p.name for p in report.files}
    assert {"table.md", "table.csv", "table.tex", "report.json", "map_curves.png"} <= names
    assert [n for n in names if n.startswith("timeline_")], report.notes
    for p in report.files:
        assert p.is_file() and p.stat().st_size > 0
    client = mlflow.MlflowClient(result.tracking_uri)
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {f"report/{n}" for n in names} <= logged


def test_rerun_skips_finished_cells(first_run):
    path, study, result = first_run
    before = len(_children(result))
    tune_runs = set(Path(result.experiment_dir).glob("run-*"))
    again = run_ablation(load_study(path), verbose=0)
    assert again.ran == [] and len(again.skipped) == 4 and not again.interrupted
    assert len(_children(result)) == before == 4
    assert set(Path(result.experiment_dir).glob("run-*")) == tune_runs  # Ray not even started


def test_changed_settings_are_refused_not_mixed(first_run):
    path, study, result = first_run
    with pytest.raises(StudyError, match=r"train.iterations: 4 there, 6 now"):
        run_ablation(load_study(path, ["train.iterations=6"]), verbose=0)


def test_a_new_seed_runs_only_the_new_cells(first_run, capsys):
    path, study, result = first_run
    assert main(["ablate", str(path), "--seeds", "3", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "2 cells run (0 failed), 4 already finished" in out
    runs = _children(result)
    cells = [(r.data.tags["variant"], int(r.data.tags["seed"])) for r in runs]
    assert len(cells) == 6 and len(set(cells)) == 6
    assert {c for c in cells if c[1] == 2} == {("Baseline", 2), ("+KSM+CSR", 2)}
    table = build_table(read_experiment(result.experiment, result.tracking_uri))
    assert [r.n for r in table.rows] == [3, 3]
    assert main(["report", "--experiment", "tiny", "--tracking-uri", result.tracking_uri,
                 "--videos", "0", "--no-log", "--out", str(path.parent / "cli-report")]) == 0
    out = capsys.readouterr().out
    assert "| Baseline | 3 |" in out and (path.parent / "cli-report" / "table.tex").is_file()
