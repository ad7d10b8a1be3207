"""What search-space files and study files share (``sweep.spaces.file_parser``): one YAML
reader, one set of run-setting sections and one check of every config a trial or a cell
runs, the inference settings included. Each mistake is refused at both front doors, with the
same one-line message after the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from mllm4wtal.sweep.spaces.search_space import SearchSpaceError, load_search_space
from mllm4wtal.sweep.study_file import StudyError, load_study

NO_LOC_HEAD = "inference.source = 'loc_head' but loc_head.enabled = false; use --set " \
              "inference.source=cas"

SPACE: dict = {
    "name": "s",
    "base": "synthetic",
    "overrides": {"train.iterations": 300, "train.eval_interval": 50, "train.device": "cpu"},
    "space": {"loss.lambda1": {"type": "float", "low": 0.1, "high": 5.0, "log": True},
              "csr.contrast": {"type": "categorical", "choices": [True, False]}},
    "points_to_evaluate": [{"loss.lambda1": 1.5, "csr.contrast": False}],
    "trials": {"num_samples": 4},
}

STUDY: dict = {
    "name": "st",
    "base": "synthetic",
    "overrides": {"train.iterations": 300, "train.device": "cpu"},
    "variants": {"Baseline": {"overrides": {"ksm.enabled": False}},
                 "Full": {"overrides": {}}},
}


def write(tmp_path: Path, doc: dict | str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def refusal(error: type[Exception], load, path: Path, *args) -> str:
    with pytest.raises(error) as info:
        load(path, *args)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- inference checks


def test_sweep_refuses_loc_head_inference_without_the_head_in_overrides(tmp_path):
    doc = copy.deepcopy(SPACE)
    doc["overrides"]["loc_head.enabled"] = False
    msg = refusal(SearchSpaceError, load_search_space, write(tmp_path, doc, "x.yaml"))
    assert msg.endswith(f"x.yaml: overrides: {NO_LOC_HEAD}"), msg


def test_sweep_refuses_it_from_set(tmp_path):
    msg = refusal(SearchSpaceError, load_search_space, write(tmp_path, SPACE, "x.yaml"),
                  ["loc_head.enabled=false"])
    assert msg.endswith(f"x.yaml: overrides and --set: {NO_LOC_HEAD}"), msg
    # the fix the message gives works
    s = load_search_space(tmp_path / "x.yaml", ["loc_head.enabled=false", "inference.source=cas"])
    assert s.base_config.inference.source == "cas"


def test_sweep_refuses_it_from_the_base_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text("base: synthetic\nloc_head:\n  enabled: false\n")
    doc = {**copy.deepcopy(SPACE), "base": "cfg.yaml"}
    msg = refusal(SearchSpaceError, load_search_space, write(tmp_path, doc, "x.yaml"))
    assert msg.endswith(f"x.yaml: base: {NO_LOC_HEAD}"), msg
    doc["overrides"]["inference.source"] = "cas"  # the overrides may repair the base
    assert load_search_space(write(tmp_path, doc, "y.yaml")).base_config.loc_head.enabled is False


def test_sweep_refuses_a_searched_value_that_drops_the_head(tmp_path):
    doc = copy.deepcopy(SPACE)
    doc["space"]["loc_head.enabled"] = {"type": "categorical", "choices": [True, False]}
    msg = refusal(SearchSpaceError, load_search_space, write(tmp_path, doc, "x.yaml"))
    assert msg.endswith(f"x.yaml: space.loc_head.enabled: {{loc_head.enabled: false}} breaks "
                        f"the base config: {NO_LOC_HEAD}"), msg


def test_study_refuses_it_per_variant_with_the_same_words(tmp_path):
    doc = copy.deepcopy(STUDY)
    doc["variants"]["Full"]["overrides"] = {"loc_head.enabled": False}
    msg = refusal(StudyError, load_study, write(tmp_path, doc, "st.yaml"))
    assert msg.endswith(f"st.yaml: variants.Full.overrides: {NO_LOC_HEAD}"), msg


def test_study_checks_the_configs_its_cells_run_not_the_base(tmp_path):
    doc = copy.deepcopy(STUDY)
    doc["overrides"]["loc_head.enabled"] = False  # every variant turns it back on
    for v in doc["variants"].values():
        v["overrides"]["loc_head.enabled"] = True
    assert load_study(write(tmp_path, doc, "st.yaml")).base_config.loc_head.enabled is False
    doc["variants"]["Full"]["overrides"] = {}
    msg = refusal(StudyError, load_study, write(tmp_path, doc, "st2.yaml"))
    assert msg.endswith(f"variants.Full.overrides: {NO_LOC_HEAD}"), msg


# --------------------------------------------------------------------------- shared reading


def _both(tmp_path: Path, edit) -> tuple[str, str]:
    """The messages of the two front doors for the same edit of their common parts."""
    space, study = copy.deepcopy(SPACE), copy.deepcopy(STUDY)
    edit(space)
    edit(study)
    a = refusal(SearchSpaceError, load_search_space, write(tmp_path, space, "x.yaml"))
    b = refusal(StudyError, load_study, write(tmp_path, study, "st.yaml"))
    return a.split(": ", 1)[1], b.split(": ", 1)[1]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(resources={"cpux": 1}),
     "resources.cpux: unknown key; did you mean 'cpu'? (allowed: cpu, gpu)"),
    (lambda d: d.update(resources={"gpu": 1.5}),
     "resources.gpu: 1.5: Ray takes fractions only below 1; use a whole number"),
    (lambda d: d.update(resources={"cpu": 0}),
     "resources: cpu and gpu are both 0"),
    (lambda d: d.update(resources={"gpu": True}),
     "resources.gpu: must be a number >= 0; got true"),
    (lambda d: d.update(storage={"path": "s3://bucket"}),
     "mlflow.tracking_uri: null needs a local storage.path"),
    (lambda d: d.update(mlflow={"experiment": ""}),
     "mlflow.experiment: must be a non-empty string or null; got ''"),
    (lambda d: d.update(storage=[1]), "storage: must be a mapping with keys path; got [1]"),
    (lambda d: d["overrides"].update({"train.iteration": 5}),
     "overrides.train.iteration: unknown config key; did you mean 'train.iterations'?"),
    (lambda d: d.update(name="a b"), "name: 'a b' is not a valid experiment name"),
], ids=["unknown-key", "fraction", "no-resource", "bool", "remote-mlflow", "empty-string",
        "not-mapping", "config-key", "name"])
def test_the_same_mistake_the_same_message(tmp_path, edit, message):
    a, b = _both(tmp_path, edit)
    assert a.startswith(message), a
    assert b.startswith(message), b


@pytest.mark.parametrize("text,message", [
    ("base: synthetic\nbase: thumos14\n", "line 2: duplicate key 'base'; keep one"),
    ("base: [unclosed\n", "not valid YAML at line 2, column 1: expected ',' or ']'"),
    ("base: a\x00\n", "not valid YAML"),
], ids=["duplicate", "syntax", "control-character"])
def test_one_yaml_reader(tmp_path, text, message):
    for error, load, name in ((SearchSpaceError, load_search_space, "x.yaml"),
                              (StudyError, load_study, "st.yaml")):
        msg = refusal(error, load, write(tmp_path, text, name))
        assert message in msg, msg


def test_study_trials_take_no_budget(tmp_path):
    study = copy.deepcopy(STUDY)
    study["trials"] = {"num_samples": 4}
    msg = refusal(StudyError, load_study, write(tmp_path, study, "st.yaml"))
    assert msg.endswith("trials.num_samples: unknown key (allowed: max_concurrent, "
                        "max_failures)"), msg

