"""Search-space files: the shipped ones load, every malformed case fails with one message
naming the file and the key, and the Optuna glue is deterministic and honours conditionals."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mllm4wtal.config import from_flat, load_config, to_flat
from mllm4wtal.errors import UserError
from mllm4wtal.sweep.spaces.metrics import reported_metrics
from mllm4wtal.sweep.spaces.optuna_space import Param, make_sampler, suggest
from mllm4wtal.sweep.spaces.search_space import SearchSpaceError, load_search_space

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)

VALID: dict = {
    "name": "t",
    "base": "synthetic",
    "overrides": {"train.iterations": 300, "train.eval_interval": 50, "train.device": "cpu"},
    "metric": "map/avg_0.1-0.7",
    "mode": "max",
    "space": {
        "loss.lambda1": {"type": "float", "low": 0.1, "high": 5.0, "log": True},
        "ksm.topk": {"type": "int", "low": 4, "high": 16, "step": 2},
        "csr.reconstructor": {"type": "categorical", "choices": ["transformer", "gru"]},
        "csr.contrast": {"type": "categorical", "choices": [True, False]},
        "csr.gamma1": {"type": "float", "low": 0.0, "high": 1.0,
                       "when": {"csr.contrast": True}},
    },
    "points_to_evaluate": [{"loss.lambda1": 1.5, "ksm.topk": 8,
                            "csr.reconstructor": "transformer", "csr.contrast": False}],
    "searcher": {"sampler": "tpe", "seed": 0, "n_startup_trials": 4},
    "scheduler": {"type": "asha", "grace_period": 50, "reduction_factor": 3, "max_t": 300},
    "trials": {"num_samples": 8, "max_concurrent": 2, "max_failures": 1},
    "resources": {"cpu": 1, "gpu": 0},
    "mlflow": {"tracking_uri": None, "experiment": None},
    "storage": {"path": None},
}


def write(tmp_path: Path, doc: dict | str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def expect_error(path: Path, key: str, fragment: str, overrides: list[str] | None = None
                 ) -> str:
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path, overrides or [])
    msg = str(info.value)
    assert isinstance(info.value, UserError)
    assert msg.startswith(f"{path}: "), msg
    assert key in msg, msg
    assert fragment in msg, msg
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_exist():
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "thumos14_dpid.yaml",
                                          "activitynet12_dpid.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_file_loads(path):
    s = load_search_space(path)
    assert s.name == path.stem
    assert s.metric in reported_metrics(s.base_config)
    assert s.points_to_evaluate, "the paper defaults run first"
    for point in s.points_to_evaluate:
        cfg = trial_config(s, point)
        assert cfg == s.base_config, "the presets hold the paper defaults"
    assert s.scheduler.type == "asha" and s.scheduler.grace_period < s.scheduler.max_t
    assert s.trials.num_samples >= len(s.points_to_evaluate)
    assert Path(s.storage_path).is_absolute()


@pytest.mark.parametrize("stem,lr", [("thumos14_dpid", 5e-4), ("activitynet12_dpid", 3e-5)])
def test_paper_spaces(stem, lr):
    s = load_search_space(REPO / "search_spaces" / f"{stem}.yaml")
    assert set(s.space) == {"loss.lambda1", "loss.lambda2", "loss.mu1", "csr.mask_ratio",
                            "ksm.topk", "train.lr"}
    assert s.points_to_evaluate[0] == {"loss.lambda1": 1.5, "loss.lambda2": 1.5,
                                       "loss.mu1": 1.0, "csr.mask_ratio": 1 / 3,
                                       "ksm.topk": 8, "train.lr": lr}
    assert 0.25 <= s.resources.gpu <= 0.5
    assert s.space["train.lr"].log


def test_quickstart_is_small_and_on_cpu():
    s = load_search_space(REPO / "search_spaces" / "quickstart.yaml")
    cfg = s.base_config
    assert cfg.data.format == "synthetic" and cfg.train.device == "cpu"
    assert s.resources.gpu == 0 and s.resources.cpu == 1
    assert cfg.train.iterations <= 400 and 6 <= s.trials.num_samples <= 8
    assert s.trials.max_concurrent == 2
    assert s.scheduler.grace_period <= cfg.train.iterations // 2  # the first rung


# --------------------------------------------------------------------------- valid details


def test_valid_file_and_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_search_space(write(tmp_path, VALID))
    assert [p.key for p in s.params] == list(VALID["space"])
    assert s.space["csr.gamma1"].when == (("csr.contrast", (True,)),)
    assert s.has_conditionals
    assert (s.scheduler.grace_period, s.scheduler.reduction_factor, s.scheduler.max_t) == \
        (50, 3, 300)
    assert s.storage_path == str(tmp_path / "sweeps")
    assert s.experiment_dir == str(tmp_path / "sweeps" / "t")
    assert s.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'sweeps' / 'mlflow.db'}"
    assert s.mlflow.experiment == "t"


def test_defaults_of_a_minimal_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = {"base": "thumos14", "space": {"loss.mu1": {"type": "float", "low": 0.5,
                                                      "high": 2.0}}}
    s = load_search_space(write(tmp_path, doc, "my_sweep.yaml"))
    assert s.name == "my_sweep" and s.metric == "map/avg_0.1-0.7" and s.mode == "max"
    assert s.scheduler.type == "none"
    assert s.searcher.sampler == "tpe" and s.searcher.seed == 0
    assert s.trials.num_samples == 10 and s.resources.cpu == 1 and s.resources.gpu == 0


def test_loss_metric_defaults_to_min(tmp_path):
    doc = {"base": "synthetic", "metric": "loss/rec",
           "space": {"loss.mu1": {"type": "float", "low": 0.5, "high": 2.0}}}
    assert load_search_space(write(tmp_path, doc)).mode == "min"


def test_relative_base_resolves_against_the_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mine.yaml").write_text("base: synthetic\ntrain:\n  seed: 7\n")
    (tmp_path / "spaces").mkdir()
    doc = {**copy.deepcopy(VALID), "base": "../cfg/mine.yaml"}
    path = write(tmp_path / "spaces", doc)
    monkeypatch.chdir(tmp_path / "cfg")  # not the file's folder
    assert load_search_space(path).base_config.train.seed == 7


def test_set_overrides_apply_to_base(tmp_path):
    s = load_search_space(write(tmp_path, VALID), ["train.seed=3", "csr.dim=32"])
    assert s.base_config.train.seed == 3 and s.base_config.csr.dim == 32
    assert s.overrides["train.seed"] == 3 and s.overrides["train.iterations"] == 300


def test_scientific_notation_is_a_number(tmp_path):
    doc = copy.deepcopy(VALID)
    text = yaml.safe_dump(doc, sort_keys=False)
    text = text.replace("space:\n", "space:\n  train.lr: {type: float, low: 1e-4, high: 2e-3, "
                                    "log: true}\n", 1)
    s = load_search_space(write(tmp_path, text))
    assert s.space["train.lr"].low == 1e-4 and s.space["train.lr"].high == 2e-3


def test_remote_storage_keeps_uri(tmp_path):
    doc = {**copy.deepcopy(VALID), "storage": {"path": "s3://bucket/sweeps/"},
           "mlflow": {"tracking_uri": "http://mlflow:5000", "experiment": "e"}}
    s = load_search_space(write(tmp_path, doc))
    assert s.storage_path == "s3://bucket/sweeps" and s.experiment_dir == "s3://bucket/sweeps/t"
    assert s.mlflow.tracking_uri == "http://mlflow:5000" and s.mlflow.experiment == "e"


# --------------------------------------------------------------------------- malformed files


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.yaml", "nope.yaml", "not found")


def test_directory(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    expect_error(tmp_path / "d.yaml", "d.yaml", "not a file")


@pytest.mark.parametrize("text,fragment", [
    ("base: [unclosed\n", "not valid YAML at line"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("", "is empty"),
    ("base: synthetic\nbase: thumos14\n", "line 2: duplicate key 'base'"),
], ids=["syntax", "list", "empty", "duplicate"])
def test_not_yaml_or_not_mapping(tmp_path, text, fragment):
    expect_error(write(tmp_path, text), "x.yaml", fragment)


def _set(doc: dict, path: list, value) -> None:
    node = doc
    for k in path[:-1]:
        node = node[k]
    if value is DEL:
        del node[path[-1]]
    else:
        node[path[-1]] = value


DEL = object()
SP = "space"
PT = ["points_to_evaluate", 0]


def _rename(section: str, old: str, new: str):
    def edit(doc: dict) -> None:
        doc[section] = {(new if k == old else k): v for k, v in doc[section].items()}
    return edit


def _edits(*edits):
    def edit(doc: dict) -> None:
        for path, value in edits:
            _set(doc, path, value)
    return edit


BAD = [
    # id, edit, key named, fragment
    ("top-level", _edits((["serach"], 1)), "serach", "unknown top-level key"),
    ("space-typo", _rename(SP, "loss.lambda1", "loss.lamda1"), "space.loss.lamda1",
     "did you mean 'loss.lambda1'?"),
    ("space-section", _rename(SP, "loss.lambda1", "loss"), "space.loss", "config section"),
    ("overrides-typo", _edits((["overrides", "train.iteration"], 5)),
     "overrides.train.iteration", "did you mean 'train.iterations'?"),
    ("overrides-value", _edits((["overrides", "train.iterations"], -5)), "train.iterations",
     "is invalid"),
    ("overrides-and-space", _edits((["overrides", "loss.lambda1"], 2.0)), "space.loss.lambda1",
     "also set under overrides"),
    ("point-typo", _edits((PT + ["loss.lambdaa"], 1.0)), "points_to_evaluate[0].loss.lambdaa",
     "did you mean 'loss.lambda1'?"),
    ("point-not-searched", _edits((PT + ["loss.lambda2"], 1.0)),
     "points_to_evaluate[0].loss.lambda2", "is not searched"),
    ("type-unknown", _edits(([SP, "loss.lambda1", "type"], "uniform")),
     "space.loss.lambda1.type", "'uniform' is not a distribution type"),
    ("type-missing", _edits(([SP, "loss.lambda1", "type"], DEL)), "space.loss.lambda1.type",
     "not a distribution type"),
    ("dist-key-typo", _edits(([SP, "loss.lambda1", "lo"], 0.2)), "space.loss.lambda1.lo",
     "did you mean 'low'?"),
    ("low-missing", _edits(([SP, "loss.lambda1", "low"], DEL)), "space.loss.lambda1.low",
     "missing"),
    ("high-missing", _edits(([SP, "ksm.topk", "high"], DEL)), "space.ksm.topk.high", "missing"),
    ("low-above-high", _edits(([SP, "ksm.topk", "low"], 18)), "space.ksm.topk.low", "swap"),
    ("low-equals-high", _edits(([SP, "loss.lambda1", "low"], 5.0)), "space.loss.lambda1.low",
     "set a fixed value under overrides"),
    ("log-nonpositive", _edits(([SP, "loss.lambda1", "low"], 0.0)), "space.loss.lambda1.log",
     "log scale needs low > 0"),
    ("int-log-below-1", _edits(([SP, "ksm.n_ctx"], {"type": "int", "low": 0, "high": 8,
                                                    "log": True})),
     "space.ksm.n_ctx.log", "log scale needs low >= 1"),
    ("step-with-log", _edits(([SP, "loss.lambda1", "step"], 0.1)), "space.loss.lambda1.step",
     "cannot be combined"),
    ("step-not-dividing", _edits(([SP, "ksm.topk", "high"], 15)), "space.ksm.topk.step",
     "use high = 14"),
    ("float-step-not-dividing", _edits(([SP, "csr.gamma1", "step"], 0.3)),
     "space.csr.gamma1.step", "use high = 0.9"),
    ("step-nonpositive", _edits(([SP, "ksm.topk", "step"], 0)), "space.ksm.topk.step", "> 0"),
    ("below-config-min", _edits(([SP, "loss.lambda1", "low"], -1.0),
                                ([SP, "loss.lambda1", "log"], False)),
     "space.loss.lambda1.low", "outside the values of loss.lambda1 (float >= 0.0)"),
    ("above-config-max", _edits(([SP, "csr.mask_ratio"],
                                 {"type": "float", "low": 0.1, "high": 1.5})),
     "space.csr.mask_ratio.high", "outside the values"),
    ("choice-not-allowed", _edits(([SP, "csr.reconstructor", "choices"], ["transformer", "rnn"])),
     "space.csr.reconstructor.choices", "'rnn' is not a valid value"),
    ("choice-wrong-type", _edits(([SP, "csr.contrast", "choices"], ["yes", "no"])),
     "space.csr.contrast.choices", "'yes' is not a valid value"),
    ("choices-empty", _edits(([SP, "csr.reconstructor", "choices"], [])),
     "space.csr.reconstructor.choices", "missing or empty"),
    ("choices-single", _edits(([SP, "csr.reconstructor", "choices"], ["gru"])),
     "space.csr.reconstructor.choices", "single value"),
    ("choices-duplicate", _edits(([SP, "csr.reconstructor", "choices"], ["gru", "gru"])),
     "space.csr.reconstructor.choices", "listed twice"),
    ("choices-with-low", _edits(([SP, "csr.reconstructor", "low"], 0)),
     "space.csr.reconstructor.low", "not used by a categorical"),
    ("int-nonint-bound", _edits(([SP, "ksm.topk", "low"], 4.5)), "space.ksm.topk.low",
     "must be an integer"),
    ("float-for-int-key", _edits(([SP, "ksm.topk", "type"], "float")), "space.ksm.topk.type",
     "use type: int"),
    ("int-for-float-key", _edits(([SP, "loss.lambda1", "type"], "int")),
     "space.loss.lambda1.type", "use type: float"),
    ("numeric-for-bool-key", _edits(([SP, "csr.contrast"], {"type": "int", "low": 0,
                                                           "high": 1})),
     "space.csr.contrast.type", "use type: categorical"),
    ("list-key", _edits(([SP, "eval.tious"], {"type": "categorical", "choices": [0.1, 0.5]})),
     "space.eval.tious", "list-valued"),
    ("owned-key", _edits(([SP, "train.iterations"], {"type": "int", "low": 100, "high": 300})),
     "space.train.iterations", "cannot be searched"),
    ("dataset-key", _edits(([SP, "data.max_seqlen"], {"type": "int", "low": 64, "high": 128}),
                           ([SP, "data.feature_dim"], {"type": "int", "low": 64, "high": 128})),
     "space.data.feature_dim", "defines the dataset"),
    ("corner-breaks-config", _edits(([SP, "loc_head.bg_threshold"],
                                     {"type": "float", "low": 0.1, "high": 0.7})),
     "space.loc_head.bg_threshold", "must not exceed 'loc_head.fg_threshold'"),
    ("metric-unknown", _edits((["metric"], "map/avg_0.5-0.95")), "metric",
     "'map/avg_0.5-0.95' is never reported"),
    ("metric-at", _edits((["metric"], "map@0.5")), "metric", "did you mean 'map/0.5'?"),
    ("metric-base-term", _edits((["metric"], "loss/norm"), (["mode"], "min")), "metric",
     "'loss/norm' is never reported"),
    ("metric-lr", _edits((["metric"], "lr")), "metric", "'lr' is never reported"),
    ("metric-dropped-by-space", _edits((["metric"], "loss/rec"), (["mode"], "min"),
                                       ([SP, "csr.enabled"], {"type": "categorical",
                                                              "choices": [True, False]})),
     "metric", "when csr.enabled = false"),
    ("mode-unknown", _edits((["mode"], "maximize")), "mode", "must be min or max"),
    ("mode-wrong-direction", _edits((["mode"], "min")), "mode", "use mode: max"),
    ("when-not-in-space", _edits(([SP, "csr.gamma1", "when"], {"csr.enabled": True})),
     "space.csr.gamma1.when.csr.enabled", "is not searched"),
    ("when-unknown-key", _edits(([SP, "csr.gamma1", "when"], {"csr.contrst": True})),
     "space.csr.gamma1.when.csr.contrst", "did you mean 'csr.contrast'?"),
    ("when-bad-value", _edits(([SP, "csr.gamma1", "when"], {"csr.contrast": "yes"})),
     "space.csr.gamma1.when.csr.contrast", "'yes' is not among the choices"),
    ("when-bad-value-in-list", _edits(([SP, "csr.gamma1", "when"],
                                       {"csr.reconstructor": ["gru", "lstm"]})),
     "space.csr.gamma1.when.csr.reconstructor", "'lstm' is not among the choices"),
    ("when-numeric-parent", _edits(([SP, "csr.gamma1", "when"], {"loss.lambda1": 1.0})),
     "space.csr.gamma1.when.loss.lambda1", "conditions need a categorical one"),
    ("when-self", _edits(([SP, "csr.gamma1", "when"], {"csr.gamma1": 0.5})),
     "space.csr.gamma1.when.csr.gamma1", "cannot depend on itself"),
    ("when-parent-after", lambda d: d["space"].update(
        {"csr.contrast": d["space"].pop("csr.contrast")}),
     "space.csr.gamma1.when.csr.contrast", "listed after"),
    ("point-outside", _edits((PT + ["loss.lambda1"], 10.0)),
     "points_to_evaluate[0].loss.lambda1", "outside its distribution"),
    ("point-off-grid", _edits((PT + ["ksm.topk"], 7)), "points_to_evaluate[0].ksm.topk",
     "outside its distribution (int in [4, 16] step 2)"),
    ("point-wrong-type", _edits((PT + ["csr.contrast"], "false")),
     "points_to_evaluate[0].csr.contrast", "outside its distribution"),
    ("point-condition-false", _edits((PT + ["csr.gamma1"], 0.2)),
     "points_to_evaluate[0].csr.gamma1", "only searched when csr.contrast is [true]"),
    ("point-condition-unset", _edits((PT + ["csr.contrast"], DEL), (PT + ["csr.gamma1"], 0.2)),
     "points_to_evaluate[0].csr.gamma1", "set csr.contrast in this point"),
    ("points-not-list", _edits((["points_to_evaluate"], {"loss.lambda1": 1.0})),
     "points_to_evaluate", "must be a list"),
    ("points-over-budget", _edits((["trials", "num_samples"], 1),
                                  (["points_to_evaluate"], [{"loss.lambda1": 1.0},
                                                            {"loss.lambda1": 2.0}])),
     "trials.num_samples", "fewer than the 2 points_to_evaluate"),
    ("grace-above-max-t", _edits((["scheduler", "grace_period"], 400)),
     "scheduler.grace_period", "must be below max_t = 300"),
    ("max-t-above-iterations", _edits((["scheduler", "max_t"], 600)), "scheduler.max_t",
     "exceeds train.iterations = 300"),
    ("max-t-off-report", _edits((["scheduler", "max_t"], 275)), "scheduler.max_t",
     "not a multiple of train.eval_interval = 50"),
    ("grace-below-interval", _edits((["scheduler", "grace_period"], 25)),
     "scheduler.grace_period", "not a multiple of train.eval_interval = 50"),
    ("grace-off-interval", _edits((["scheduler", "grace_period"], 75)),
     "scheduler.grace_period", "rungs must fall on reports"),
    ("reduction-factor", _edits((["scheduler", "reduction_factor"], 1)),
     "scheduler.reduction_factor", "integer >= 2"),
    ("scheduler-type", _edits((["scheduler", "type"], "hyperband")), "scheduler.type",
     "use asha or none"),
    ("scheduler-type-missing", _edits((["scheduler", "type"], DEL)), "scheduler.type",
     "missing"),
    ("scheduler-none-extra", _edits((["scheduler", "type"], "none")),
     "scheduler.grace_period", "only used by type: asha"),
    ("sampler", _edits((["searcher", "sampler"], "cmaes")), "searcher.sampler",
     "use tpe or random"),
    ("random-tpe-option", _edits((["searcher", "sampler"], "random")),
     "searcher.n_startup_trials", "only used by sampler: tpe"),
    ("seed", _edits((["searcher", "seed"], -1)), "searcher.seed", "integer >= 0"),
    ("searcher-typo", _edits((["searcher", "seeed"], 1)), "searcher.seeed",
     "did you mean 'seed'?"),
    ("num-samples", _edits((["trials", "num_samples"], 0)), "trials.num_samples",
     "integer >= 1"),
    ("max-concurrent", _edits((["trials", "max_concurrent"], 0)), "trials.max_concurrent",
     "integer >= 1"),
    ("max-failures", _edits((["trials", "max_failures"], -1)), "trials.max_failures",
     "integer >= 0"),
    ("trials-typo", _edits((["trials", "num_sample"], 3)), "trials.num_sample",
     "did you mean 'num_samples'?"),
    ("cpu-negative", _edits((["resources", "cpu"], -1)), "resources.cpu", ">= 0"),
    ("gpu-negative", _edits((["resources", "gpu"], -0.5)), "resources.gpu", ">= 0"),
    ("gpu-fraction-above-1", _edits((["resources", "gpu"], 1.5)), "resources.gpu",
     "whole number"),
    ("gpu-on-cpu-device", _edits((["resources", "gpu"], 0.5)), "resources.gpu",
     "train.device = cpu"),
    ("cuda-without-gpu", _edits((["overrides", "train.device"], "cuda")), "resources.gpu",
     "train.device = cuda"),
    ("no-resources", _edits((["resources", "cpu"], 0)), "resources", "both 0"),
    ("remote-storage-sqlite", _edits((["storage", "path"], "s3://b/sweeps")),
     "mlflow.tracking_uri", "local storage.path"),
    ("section-not-mapping", _edits((["trials"], 8)), "trials", "must be a mapping"),
    ("name", _edits((["name"], "my sweep")), "name", "not a valid experiment name"),
    ("base-missing", _edits((["base"], DEL)), "base", "missing"),
    ("base-not-found", _edits((["base"], "nowhere.yaml")), "base", "neither a preset"),
    ("space-empty", _edits(([SP], {})), "space", "missing or empty"),
]


@pytest.mark.parametrize("edit,key,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed(tmp_path, edit, key, fragment):
    doc = copy.deepcopy(VALID)
    edit(doc)
    expect_error(write(tmp_path, doc), key, fragment)


def test_bad_cases_are_distinct():
    """Each case names its own key or problem (each message is checked in test_malformed)."""
    assert len({b[0] for b in BAD}) == len(BAD)
    assert len({(b[2], b[3]) for b in BAD}) == len(BAD)


@pytest.mark.parametrize("item,key,fragment", [
    ("loss.lambda1=2.0", "space.loss.lambda1", "also set with --set"),
    ("loss.lamda2=2.0", "--set loss.lamda2", "did you mean 'loss.lambda2'?"),
    ("train.iterations", "--set", "must look like key=value"),
    ("train.eval_interval=70", "scheduler.grace_period", "not a multiple"),
])
def test_bad_set_overrides(tmp_path, item, key, fragment):
    expect_error(write(tmp_path, VALID), key, fragment, [item])


# --------------------------------------------------------------------------- optuna glue


def trial_config(space, params: dict):
    """A trial's config as ``sweep.trainable.run_trial`` builds it."""
    return from_flat({**to_flat(space.base_config), **params})


