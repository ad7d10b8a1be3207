"""The synthetic benchmark: reproducibility, THUMOS shape, exact ground truth, and that the
WTAL difficulties it claims (shared weak sub-actions, RGB-only scene context, hard
negatives) are really in the features."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from mllm4wtal.data.synthetic import (
    ACTION,
    CONTEXT,
    HARD_NEGATIVE,
    SyntheticConfig,
    actionness,
    class_table,
    fingerprint,
    generate,
    make_synthetic,
)
from mllm4wtal.data.types import WTALDataset

SMALL = {"num_classes": 6, "train_videos": 12, "test_videos": 8, "min_len": 48, "max_len": 96}


def _hashes(ds: WTALDataset) -> list[str]:
    return [hashlib.sha256(v.features.tobytes()).hexdigest() for v in ds.videos]


@pytest.fixture(scope="module")
def default():
    """The default benchmark (what `--config synthetic` trains on) and its hidden truth."""
    return generate(SyntheticConfig())


# ------------------------------------------------------------------ reproducibility


def test_same_seed_is_byte_identical():
    a = make_synthetic(SyntheticConfig(seed=7, **SMALL))
    b = make_synthetic(SyntheticConfig(seed=7, **SMALL))
    assert _hashes(a) == _hashes(b)
    assert [v.segments for v in a.videos] == [v.segments for v in b.videos]
    assert [(v.name, v.labels, v.duration) for v in a.videos] == \
        [(v.name, v.labels, v.duration) for v in b.videos]
    assert a.vocabulary == b.vocabulary and a.classes == b.classes
    assert fingerprint(a) == fingerprint(b)


def test_different_seed_differs():
    a = make_synthetic(SyntheticConfig(seed=1, **SMALL))
    b = make_synthetic(SyntheticConfig(seed=2, **SMALL))
    assert not set(_hashes(a)) & set(_hashes(b))
    assert [v.segments for v in a.videos] != [v.segments for v in b.videos]
    assert fingerprint(a) != fingerprint(b)


def test_generation_uses_no_global_rng():
    np.random.seed(0)
    a = fingerprint(make_synthetic(SyntheticConfig(**SMALL)))
    np.random.seed(123)
    np.random.random(1000)
    assert fingerprint(make_synthetic(SyntheticConfig(**SMALL))) == a


# ------------------------------------------------------------------ shape and ground truth


def test_default_is_thumos_shaped(default):
    ds, _ = default
    cfg = SyntheticConfig()
    assert ds.num_classes == 20 and "PoleVault" in ds.classes
    assert (ds.train_subset, ds.test_subset) == ("validation", "test")
    assert len(ds.train) == 200 and len(ds.test) == 200 and len(ds.videos) == 400
    assert ds.rgb_dim == 64 and ds.feature_dim == 128 and ds.frames_per_snippet == 16
    assert len({v.name for v in ds.videos}) == 400
    lengths = np.array([v.num_snippets for v in ds.videos])
    assert lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len
    assert lengths.std() > 30  # lengths really vary
    per_video = np.array([len(v.segments) for v in ds.videos])
    assert per_video.min() >= 1 and per_video.mean() > 2.5  # several instances per video
    two = sum(len(v.labels) == 2 for v in ds.videos)
    assert 0.1 * 400 < two < 0.35 * 400  # mostly one class, some two, like THUMOS
    assert {c for v in ds.train for c in v.labels} == set(range(20))
    assert {c for v in ds.test for c in v.labels} == set(range(20))


def test_features_and_annotations_consistent(default):
    ds, truth = default
    cfg = SyntheticConfig()
    for v in ds.videos:
        assert v.features.dtype == np.float32 and v.features.shape == (v.num_snippets, 128)
        assert np.isfinite(v.features).all()
        assert v.fps == 25.0
        assert v.duration == pytest.approx(v.num_snippets * 16 / 25.0)
        assert v.labels == tuple(sorted({s.label for s in v.segments}))
        assert 1 <= len(v.labels) <= 2
        prev_end = -1.0
        for s in v.segments:  # sorted, inside the video, disjoint, on snippet boundaries
            assert 0 <= s.start < s.end <= v.duration + 1e-9
            assert s.start >= prev_end
            prev_end = s.end
            a, b = s.start * v.fps / 16, s.end * v.fps / 16
            assert abs(a - round(a)) < 1e-9 and abs(b - round(b)) < 1e-9
            assert cfg.min_instance_len <= round(b) - round(a) <= cfg.max_instance_len
        # actionness is exactly the planted instances
        fg = actionness(v)
        assert fg.shape == (v.num_snippets,) and fg.dtype == np.float32
        np.testing.assert_array_equal(fg, truth.layouts[v.name].region == ACTION)
        assert fg.sum() == sum(round((s.end - s.start) * v.fps / 16) for s in v.segments)


def test_ground_truth_json_matches(default):
    ds, _ = default
    gt = ds.ground_truth("test")["database"]
    assert len(gt) == 200
    v = ds.test[0]
    assert [a["label"] for a in gt[v.name]["annotations"]] == \
        [ds.classes[s.label] for s in v.segments]


def test_vocabulary_for_every_class(default):
    ds, _ = default
    assert set(ds.vocabulary) == set(ds.classes)
    for words in ds.vocabulary.values():
        assert words["verbs"] and words["objects"] and len(words["subactions"]) == 3
        assert all(isinstance(w, str) and w for k in ("verbs", "objects", "subactions")
                   for w in words[k])
    assert {"run", "plant", "vault"} <= set(ds.vocabulary["PoleVault"]["verbs"])
    assert "pole" in ds.vocabulary["PoleVault"]["objects"]
    # a shared sub-action uses the same word in every class that has it
    assert ds.vocabulary["PoleVault"]["subactions"][0] == "run-up"
    assert ds.vocabulary["HighJump"]["subactions"][0] == "run-up"


def test_more_classes_than_the_table_and_other_widths():
    ds = make_synthetic(SyntheticConfig(num_classes=25, rgb_dim=32, flow_dim=16,
                                        train_videos=30, test_videos=5))
    assert ds.num_classes == 25 and len(set(ds.classes)) == 25
    assert ds.rgb_dim == 32 and ds.feature_dim == 48
    assert set(ds.vocabulary) == set(ds.classes)
    assert len(class_table(25)) == 25


def test_crowded_videos_still_fit():
    # shortest allowed video for the longest instance, many instances asked for
    cfg = SyntheticConfig(min_len=30, max_len=30, max_instance_len=16, context_len=6,
                          max_instances=50, second_class_prob=1.0, hard_negative_prob=1.0,
                          train_videos=10, test_videos=10)
    ds, truth = generate(cfg)
    for v in ds.videos:
        assert v.num_snippets == 30 and len(v.segments) >= 1
        lay = truth.layouts[v.name]
        assert (lay.region == ACTION).sum() == actionness(v).sum()


# ------------------------------------------------------------------ the WTAL difficulties


def _snippets(ds: WTALDataset, truth, subset: str, select) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for v in ds.split(subset):
        lay = truth.layouts[v.name]
        m = select(lay)
        xs.append(v.features[m])
        ys.append(lay.cls[m])
    return np.concatenate(xs), np.concatenate(ys)


def _ncm_accuracy(ds: WTALDataset, truth, select, cols: slice) -> float:
    """Nearest-class-mean accuracy: means from train snippets, scored on test snippets."""
    xa, ya = _snippets(ds, truth, ds.train_subset, select)
    xb, yb = _snippets(ds, truth, ds.test_subset, select)
    classes = np.unique(ya)
    mu = np.stack([xa[ya == c][:, cols].mean(0) for c in classes])
    d = ((xb[:, cols, None] - mu.T[None]) ** 2).sum(1)
    return float((classes[d.argmin(1)] == yb).mean())


def _is_core(truth):
    core = truth.prototypes.class_phases[:, 1]
    return lambda lay: (lay.region == ACTION) & (lay.phase == core[np.maximum(lay.cls, 0)])


def _is_side(truth):
    core = truth.prototypes.class_phases[:, 1]
    return lambda lay: (lay.region == ACTION) & (lay.phase != core[np.maximum(lay.cls, 0)])


def _is_context(lay) -> np.ndarray:
    # skip the context snippet touching an item: temporal smoothing blends action into it
    busy = lay.region >= ACTION
    near = np.zeros_like(busy)
    near[1:] |= busy[:-1]
    near[:-1] |= busy[1:]
    return (lay.region == CONTEXT) & ~near


def test_context_has_class_scene_in_rgb_but_no_motion_in_flow(default):
    """Over-complete localisation: RGB context predicts the class, its flow does not."""
    ds, truth = default
    rgb, flow = slice(0, ds.rgb_dim), slice(ds.rgb_dim, None)
    chance = 1 / ds.num_classes
    assert _ncm_accuracy(ds, truth, _is_context, rgb) > 0.5
    assert _ncm_accuracy(ds, truth, _is_context, flow) < 2 * chance
    # and the context RGB lies along its own class scene direction, not others'
    x, y = _snippets(ds, truth, "test", _is_context)
    proj = x[:, rgb] @ truth.prototypes.scene.T
    own = proj[np.arange(len(y)), y].mean()
    assert own > 0.5 and own > 5 * np.abs(proj.mean())
    # context flow carries no more action motion than plain background
    motion = truth.prototypes.motion
    bg_x, _ = _snippets(ds, truth, "test", lambda lay: lay.region == 0)
    assert np.abs(x[:, flow] @ motion.T).mean() < 1.2 * np.abs(bg_x[:, flow] @ motion.T).mean()


def test_core_is_separable_shared_phases_are_not(default):
    """Incomplete localisation: the core identifies the class; approach/follow hardly do."""
    ds, truth = default
    flow, every = slice(ds.rgb_dim, None), slice(None)
    core_flow = _ncm_accuracy(ds, truth, _is_core(truth), flow)
    side_flow = _ncm_accuracy(ds, truth, _is_side(truth), flow)
    assert core_flow > 0.7
    assert side_flow < core_flow - 0.4
    assert _ncm_accuracy(ds, truth, _is_core(truth), every) > \
        _ncm_accuracy(ds, truth, _is_side(truth), every)


def test_shared_subactions_are_the_same_direction(default):
    ds, truth = default
    p = truth.prototypes
    hj, pv = ds.classes.index("HighJump"), ds.classes.index("PoleVault")
    assert p.class_phases[hj, 0] == p.class_phases[pv, 0]  # both start with the run-up
    assert p.class_phases[hj, 1] != p.class_phases[pv, 1]
    flow = slice(ds.rgb_dim, None)

    def mean_flow(cls: int, phase: int) -> np.ndarray:
        """Mean flow of the phase's snippets minus its video's background (camera) flow."""
        diffs = []
        for v in ds.videos:
            lay = truth.layouts[v.name]
            m = (lay.cls == cls) & (lay.phase == phase) & (lay.region == ACTION)
            if m.any():
                bg = v.features[lay.region == 0][:, flow].mean(0)
                diffs.append(v.features[m][:, flow] - bg)
        mean = np.concatenate(diffs).mean(0)
        return mean / np.linalg.norm(mean)

    run_up = p.class_phases[hj, 0]
    # same direction up to noise (a few hundred snippets each), unlike the two cores
    assert mean_flow(hj, run_up) @ mean_flow(pv, run_up) > 0.7
    assert abs(mean_flow(hj, p.class_phases[hj, 1]) @ mean_flow(pv, p.class_phases[pv, 1])) < 0.3


def test_non_core_phases_are_weaker(default):
    ds, truth = default
    flow = slice(ds.rgb_dim, None)

    def own_motion(select) -> float:
        """Mean projection of a snippet's flow onto its own sub-action's motion direction."""
        proj = []
        for v in ds.train:
            lay = truth.layouts[v.name]
            m = select(lay)
            proj.append(np.einsum("td,td->t", v.features[m][:, flow],
                                  truth.prototypes.motion[lay.phase[m]]))
        return float(np.concatenate(proj).mean())

    core, side = own_motion(_is_core(truth)), own_motion(_is_side(truth))
    assert side < 0.8 * core and side > 0.2


def test_without_sharing_no_phase_is_shared():
    cfg = SyntheticConfig(shared_subactions=False, **SMALL)
    _, truth = generate(cfg)
    cp = truth.prototypes.class_phases
    assert len(np.unique(cp)) == cp.size
    _, shared = generate(SyntheticConfig(**SMALL))
    assert len(np.unique(shared.prototypes.class_phases)) < shared.prototypes.class_phases.size


def test_hard_negatives_are_unannotated_shared_phases(default):
    ds, truth = default
    with_neg = [v for v in ds.videos if (truth.layouts[v.name].region == HARD_NEGATIVE).any()]
    assert 0.1 * 400 < len(with_neg) < 0.3 * 400
    cp = truth.prototypes.class_phases
    for v in with_neg:
        lay = truth.layouts[v.name]
        neg = lay.region == HARD_NEGATIVE
        assert actionness(v)[neg].sum() == 0  # not ground truth
        c = int(lay.cls[neg][0])
        assert c in v.labels  # in the venue of the video's own class
        assert set(np.unique(lay.phase[neg])) <= {cp[c, 0], cp[c, 2]}  # never the core
    none = generate(SyntheticConfig(hard_negative_prob=0.0, **SMALL))[1]
    assert all(not (lay.region == HARD_NEGATIVE).any() for lay in none.layouts.values())


def test_noise_knob_controls_noise():
    a = make_synthetic(SyntheticConfig(noise=0.0, smoothing=1, **SMALL))
    b = make_synthetic(SyntheticConfig(noise=1.0, smoothing=1, **SMALL))
    # each stream is scaled by sqrt(width); undone here, a background snippet without noise
    # is an exact mix of a few unit prototypes
    def unscaled(ds):
        f = ds.videos[0].features.copy()
        f[:, : ds.rgb_dim] /= np.sqrt(ds.rgb_dim)
        f[:, ds.rgb_dim:] /= np.sqrt(f.shape[1] - ds.rgb_dim)
        return f

    assert np.linalg.norm(unscaled(a), axis=1).max() < 5
    assert np.linalg.norm(unscaled(b), axis=1).mean() > 8  # ~sqrt(128)


# ------------------------------------------------------------------ config validation


def test_every_field_has_metadata():
    for f in dataclasses.fields(SyntheticConfig):
        assert f.metadata.get("help"), f.name
        assert "choices" in f.metadata or ("min" in f.metadata and "max" in f.metadata), f.name
        default = f.default
        if "choices" in f.metadata:
            assert default in f.metadata["choices"]
        else:
            assert f.metadata["min"] <= default <= f.metadata["max"], f.name


_NUMERIC = [f for f in dataclasses.fields(SyntheticConfig) if "min" in f.metadata]


@pytest.mark.parametrize("f", _NUMERIC, ids=lambda f: f.name)
def test_out_of_range_names_the_field(f):
    lo, hi = f.metadata["min"], f.metadata["max"]
    step = 1 if isinstance(lo, int) else 0.5
    for bad in (lo - step, hi + step):
        with pytest.raises(ValueError, match=rf"synthetic\.{f.name}\b"):
            SyntheticConfig(**{f.name: bad})


def test_bad_values_rejected():
    with pytest.raises(ValueError, match=r"synthetic\.noise"):
        SyntheticConfig(noise=math.nan)
    with pytest.raises(ValueError, match=r"synthetic\.shared_subactions"):
        SyntheticConfig(shared_subactions="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"synthetic\.min_len"):
        SyntheticConfig(min_len=200, max_len=100)
    with pytest.raises(ValueError, match=r"synthetic\.min_instance_len"):
        SyntheticConfig(min_instance_len=20, max_instance_len=10)
    with pytest.raises(ValueError, match=r"synthetic\.min_len"):
        SyntheticConfig(min_len=40, max_instance_len=30, context_len=6)


def test_config_is_frozen():
    cfg = SyntheticConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
