"""The doors of every input file (issue 14): configs, ground truth and predictions, packed
indexes, W-TALC annotations, checkpoints, description stores, the MLflow URI of `report`.
Each bad input is refused with one line naming the file, key or value and the fix."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from mllm4wtal.cli import main
from mllm4wtal.config import ConfigError, load_config
from mllm4wtal.config.ranges import is_tiou
from mllm4wtal.data import DataError, load_packed, load_wtal, pack, read_json_gt, save_wtal
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation import EvaluationInputError, evaluate_detection, parse_tiou_range
from mllm4wtal.report.collect import read_experiment
from mllm4wtal.text.bundle import build_text_bundle
from mllm4wtal.text.store import StoreError
from mllm4wtal.train.checkpoint import load_checkpoint
from test_evaluation import gt_of, pred_of, reference_ap


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- config YAML


def test_config_file_with_a_duplicate_key_is_refused(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("base: synthetic\nloss:\n  lambda1: 1.0\n  lambda1: 2.0\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line 4: duplicate key 'lambda1'; keep one"):
        load_config(str(f))
    assert main(["train", "--config", str(f)]) == 2
    assert "duplicate key 'lambda1'" in one_line_error(capsys)


def test_base_file_of_a_preset_chain_with_a_duplicate_key_is_refused(tmp_path):
    (tmp_path / "common.yaml").write_text(
        "base: synthetic\ntrain:\n  lr: 0.001\ntrain:\n  iterations: 10\n")
    top = tmp_path / "top.yaml"
    top.write_text("base: common.yaml\nloss:\n  lambda1: 2.0\n")
    # the message names the file of the chain that holds the duplicate, not the one given
    with pytest.raises(ConfigError, match=r"common\.yaml: line 4: duplicate key 'train'"):
        load_config(str(top))


# --------------------------------------------------------------------------- tIoU thresholds


def test_zero_tiou_is_refused_by_config_cli_and_api_alike(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'eval\.tious' = 0\.0 is invalid; expected float "
                                          r"in \(0, 1\]"):
        load_config("synthetic", ["eval.tious=[0.0,0.5]"])
    with pytest.raises(EvaluationInputError, match=r"tIoU spec '0,0.5' is invalid.*\(0, 1\]"):
        parse_tiou_range("0,0.5")
    with pytest.raises(EvaluationInputError, match=r"tious = \(0\.0, 0\.5\).*in \(0, 1\]"):
        evaluate_detection(gt_of([("v", 0, 10, "A")]), pred_of([]), (0.0, 0.5))
    assert main(["train", "--config", "synthetic", "--set", "eval.tious=[0.0,0.5]"]) == 2
    assert "eval.tious" in one_line_error(capsys)


def test_a_tiou_range_of_a_trillion_thresholds_is_refused_at_once():
    with pytest.raises(EvaluationInputError, match=r"'0:1:1e-12' makes 1000000000001 "
                                                   r"thresholds; at most 1000"):
        parse_tiou_range("0:1:1e-12")


@pytest.mark.parametrize("t", [0.0, -0.1, 1e-6, 0.05, 0.5, 1.0, 1.000001, 2.0, math.nan,
                               math.inf])
def test_the_three_tiou_doors_agree(t):
    """One rule, (0, 1], for the config key, the --tiou spec and the evaluation API (a spec
    is rounded to 6 decimals first, so that 0.5:1.0:0.05 ends at 1.0 exactly)."""
    def accepts(check):
        try:
            check()
        except UserError:
            return False
        return True

    gt = gt_of([("v", 0, 10, "A")])
    verdicts = {
        "config": accepts(lambda: load_config("synthetic", {"eval.tious": [t]})),
        "--tiou": accepts(lambda: parse_tiou_range(repr(t))),
        "api": accepts(lambda: evaluate_detection(gt, pred_of([]), (t,))),
    }
    assert set(verdicts.values()) == {is_tiou(t)}, verdicts


# --------------------------------------------------------------------------- evaluate


def write_json(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("which, seg, words", [
    ("gt", [-1.0, 4.0], r"gt\.json: database\['v2'\]\['annotations'\]\[1\]\['segment'\] = "
                        r"\[-1\.0, 4\.0\] starts before 0"),
    ("gt", [6.0, 4.0], r"gt\.json: database\['v2'\]\['annotations'\]\[1\]\['segment'\] = "
                       r"\[6\.0, 4\.0\] ends before it starts"),
    ("pred", [-0.5, 4.0], r"p\.json: results\['v2'\]\[1\]\['segment'\] = \[-0\.5, 4\.0\] "
                          r"starts before 0"),
    ("pred", [4.0, 4.0], r"p\.json: results\['v2'\]\[1\]\['segment'\] = \[4\.0, 4\.0\] is empty"),
    ("pred", [5.0, 4.0], r"p\.json: results\['v2'\]\[1\]\['segment'\] = \[5\.0, 4\.0\] ends "
                         r"before it starts"),
])
def test_evaluate_refuses_bad_segments_naming_file_video_and_index(tmp_path, capsys, which,
                                                                   seg, words):
    gt = gt_of([("v1", 0, 10, "A"), ("v2", 0, 10, "A"), ("v2", 20, 30, "A")])
    pred = pred_of([("v1", 0, 10, "A", 0.9), ("v2", 0, 10, "A", 0.8),
                    ("v2", 20, 30, "A", 0.7)])
    target = gt["database"]["v2"]["annotations"][1] if which == "gt" else pred["results"]["v2"][1]
    target["segment"] = seg
    g, p = write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "p.json", pred)
    assert main(["evaluate", "--gt", g, "--pred", p]) == 2
    err = one_line_error(capsys)
    assert re.search(words, err), err


def test_predictions_for_videos_absent_from_the_ground_truth_are_false_positives_and_counted(
        tmp_path, capsys):
    gt = gt_of([("v1", 0, 10, "A"), ("v2", 20, 30, "B")])
    preds = [("v1", 0, 10, "A", 0.5), ("ghost", 0, 10, "A", 0.9), ("ghost", 1, 9, "B", 0.4),
             ("v2", 20, 30, "B", 0.6), ("v1", 0, 10, "Z", 0.3)]
    r = evaluate_detection(gt, pred_of(preds), (0.5,))
    # the official algorithm (the reference loop of test_evaluation): a false positive each
    np.testing.assert_allclose(r.ap, reference_ap(gt, pred_of(preds), np.array([0.5])))
    np.testing.assert_allclose(r.ap[:, 0], [0.5, 1.0])  # ghost's A outranks v1's A
    assert r.n_unknown_video_predictions == 2 and r.n_ignored_predictions == 1
    g = write_json(tmp_path / "gt.json", gt)
    p = write_json(tmp_path / "p.json", pred_of(preds))
    assert main(["evaluate", "--gt", g, "--pred", p, "--tiou", "0.5"]) == 0
    out = capsys.readouterr().out
    assert ("note: 2 predictions are for videos absent from the ground truth and were counted "
            "as false positives") in out
    assert "note: 1 predictions had labels absent from the ground truth" in out


def test_known_videos_only_leave_the_counts_at_zero():
    r = evaluate_detection(gt_of([("v1", 0, 10, "A")]), pred_of([("v1", 0, 10, "A", 0.9)]),
                           (0.5,))
    assert r.n_unknown_video_predictions == 0 and r.notes() == []


def test_evaluate_gt_that_is_a_directory(tmp_path, capsys):
    p = write_json(tmp_path / "p.json", pred_of([]))
    assert main(["evaluate", "--gt", str(tmp_path), "--pred", p]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path}: is a directory, not a ground-truth file" in err
    assert "does not exist" not in err


# --------------------------------------------------------------------------- packed index


@pytest.fixture
def packed(tiny_data, tmp_path) -> Path:
    return pack(tiny_data, tmp_path / "packed")


def edit_index(packed: Path, change) -> None:
    idx = packed / "index.json"
    index = json.loads(idx.read_text())
    index = change(index) or index
    idx.write_text(json.dumps(index))


def test_packed_index_where_two_videos_share_rows_is_refused(packed):
    def overlap(index):
        v0, v1 = index["videos"][0], index["videos"][1]
        v1["offset"] = v0["offset"] + v0["length"] - 3
    edit_index(packed, overlap)
    with pytest.raises(DataError, match=r"index\.json: videos\[0\] and videos\[1\] share rows "
                                        r"\d+\.\.\d+ of the feature file .*re-run pack"):
        load_packed(packed)


def set_video(i, key, value):
    def change(index):
        index["videos"][i][key] = value
    return change


def drop(key, i=None):
    def change(index):
        (index if i is None else index["videos"][i]).pop(key)
    return change


@pytest.mark.parametrize("change, words", [
    (lambda index: [index], r"index\.json: top level must be an object, got a list"),
    (drop("rows"), r"index\.json: rows is missing; re-run pack"),
    (lambda index: index.update(rows="many"), r"rows must be an integer >= 0, got 'many'"),
    (lambda index: index.update(videos=None), r"videos must be a list of videos, got None"),
    (set_video(2, "duration", "12.5"), r"videos\[2\] \('[^']+'\)\.duration must be a finite "
                                       r"number >= 0, got '12\.5'"),
    (drop("name", 1), r"videos\[1\]\.name is missing"),
    (set_video(0, "segments", [[1.0, 2.0]]), r"videos\[0\] \('[^']+'\)\.segments must be a "
                                             r"list of \[start, end, class index < 4\]"),
    (set_video(0, "segments", [[3.0, 2.0, 0]]), r"videos\[0\] \('[^']+'\)\.segments\[0\] = "
                                                r"\[3\.0, 2\.0\] ends before it starts"),
    (set_video(0, "segments", [[-3.0, 2.0, 0]]), r"segments\[0\] = \[-3\.0, 2\.0\] starts "
                                                 r"before 0"),
    (set_video(0, "labels", [7]), r"labels must be a list of class indices < 4, got \[7\]"),
    (set_video(0, "offset", -1), r"offset must be an integer >= 0, got -1"),
    (set_video(0, "fps", 0), r"fps must be a finite number > 0, got 0"),
    (lambda index: index.update(classes=["a", "a", "b", "c"]), r"classes names a class twice"),
])
def test_packed_index_of_the_wrong_shape_gives_one_line(packed, change, words):
    edit_index(packed, change)
    with pytest.raises(DataError, match=words) as e:
        load_packed(packed)
    assert "\n" not in str(e.value) and str(packed / "index.json") in str(e.value)


def test_packed_index_naming_a_video_twice_is_refused(packed):
    edit_index(packed, set_video(3, "name", "renamed"))  # a new name is fine
    assert load_packed(packed).videos[3].name == "renamed"

    def dup(index):
        index["videos"][1]["name"] = index["videos"][0]["name"]
    edit_index(packed, dup)
    with pytest.raises(DataError, match=r"videos\[0\] and videos\[1\] name the same video"):
        load_packed(packed)


# --------------------------------------------------------------------------- W-TALC .npy


def test_truncated_duration_npy_is_one_line(tiny_data, tmp_path):
    save_wtal(tiny_data, tmp_path, "Tiny")
    dur = tmp_path / "Tiny-Annotations" / "duration.npy"
    dur.write_bytes(dur.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"duration\.npy: cannot be read as a numpy array "
                                        r"\(Failed to read all data.*truncated or damaged"):
        load_wtal(tmp_path, "Tiny")


def test_duration_npy_of_strings_is_one_line(tiny_data, tmp_path):
    save_wtal(tiny_data, tmp_path, "Tiny")
    np.save(tmp_path / "Tiny-Annotations" / "duration.npy",
            np.array(["long"] * len(tiny_data.videos)))
    with pytest.raises(DataError, match=r"duration\.npy: holds <U4 values, not durations"):
        load_wtal(tmp_path, "Tiny")


@pytest.mark.parametrize("entry, words", [
    ({"annotations": [{"label": "A"}]}, r"database\['v'\]\['annotations'\]\[0\] = "
                                        r"\{'label': 'A'\} needs 'label' and 'segment'"),
    ({"annotations": "none"}, r"database\['v'\] must be an object with a list 'annotations'"),
    ({"annotations": [], "duration": "long"}, r"\['duration'\] = 'long' is not a duration"),
])
def test_json_ground_truth_as_dataset_annotations(tmp_path, entry, words):
    path = write_json(tmp_path / "gt.json", {"database": {"v": {"subset": "test", **entry}}})
    with pytest.raises(DataError, match=words):
        read_json_gt(path, classes=["A"])


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doors")
    sets = [x for o in TINY + [f"text.cache_dir={root / 'cache'}"] for x in ("--set", o)]
    assert main(["train", "--config", "synthetic", *sets, "--run-dir", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


def test_checkpoint_without_config_is_refused(trained_run, tmp_path, capsys):
    state = load_checkpoint(trained_run / "last.pt")
    del state["config"]
    torch.save(state, tmp_path / "noconfig.pt")
    with pytest.raises(UserError, match=r"noconfig\.pt' lacks 'config', so it was not written "
                                        r"by mllm4wtal train.*best\.pt or last\.pt"):
        load_checkpoint(tmp_path / "noconfig.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "noconfig.pt")]) == 2
    assert "lacks 'config'" in one_line_error(capsys)


def test_checkpoint_holding_python_objects_is_one_line(tmp_path):
    torch.save({"format": 1, "config": {}, "x": Path("/")}, tmp_path / "obj.pt")
    with pytest.raises(UserError, match=r"obj\.pt' cannot be read \(it holds Python objects") as e:
        load_checkpoint(tmp_path / "obj.pt")
    assert "\n" not in str(e.value)


def test_evaluate_checkpoint_refuses_a_set_that_changes_the_architecture(trained_run, capsys):
    ckpt = str(trained_run / "last.pt")
    assert main(["evaluate", "--checkpoint", ckpt, "--set", "model.hidden_dim=32",
                 "--set", "inference.nms_sigma=0.4"]) == 2
    err = one_line_error(capsys)
    assert "model.hidden_dim (16 -> 32)" in err and "nms_sigma" not in err
    assert "only data.*, inference.*, eval.*, train.device and train.bf16 may change" in err
    # keys of evaluation are free; the same value as trained is no change
    assert main(["evaluate", "--checkpoint", ckpt, "--set", "inference.nms_sigma=0.4",
                 "--set", "model.hidden_dim=16", "--set", "eval.tious=[0.5]"]) == 0
    assert "mAP %" in capsys.readouterr().out


def test_evaluate_checkpoint_on_data_of_another_width_names_the_weights(trained_run, capsys):
    assert main(["evaluate", "--checkpoint", str(trained_run / "last.pt"),
                 "--set", "data.synthetic.flow_dim=12"]) == 2
    err = one_line_error(capsys)
    assert "the weights do not fit the model built for the dataset" in err
    assert "size mismatch for" in err and "point data.* at the dataset" in err


# --------------------------------------------------------------------------- text, report


def test_file_backend_without_a_store_names_text_store(tiny_data, tmp_path, capsys):
    cfg = load_config("synthetic", TINY + ["text.backend=file"])
    with pytest.raises(StoreError, match=r"text\.backend = 'file' needs text\.store") as e:
        build_text_bundle(cfg, tiny_data)
    assert "'.'" not in str(e.value)
    sets = [x for o in TINY + ["text.backend=file"] for x in ("--set", o)]
    assert main(["train", "--config", "synthetic", *sets, "--run-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "--set text.store=" in one_line_error(capsys)


def test_report_on_an_unreachable_tracking_server_is_one_line(capsys):
    with pytest.raises(UserError, match=r"MLflow tracking server 'http://127\.0\.0\.1:1' is not "
                                        r"reachable.*--tracking-uri"):
        read_experiment("anything", "http://127.0.0.1:1")
    assert main(["report", "--experiment", "anything", "--tracking-uri",
                 "http://127.0.0.1:1"]) == 2
    assert "is not reachable" in one_line_error(capsys)