def _run(space, n: int, seed_offset: int = 0) -> list[dict]:
    sampler = make_sampler(space.searcher, space.has_conditionals)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(space.params, trial)
        study.tell(trial, params["loss.lambda1"] - params["ksm.topk"] / 16)
        out.append(params)
    return out


def test_suggest_deterministic_and_honours_space(tmp_path):
    space = load_search_space(write(tmp_path, VALID))
    a, b = _run(space, 12), _run(space, 12)
    assert a == b  # same seed, same sequence (also after the 4 startup trials)
    other = dict(VALID, searcher={"sampler": "tpe", "seed": 1, "n_startup_trials": 4})
    assert _run(load_search_space(write(tmp_path, other, "y.yaml")), 12)[1:] != a[1:]
    assert {k: a[0][k] for k in VALID["points_to_evaluate"][0]} == \
        VALID["points_to_evaluate"][0]
    assert "csr.gamma1" not in a[0]
    seen_contrast = set()
    for params in a:
        seen_contrast.add(params["csr.contrast"])
        assert ("csr.gamma1" in params) == params["csr.contrast"]
        assert 0.1 <= params["loss.lambda1"] <= 5.0
        assert params["ksm.topk"] in range(4, 17, 2)
        assert params["csr.reconstructor"] in ("transformer", "gru")
        cfg = trial_config(space, params)
        assert cfg.ksm.topk == params["ksm.topk"]
        assert cfg.csr.gamma1 == params.get("csr.gamma1", space.base_config.csr.gamma1)
    assert seen_contrast == {True, False}


