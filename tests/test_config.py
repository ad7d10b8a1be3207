"""Config tree: presets hold the papers' defaults, overrides, errors, flat round trip."""

from __future__ import annotations

import pytest
from mllm4wtal.config import (
    PRESETS,
    Config,
    ConfigError,
    explain,
    from_flat,
    leaf_fields,
    load_config,
    save_config,
    to_flat,
    with_overrides,
)


def test_thumos14_preset_holds_paper_defaults():
    cfg = load_config("thumos14")
    assert cfg.train.lr == 5e-4 and cfg.train.weight_decay == 1e-3
    assert cfg.train.iterations == 5000
    assert cfg.loss.lambda1 == 1.5 and cfg.loss.lambda2 == 1.5 and cfg.loss.mu1 == 1.0
    assert cfg.csr.mask_ratio == pytest.approx(1 / 3)
    assert cfg.eval.tious == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert cfg.data.feature_dim == 2048 and cfg.data.name == "Thumos14reduced"


def test_activitynet_preset():
    cfg = load_config("activitynet12")
    assert cfg.train.lr == 3e-5 and cfg.train.iterations == 50000
    assert cfg.eval.tious[0] == 0.5 and cfg.eval.tious[-1] == 0.95 and len(cfg.eval.tious) == 10
    assert (cfg.data.train_subset, cfg.data.test_subset) == ("training", "validation")
    assert cfg.loss.lambda1 == 1.5  # inherited from thumos14 through 'base'


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_round_trips(name):
    cfg = load_config(name)
    flat = to_flat(cfg)
    assert set(flat) == set(leaf_fields())
    assert from_flat(flat) == cfg


def test_dotted_override_and_yaml_file(tmp_path):
    cfg = load_config("thumos14", ["loss.lambda1=2.0", "ksm.prompt=handcraft",
                                   "eval.tious=[0.3, 0.5]"])
    assert cfg.loss.lambda1 == 2.0 and cfg.ksm.prompt == "handcraft"
    assert cfg.eval.tious == (0.3, 0.5)
    path = tmp_path / "exp.yaml"
    path.write_text("base: thumos14\nloss:\n  mu1: 0.5\ntrain:\n  iterations: 10\n")
    cfg = load_config(str(path), ["train.seed=3"])
    assert (cfg.loss.mu1, cfg.train.iterations, cfg.train.seed) == (0.5, 10, 3)
    assert cfg.train.lr == 5e-4


def test_exponent_floats_without_a_dot():
    # PyYAML reads '5e-5' as a string (YAML 1.1); a float field still takes it
    assert load_config("thumos14", ["train.lr=5e-5"]).train.lr == 5e-5
    assert load_config("thumos14", ["eval.tious=[1e-1, 5e-1]"]).eval.tious == (0.1, 0.5)
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("thumos14", ["train.lr=fast"])


def test_save_and_reload(tmp_path):
    cfg = with_overrides(load_config("thumos14"), {"loss.lambda2": 0.25})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'loss.lamda1'.*'loss.lambda1'"):
        load_config("thumos14", ["loss.lamda1=2"])
    with pytest.raises(ConfigError, match=r"'train.lr'"):  # right leaf, wrong section
        load_config("thumos14", ["model.lr=0.1"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  iteratons: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'train.iteratons'.*'train.iterations'"):
        load_config(str(path))


@pytest.mark.parametrize("override, words", [
    ("csr.mask_ratio=1.5", ["csr.mask_ratio", "[0.01, 1.0]"]),
    ("train.iterations=-1", ["train.iterations", ">= 1"]),
    ("train.iterations=abc", ["train.iterations", "int"]),
    ("model.base=resnet", ["model.base", "'mil'"]),
    ("ksm.enabled=3", ["ksm.enabled", "bool"]),
    ("train.lr=.nan", ["train.lr"]),
])
def test_bad_values_name_key_and_range(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("thumos14", [override])
    for w in words:
        assert w in str(err.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="loc_head.bg_threshold"):
        load_config("thumos14", ["loc_head.bg_threshold=0.9", "loc_head.fg_threshold=0.5"])
    with pytest.raises(ConfigError, match="data.rgb_dim"):
        load_config("thumos14", ["data.rgb_dim=4096"])


def test_section_and_malformed_override():
    with pytest.raises(ConfigError, match="is a section"):
        load_config("thumos14", ["loss=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("thumos14", ["loss.lambda1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "b.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_every_leaf_is_documented():
    for key, (_, f) in leaf_fields().items():
        assert f.metadata.get("help"), key
    text = explain()
    assert "loss.lambda1" in text and "csr.mask_ratio" in text
    assert Config() == from_flat({})
