"""Fuzzing the doors: generated configs and dotted overrides, YAML texts, ground truth and
predictions, packed indexes, description stores and checkpoints (random types, missing keys,
extreme values) fed to the loaders. Every outcome is a success or the project's own error
(a ``UserError``) with a one-line message; any other exception fails the test.

Bounded: a few dozen examples per door, no deadline, a few seconds in all."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mllm4wtal.config import leaf_fields, load_config
from mllm4wtal.data import load_packed, pack, read_json_gt
from mllm4wtal.data.load import load_from_config
from mllm4wtal.errors import UserError
from mllm4wtal.evaluation import evaluate_files, parse_tiou_range
from mllm4wtal.text.store import FIELDS, read_store
from mllm4wtal.train.checkpoint import load_checkpoint

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def through_the_door(call: Callable[[], Any]) -> None:
    """Success, or a UserError of one line; anything else propagates and fails the test."""
    try:
        call()
    except UserError as e:
        event(f"refused: {type(e).__name__}")  # --hypothesis-show-statistics shows the mix
        message = str(e)
        assert message.strip(), f"{type(e).__name__} without a message"
        assert len(message.splitlines()) == 1, message
    else:
        event("accepted")


# --------------------------------------------------------------------------- values

EXTREME = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 10**400, 0.0, -0.0, 1e-308,
                           1e308, -1e308, float("nan"), float("inf"), float("-inf"), "", " ",
                           "nan", "1e400", "0x10", "\n", "a\nb", "~nobody/x"])
LEAF = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
        | EXTREME)
JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)


def write(path: Path, data: Any) -> Path:
    """``data`` as a file: bytes as they are, anything else as JSON (NaN, Infinity too)."""
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


# --------------------------------------------------------------------------- configs

KEYS = (st.sampled_from(sorted(leaf_fields())) | st.sampled_from(["data", "eval", "base", "x.y"])
        | st.text(max_size=10))


@FUZZ
@given(st.dictionaries(KEYS, JSON, max_size=4))
def test_dotted_overrides_of_any_type(overrides):
    through_the_door(lambda: load_config("synthetic", overrides))


@FUZZ
@given(st.lists(st.builds(lambda k, v: f"{k}={v}", KEYS, st.text(max_size=16))
                | st.text(max_size=16), max_size=4))
def test_set_strings(items):
    through_the_door(lambda: load_config("synthetic", items))


SECTION_TREES = st.dictionaries(
    st.sampled_from(["data", "model", "train", "eval", "loss", "ksm"]) | st.text(max_size=5),
    st.dictionaries(st.sampled_from(["lr", "tious", "hidden_dim", "iterations", "format",
                                     "base"]) | st.text(max_size=5), JSON, max_size=3) | JSON,
    max_size=4)


@FUZZ
@given(st.sampled_from(["", "base: synthetic\n", "base: thumos14\n", "base: nowhere.yaml\n",
                        "base: .\n"]),
       SECTION_TREES.map(lambda t: yaml.safe_dump(t, allow_unicode=True)) | st.text(max_size=80)
       | st.binary(max_size=40))
def test_yaml_config_files(tmp_path_factory, head, body):
    path = tmp_path_factory.mktemp("yaml") / "run.yaml"
    path.write_bytes(head.encode() + (body if isinstance(body, bytes) else body.encode()))
    through_the_door(lambda: load_config(str(path)))


NUMBER_TEXT = st.floats(-0.5, 1.5).map(lambda x: f"{x:.3g}") | st.text("0123456789.-e", max_size=5)


@FUZZ
@given(st.text(max_size=20)
       | st.lists(NUMBER_TEXT, min_size=1, max_size=4).map(",".join)
       | st.lists(NUMBER_TEXT, min_size=2, max_size=4).map(":".join))
def test_tiou_specs(spec):
    through_the_door(lambda: parse_tiou_range(spec))


# --------------------------------------------------------------------------- ground truth

SPAN = st.tuples(st.floats(0, 1e6) | st.integers(0, 50), st.floats(0, 20) | st.integers(0, 5)
                 ).map(lambda t: [t[0], t[0] + t[1]])
SEGMENT = (SPAN | SPAN | st.lists(st.integers(-5, 30) | st.floats(-1, 40) | EXTREME, max_size=3)
           | JSON)
LABEL = st.sampled_from(["A", "B"]) | st.sampled_from(["A", "B"]) | LEAF
VIDEO = st.sampled_from(["v1", "v2", "v'3", "v\n4"]) | st.text(max_size=4)
GROUND_TRUTH = st.fixed_dictionaries({"database": st.dictionaries(VIDEO, st.fixed_dictionaries(
    {"subset": st.sampled_from(["test", "validation"]) | LEAF,
     "annotations": st.lists(st.fixed_dictionaries({"segment": SEGMENT, "label": LABEL})
                             | JSON, max_size=4) | JSON}) | JSON, max_size=3)}) | JSON
PREDICTIONS = st.fixed_dictionaries({"results": st.dictionaries(VIDEO, st.lists(
    st.fixed_dictionaries({"segment": SEGMENT, "label": LABEL,
                           "score": st.floats(0, 1) | st.integers(0, 3) | LEAF}) | JSON,
    max_size=5) | JSON, max_size=3)}) | JSON


@FUZZ
@given(GROUND_TRUTH | st.binary(max_size=30), PREDICTIONS | st.binary(max_size=30),
       st.lists(st.floats(0.05, 1) | st.floats(0.05, 1) | EXTREME, min_size=0, max_size=3),
       st.sampled_from([None, "test", "nope"]))
def test_ground_truth_and_predictions(tmp_path_factory, gt, pred, tious, subset):
    d = tmp_path_factory.mktemp("eval")
    g, p = write(d / "gt.json", gt), write(d / "p.json", pred)
    through_the_door(lambda: evaluate_files(g, p, tious, subset=subset))


WELL_FORMED_GT = st.fixed_dictionaries({"database": st.dictionaries(VIDEO, st.fixed_dictionaries(
    {"subset": st.just("test"),
     "annotations": st.lists(st.fixed_dictionaries({"segment": SPAN, "label": LABEL}),
                             max_size=5)}), min_size=1, max_size=3)})
WELL_FORMED_PREDICTIONS = st.fixed_dictionaries({"results": st.dictionaries(VIDEO, st.lists(
    st.fixed_dictionaries({"segment": SPAN, "label": LABEL,
                           "score": st.floats(0, 1) | st.integers(0, 3) | EXTREME}),
    max_size=6), max_size=4)})


@FUZZ
@given(WELL_FORMED_GT, WELL_FORMED_PREDICTIONS,
       st.lists(st.floats(0.05, 1), min_size=1, max_size=3) | st.lists(EXTREME, max_size=2))
def test_well_formed_ground_truth_and_predictions_with_extreme_values(tmp_path_factory, gt,
                                                                       pred, tious):
    d = tmp_path_factory.mktemp("eval")
    g, p = write(d / "gt.json", gt), write(d / "p.json", pred)
    through_the_door(lambda: evaluate_files(g, p, tious))


@FUZZ
@given(GROUND_TRUTH | WELL_FORMED_GT | st.binary(max_size=30))
def test_ground_truth_as_dataset_annotations(tmp_path_factory, gt):
    path = write(tmp_path_factory.mktemp("gt") / "gt.json", gt)
    through_the_door(lambda: read_json_gt(path))


# --------------------------------------------------------------------------- packed index


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fuzz_packed")
    cfg = load_config("synthetic", TINY)
    out = pack(load_from_config(cfg.data), root / "packed")
    return out, json.loads((out / "index.json").read_text())


@st.composite
def mutated_indexes(draw, valid: dict) -> Any:
    """A valid index with a few keys (top level or of a video) dropped or replaced."""
    index = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        raw = index.get("videos")
        videos = [v for v in raw if isinstance(v, dict)] if isinstance(raw, list) else []
        obj = draw(st.sampled_from(videos)) if videos and draw(st.booleans()) else index
        key = draw(st.sampled_from(sorted(obj) or ["name"]) | st.text(max_size=4))
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(JSON | st.sampled_from([[[0, 1, 0]], [[1, 0, 0]], [-3], 10**6]))
    return index


@settings(FUZZ, max_examples=60, suppress_health_check=list(HealthCheck))
@given(st.data())
@pytest.mark.filterwarnings("ignore::mllm4wtal.data.DataWarning")  # a late segment: usable
def test_packed_indexes(packed, data):
    path, valid = packed
    index = data.draw(mutated_indexes(valid) | JSON | st.binary(max_size=30))
    write(path / "index.json", index)
    through_the_door(lambda: load_packed(path))


# --------------------------------------------------------------------------- description store

RECORD = st.fixed_dictionaries({k: st.text(max_size=6) | LEAF for k in FIELDS}).flatmap(
    lambda r: st.sets(st.sampled_from(FIELDS), max_size=3).map(
        lambda gone: {k: v for k, v in r.items() if k not in gone}))
LINE = (RECORD | JSON).map(lambda r: json.dumps(r).encode()) | st.binary(max_size=20)


@FUZZ
@given(st.lists(LINE, max_size=5), st.booleans())
def test_description_stores(tmp_path_factory, lines, newline_at_end):
    path = tmp_path_factory.mktemp("store") / "store.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end else b""))
    through_the_door(lambda: read_store(path))


# --------------------------------------------------------------------------- checkpoints


def valid_state() -> dict:
    return {"format": 1, "config": {"train.iterations": 4}, "model": {"w": torch.zeros(2)},
            "classes": ["a", "b"], "iteration": 4, "best": 0.5, "best_iteration": 2,
            "opt_ksm": {"state": {}, "param_groups": []}, "opt_csr": None,
            "rng": {"torch": torch.get_rng_state(), "numpy": {"bit_generator": "PCG64"}},
            "metrics": {"map/0.5": 0.5}}


TENSORS = (st.builds(torch.zeros, st.integers(0, 3))
           | st.builds(lambda n: torch.zeros(n, dtype=torch.uint8), st.integers(0, 3)))
CHECKPOINT_VALUE = JSON | TENSORS | st.dictionaries(st.text(max_size=4), TENSORS, max_size=2)


@st.composite
def checkpoint_states(draw) -> Any:
    state = valid_state()
    for key in draw(st.lists(st.sampled_from(sorted(state)) | st.text(max_size=4), max_size=3)):
        if draw(st.booleans()):
            state.pop(key, None)
        else:
            state[key] = draw(CHECKPOINT_VALUE)
    return state


@FUZZ
@given(checkpoint_states() | CHECKPOINT_VALUE | st.binary(max_size=40))
def test_checkpoints(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    if isinstance(state, bytes):
        path.write_bytes(state)
    else:
        torch.save(state, path)
    through_the_door(lambda: load_checkpoint(path))