def test_suggest_passes_distributions_to_optuna(tmp_path):
    space = load_search_space(write(tmp_path, VALID))
    study = optuna.create_study(sampler=make_sampler(space.searcher, space.has_conditionals))
    trial = study.ask()
    suggest(space.params, trial)
    dists = study.trials[0].distributions
    assert dists["loss.lambda1"] == optuna.distributions.FloatDistribution(0.1, 5.0, log=True)
    assert dists["ksm.topk"] == optuna.distributions.IntDistribution(4, 16, step=2)
    for p in space.params:
        if p.key in dists:
            assert p.distribution() == dists[p.key]


def test_random_sampler_is_seeded(tmp_path):
    doc = dict(VALID, searcher={"sampler": "random", "seed": 5})
    space = load_search_space(write(tmp_path, doc))
    assert isinstance(make_sampler(space.searcher, False), optuna.samplers.RandomSampler)
    assert _run(space, 5) == _run(space, 5)


def test_nested_conditions():
    p = Param("csr.gamma2", "float", 0.0, 1.0, when=(("csr.contrast", (True,)),
                                                   ("csr.reconstructor", ("gru", "lstm"))))
    assert p.active({"csr.contrast": True, "csr.reconstructor": "gru"})
    assert not p.active({"csr.contrast": True, "csr.reconstructor": "transformer"})
    assert not p.active({"csr.reconstructor": "gru"})  # inactive parent
    assert not p.active({"csr.contrast": 1, "csr.reconstructor": "gru"})  # 1 is not true


# --------------------------------------------------------------------------- metrics


def test_reported_metrics_names():
    cfg = load_config("activitynet12")
    names = reported_metrics(cfg)
    assert {"map/0.5", "map/0.95", "map/avg_0.5-0.95", "iteration", "lr", "loss/match",
            "loss/rec"} <= names
    assert "map/avg_0.1-0.7" not in names
    assert "loss/rec" not in reported_metrics(load_config("synthetic", ["csr.enabled=false"]))
    warm = load_config("synthetic", ["dpid.warmup_iterations=100", "train.eval_interval=100"])
    assert "loss/rec" not in reported_metrics(warm)  # the first report is still warming up


def test_reported_metrics_match_training(tmp_path, tiny_overrides):
    """A real (tiny) run: reports at iterations 2 (CSR still warming up) and 4."""
    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.inference.evaluate import ModelEvaluator
    from mllm4wtal.train.loop import train

    extra = ["dpid.warmup_iterations=2", "csr.contrast=true"]
    cfg = load_config("synthetic", tiny_overrides + extra)
    reports: list[set[str]] = []
    data = load_from_config(cfg.data)
    train(cfg, data, tmp_path / "run", evaluate=ModelEvaluator(cfg, data),
          report=lambda m, _: reports.append({k for k in m if not k.startswith("time/")}),
          progress=False)
    assert len(reports) == 2
    base_terms = {"loss/norm", "loss/guide"}  # the MIL baseline's own, not sweep metrics
    assert reports[0] & reports[1] == reported_metrics(cfg) | base_terms  # in every report
    no_warmup = load_config("synthetic", tiny_overrides + extra[1:])
    assert reports[1] == reported_metrics(no_warmup) | base_terms  # CSR side included
    assert {"loss/csr_contrast", "loss/distill_ksm", "loss/focal"} <= reports[1]


@pytest.mark.parametrize("warmup,names", [
    (0, {"loss/csr", "loss/rec", "loss/distill_csr"}),  # a report without CSR terms
    (1, {"loss/csr"}),  # CSR terms while the CSR side is still warming up
])
def test_dpid_refuses_a_report_loss_names_does_not_promise(tmp_path, tiny_overrides,
                                                           monkeypatch, warmup, names):
    """reported_metrics cannot drift from training: DPID checks every step's report against
    train.dpid.loss_names, the function reported_metrics is built on."""
    from mllm4wtal.data.load import load_from_config
    from mllm4wtal.train import dpid
    from mllm4wtal.train.loop import train

    real = dpid.loss_names
    if warmup == 0:
        def fake(cfg, it):
            return real(cfg, it) - names
    else:
        def fake(cfg, it):
            return real(cfg, it) | names
    monkeypatch.setattr(dpid, "loss_names", fake)
    cfg = load_config("synthetic", tiny_overrides + ["train.iterations=1",
                                                     f"dpid.warmup_iterations={warmup}"])
    with pytest.raises(RuntimeError, match=r"DPID reported .* at iteration 0 but loss_names\(\) "
                                           r"says .*; change the two together"):
        train(cfg, load_from_config(cfg.data), tmp_path / "run", evaluate=None, progress=False)


def test_module_does_not_import_ray():
    code = ("import sys, mllm4wtal.sweep.spaces.search_space, mllm4wtal.sweep.study_file; "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
