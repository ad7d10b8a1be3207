"""Loaders, validation and the restricted unpickler (mllm4wtal.data)."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from mllm4wtal.config import ConfigError, DataConfig, load_config
from mllm4wtal.data import (
    DataError,
    DataWarning,
    Segment,
    UnsafeFileError,
    Video,
    WTALDataset,
    dataset_info,
    load_npy,
    load_packed,
    load_per_video,
    load_wtal,
    pack,
    read_annotation_dir,
    save_wtal,
)
from mllm4wtal.data.load import load_from_config

DATA = Path(__file__).parent / "data"
THUMOS = DATA / "thumos14reduced"
ANET = DATA / "activitynet12"
DIM = 8

# Instance counts per subset, computed once from the raw segments.npy files
# (with an unrestricted numpy load, outside the project) to pin the published annotations.
THUMOS_INSTANCES = {"validation": 3007, "test": 3358}
ANET_INSTANCES = {"training": 7151, "validation": 3582}


# ----------------------------------------------------------------------------- helpers


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def _write_features(root: Path, name: str, n: int, dim: int = DIM, seed: int = 0) -> None:
    """Random (T_i in 4..8, dim) features for n videos, as the W-TALC object array."""
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((int(t), dim)).astype(np.float32)
             for t in rng.integers(4, 9, size=n)]
    np.save(root / f"{name}-I3D-JOINTFeatures.npy", _object_array(feats))


def data_config(**data: object) -> DataConfig:
    """The ``data`` section as the CLI builds it: a preset plus ``--set data.k=v``."""
    return load_config("synthetic", [f"data.{k}={v}" for k, v in data.items()]).data


def _real_root(tmp: Path, src: Path, name: str) -> Path:
    """tmp root with the committed annotations (symlinked) + synthetic features."""
    root = tmp / name
    root.mkdir()
    (root / f"{name}-Annotations").symlink_to((src / f"{name}-Annotations").resolve())
    n = len(np.load(src / f"{name}-Annotations" / "videoname.npy"))
    _write_features(root, name, n)
    return root


def make_dataset(n_train: int = 6, n_test: int = 4, dim: int = DIM, seed: int = 0,
                 num_classes: int = 3) -> WTALDataset:
    """Small synthetic dataset with segments inside each video."""
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n_train + n_test):
        t = int(rng.integers(5, 12))
        dur = t * 16 / 25.0
        labs = sorted({int(rng.integers(num_classes)), int(rng.integers(num_classes))})
        segs = tuple(Segment(round(0.1 * k, 3), round(0.1 * k + 1.0, 3), lab)
                     for k, lab in enumerate(labs))
        videos.append(Video(
            name=f"vid_{i:03d}",
            subset="validation" if i < n_train else "test",
            features=rng.standard_normal((t, dim)).astype(np.float32),
            labels=tuple(labs),
            segments=segs,
            duration=dur,
            fps=25.0,
        ))
    return WTALDataset(
        name="toy",
        classes=[f"class_{c}" for c in range(num_classes)],
        videos=videos,
        train_subset="validation",
        test_subset="test",
        rgb_dim=dim // 2,
        ambiguous={"vid_007": [(0.5, 1.5), (2.0, 2.5)]},
        vocabulary={"class_0": {"verbs": ["throw"], "objects": ["ball"]}},
    )


@pytest.fixture(scope="module")
def thumos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _real_root(tmp_path_factory.mktemp("thumos"), THUMOS, "Thumos14reduced")


@pytest.fixture(scope="module")
def anet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _real_root(tmp_path_factory.mktemp("anet"), ANET, "ActivityNet1.2")


@pytest.fixture()
def toy_root(tmp_path: Path) -> Path:
    save_wtal(make_dataset(), tmp_path, "toy")
    return tmp_path


def _assert_same(a: WTALDataset, b: WTALDataset, atol: float = 0.0) -> None:
    assert a.classes == b.classes
    assert (a.train_subset, a.test_subset) == (b.train_subset, b.test_subset)
    assert a.rgb_dim == b.rgb_dim
    assert [v.name for v in a.videos] == [v.name for v in b.videos]
    for va, vb in zip(a.videos, b.videos, strict=True):
        assert va.subset == vb.subset
        assert va.labels == vb.labels
        assert va.segments == vb.segments
        assert va.duration == pytest.approx(vb.duration)
        np.testing.assert_allclose(np.asarray(va.features, np.float32),
                                   np.asarray(vb.features, np.float32), atol=atol, rtol=atol)
    assert {k: [tuple(s) for s in v] for k, v in a.ambiguous.items()} == b.ambiguous


# ----------------------------------------------------------------------- real annotations


def test_thumos14_reduced_published_counts(thumos_root: Path) -> None:
    with pytest.warns(DataWarning, match="29 segment.*in 5 video.*start after the video ends"):
        ds = load_wtal(thumos_root, "Thumos14reduced", expected_dim=DIM)
    assert ds.num_classes == 20
    assert (ds.train_subset, ds.test_subset) == ("validation", "test")
    assert len(ds.train) == 200 and len(ds.test) == 212 and len(ds.videos) == 412
    for subset, n in THUMOS_INSTANCES.items():
        assert sum(len(v.segments) for v in ds.split(subset)) == n
    # the same from the raw arrays, via the restricted reader
    ann = THUMOS / "Thumos14reduced-Annotations"
    segs, subs = load_npy(ann / "segments.npy"), load_npy(ann / "subset.npy")
    for subset, n in THUMOS_INSTANCES.items():
        assert sum(len(s) for s, b in zip(segs, subs, strict=True) if b.decode() == subset) == n
    assert sum(len(v) for v in ds.ambiguous.values()) == 99  # lines of Ambiguous_test.txt
    assert all(name.startswith("video_test_") for name in ds.ambiguous)
    assert ds.classes[0] == "BaseballPitch"
    # video labels are labels_all.npy as published; it is empty for one test video
    assert [v.name for v in ds.videos if not v.labels] == ["video_test_0000270"]
    assert all(v.features.dtype == np.float32 and v.features.shape[1] == DIM for v in ds.videos)


def test_activitynet12_published_counts(anet_root: Path) -> None:
    t0 = time.perf_counter()
    ds = load_wtal(anet_root, "ActivityNet1.2", expected_dim=DIM)
    assert time.perf_counter() - t0 < 20  # 7202 arrays through the restricted unpickler
    assert ds.num_classes == 100
    assert (ds.train_subset, ds.test_subset) == ("training", "validation")
    assert len(ds.train) == 4819 and len(ds.test) == 2383
    for subset, n in ANET_INSTANCES.items():
        assert sum(len(v.segments) for v in ds.split(subset)) == n
    assert ds.ambiguous == {}


def test_strict_segments_rejects_published_thumos_errors(thumos_root: Path) -> None:
    with pytest.raises(DataError, match="video_validation_0000364.*starts after the video ends"):
        load_wtal(thumos_root, "Thumos14reduced", strict_segments=True)


def test_subset_override(anet_root: Path) -> None:
    ds = load_wtal(anet_root, "ActivityNet1.2", train_subset="validation",
                   test_subset="training")
    assert len(ds.train) == 2383 and len(ds.test) == 4819


def test_dataset_info(anet_root: Path) -> None:
    text = dataset_info(load_wtal(anet_root, "ActivityNet1.2"))
    assert "7202 videos, 100 classes" in text
    assert "training (train): 4819 videos, 7151 instances" in text
    assert "validation (test): 2383 videos, 3582 instances" in text
    assert "snippets/video: min 4," in text and "max 8" in text
    assert "feature width 8 (rgb 4 + flow 4)" in text
    assert "ambiguous segments: 0" in text


# ------------------------------------------------------------------------- round trips


def test_save_load_wtal_round_trip(tmp_path: Path) -> None:
    ds = make_dataset()
    save_wtal(ds, tmp_path, "toy")
    back = load_wtal(tmp_path, "toy", expected_dim=DIM)
    _assert_same(ds, back)


def test_pack_load_packed_round_trip_is_memmapped(tmp_path: Path) -> None:
    ds = make_dataset()
    pack(ds, tmp_path / "packed")
    assert sorted(os.listdir(tmp_path / "packed")) == ["features.f16", "index.json"]
    t0 = time.perf_counter()
    back = load_packed(tmp_path / "packed")
    assert time.perf_counter() - t0 < 1.0
    _assert_same(ds, back, atol=1e-3)  # float16
    assert back.vocabulary == ds.vocabulary
    assert back.name == "toy" and back.frames_per_snippet == 16
    for v in back.videos:
        assert isinstance(v.features, np.memmap)
        assert v.features.dtype == np.float16 and not v.features.flags.writeable
    # views into one mapping, consecutive: no per-video copy
    base = back.videos[0].features
    assert np.shares_memory(back.videos[1].features, np.asarray(base.base))
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert index["version"] == 1 and index["rows"] == sum(v.num_snippets for v in ds.videos)
    assert [m["offset"] for m in index["videos"]][:2] == [0, ds.videos[0].num_snippets]


def test_packed_file_contains_no_pickle(tmp_path: Path) -> None:
    pack(make_dataset(), tmp_path)
    raw = (tmp_path / "features.f16").read_bytes()
    assert len(raw) == sum(v.num_snippets for v in make_dataset().videos) * DIM * 2


def test_pack_real_thumos_via_config(thumos_root: Path, tmp_path: Path) -> None:
    # the path `mllm4wtal train --set data.format=wtal ...` takes, then packed and reloaded
    wtal = data_config(format="wtal", root=thumos_root, name="Thumos14reduced",
                       feature_dim=DIM, rgb_dim=3, fps=30.0)
    with pytest.warns(DataWarning):
        ds = load_from_config(wtal)
    assert ds.rgb_dim == 3 and {v.fps for v in ds.videos} == {30.0}  # config reaches the loader
    with pytest.warns(DataWarning):
        pack(ds, tmp_path / "thumos")
    with pytest.warns(DataWarning):
        back = load_from_config(data_config(format="packed", root=tmp_path / "thumos",
                                            feature_dim=DIM, rgb_dim=3))
    assert len(back.split(back.train_subset)) == 200 and len(back.test) == 212
    assert len(back.train) == 170 and len(back.select) == 30  # the hold-out: 15 %
    _assert_same(ds, back, atol=2e-3)
    with pytest.raises(DataError, match="feature width 8, expected 16"):
        load_from_config(data_config(format="packed", root=tmp_path / "thumos",
                                     feature_dim=2 * DIM, rgb_dim=3))


def test_pack_refuses_float16_overflow(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.videos[2].features[1, 3] = 1e6
    with pytest.raises(DataError, match="vid_002.*float16 range"):
        pack(ds, tmp_path)
    assert not (tmp_path / "index.json").exists()


def test_packed_truncated_and_wrong_version(tmp_path: Path) -> None:
    pack(make_dataset(), tmp_path)
    idx = tmp_path / "index.json"
    index = json.loads(idx.read_text())
    index["version"] = 99
    idx.write_text(json.dumps(index))
    with pytest.raises(DataError, match="version 99.*re-run pack"):
        load_packed(tmp_path)
    pack(make_dataset(), tmp_path)
    feat = tmp_path / "features.f16"
    feat.write_bytes(feat.read_bytes()[:-2])
    with pytest.raises(DataError, match="bytes, expected .*truncated"):
        load_packed(tmp_path)
    (tmp_path / "index.json").unlink()
    with pytest.raises(DataError, match="missing .*index.json"):
        load_packed(tmp_path)


def _write_per_video(root: Path, ds: WTALDataset) -> None:
    half = ds.rgb_dim
    for v in ds.videos:
        split = "train" if v.subset == ds.train_subset else "test"
        for stream, cols in (("rgb", slice(0, half)), ("flow", slice(half, None))):
            d = root / split / stream
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"{v.name}.npy", v.features[:, cols])


def test_per_video_with_annotation_dir(tmp_path: Path) -> None:
    ds = make_dataset()
    save_wtal(ds, tmp_path, "toy")  # provides toy-Annotations
    (tmp_path / "toy-I3D-JOINTFeatures.npy").unlink()
    _write_per_video(tmp_path, ds)
    back = load_from_config(data_config(format="per_video", root=tmp_path, name="toy",
                                        feature_dim=DIM, rgb_dim=DIM // 2))
    _assert_same(ds, back)
    assert back.rgb_dim == DIM // 2
    with pytest.raises(DataError, match="vid_000' has feature width 8, expected 10"):
        load_from_config(data_config(format="per_video", root=tmp_path, name="toy",
                                     feature_dim=DIM + 2, rgb_dim=DIM // 2))


def test_per_video_with_json_gt_and_missing(tmp_path: Path) -> None:
    ds = make_dataset()
    _write_per_video(tmp_path, ds)
    gt = ds.ground_truth()
    gt["database"]["vid_000"].pop("duration")  # derived from snippets then
    gt["database"]["vid_001"]["annotations"][0]["segment"] = ["0.0", "1.0"]  # UM-style str
    gt["class-list"] = ds.classes
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    back = load_per_video(tmp_path)
    assert len(back.train) == 6 and len(back.test) == 4
    assert back.videos[0].duration == pytest.approx(ds.videos[0].num_snippets * 16 / 25)
    assert back.videos[1].segments[0].start == 0.0
    os.remove(tmp_path / "test" / "flow" / "vid_008.npy")
    with pytest.raises(DataError, match=r"missing .*test/flow/vid_008\.npy.*missing='skip'"):
        load_per_video(tmp_path)
    assert len(load_per_video(tmp_path, missing="skip").test) == 3


def test_unknown_format_and_missing_root() -> None:
    with pytest.raises(ConfigError, match="'data.format' = 'hdf5' is invalid; expected one of "
                                          "'synthetic', 'wtal', 'per_video', 'packed'"):
        data_config(format="hdf5")
    with pytest.raises(DataError, match="data.format = 'per_video' needs data.root: pass "
                                        "--set data.root="):
        load_from_config(data_config(format="per_video"))


# ------------------------------------------------------------------------ malformed input


def test_missing_annotation_file_lists_expected(toy_root: Path) -> None:
    (toy_root / "toy-Annotations" / "duration.npy").unlink()
    with pytest.raises(DataError) as err:
        load_wtal(toy_root, "toy")
    msg = str(err.value)
    assert "missing file(s)" in msg and "duration.npy" in msg
    assert "videoname.npy" in msg and "labels_all.npy" in msg  # the expected list


def test_missing_feature_file(toy_root: Path) -> None:
    (toy_root / "toy-I3D-JOINTFeatures.npy").unlink()
    with pytest.raises(DataError, match="expected .*toy-I3D-JOINTFeatures.npy.*missing"):
        load_wtal(toy_root, "toy")


def test_feature_count_mismatch(toy_root: Path) -> None:
    _write_features(toy_root, "toy", 7)
    with pytest.raises(DataError, match="holds 7 feature arrays but .*videoname.npy lists 10"):
        load_wtal(toy_root, "toy")


def test_wrong_feature_width(toy_root: Path) -> None:
    with pytest.raises(DataError, match="vid_000' has feature width 8, expected 2048"):
        load_wtal(toy_root, "toy", expected_dim=2048)
    ds = make_dataset()
    ds.videos[3] = Video(**{**ds.videos[3].__dict__, "features": np.zeros((5, 6), np.float32)})
    save_wtal(ds, toy_root, "toy")
    with pytest.raises(DataError, match="vid_003' has feature width 6, but the first video has 8"):
        load_wtal(toy_root, "toy")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_features_name_video_and_snippet(toy_root: Path, bad: float) -> None:
    ds = make_dataset()
    ds.videos[4].features[3, 1] = bad
    save_wtal(ds, toy_root, "toy")
    kind = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(DataError, match=f"vid_004' has {kind} features at snippet 3"):
        load_wtal(toy_root, "toy")


def test_label_not_in_class_list(toy_root: Path) -> None:
    ann = toy_root / "toy-Annotations"
    labels = load_npy(ann / "labels.npy")
    labels[2] = ["Juggling"] * len(labels[2])
    np.save(ann / "labels.npy", labels)
    with pytest.raises(DataError, match="vid_002' has label 'Juggling', which is not in the class"):
        load_wtal(toy_root, "toy")


@pytest.mark.parametrize(
    ("segment", "words"),
    [([-1.0, 0.5], "starts before 0"), ([2.0, 1.0], "ends before it starts")],
)
def test_segment_outside_video(toy_root: Path, segment: list[float], words: str) -> None:
    ann = toy_root / "toy-Annotations"
    segs = load_npy(ann / "segments.npy")
    segs[5] = [segment] + list(segs[5])[1:]
    np.save(ann / "segments.npy", segs)
    with pytest.raises(DataError, match=f"video 'vid_005' segment .*{words}"):
        load_wtal(toy_root, "toy")


def test_segment_after_end_warns_or_raises(toy_root: Path) -> None:
    ann = toy_root / "toy-Annotations"
    segs = load_npy(ann / "segments.npy")
    segs[1] = [[500.0, 501.0]] + list(segs[1])[1:]
    np.save(ann / "segments.npy", segs)
    with pytest.raises(DataError, match="video 'vid_001' segment .*starts after the video ends"):
        load_wtal(toy_root, "toy", strict_segments=True)
    with pytest.warns(DataWarning, match="1 segment.*vid_001"):
        ds = load_wtal(toy_root, "toy")
    assert ds.videos[1].segments[0].start == 500.0


# --------------------------------------------------------------------- restricted unpickle


def _npy_with_pickle(path: Path, payload: bytes, shape: tuple[int, ...] = (1,)) -> None:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": shape})
        fh.write(payload)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # protocol-0 pickle: os.system("touch <marker>")
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    evil = tmp_path / "evil.npy"
    _npy_with_pickle(evil, payload)
    with pytest.raises(UnsafeFileError) as err:
        load_npy(evil)
    msg = str(err.value)
    assert str(evil) in msg and "'os.system'" in msg
    assert "re-save" in msg and "packed format" in msg
    assert not marker.exists()


def test_malicious_global_nested_in_object_array(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (eval, ("1",))

    arr = _object_array([np.zeros(3), Evil()])
    evil = tmp_path / "toy-I3D-JOINTFeatures.npy"
    _npy_with_pickle(evil, pickle.dumps(arr, protocol=4), shape=(2,))
    with pytest.raises(UnsafeFileError, match="refused to unpickle global 'builtins.eval'"):
        load_npy(evil)


def test_unsafe_feature_file_stops_load_wtal(toy_root: Path) -> None:
    payload = b"cposix\nsystem\n(S'true'\ntR."
    _npy_with_pickle(toy_root / "toy-I3D-JOINTFeatures.npy", payload)
    with pytest.raises(UnsafeFileError, match="toy-I3D-JOINTFeatures.npy.*posix.system"):
        load_wtal(toy_root, "toy")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_reader_reads_numpy_pickles(tmp_path: Path, protocol: int) -> None:
    arr = _object_array([np.arange(6, dtype=np.float32).reshape(2, 3),
                         [np.float64(1.5), "x", b"y", np.int64(3)], None])
    p = tmp_path / "a.npy"
    _npy_with_pickle(p, pickle.dumps(arr, protocol=protocol), shape=(3,))
    back = load_npy(p)
    np.testing.assert_array_equal(back[0], arr[0])
    assert back[1] == [1.5, "x", b"y", 3] and back[2] is None


def test_python2_numpy_core_pickles_load() -> None:
    # the committed files are Python 2 pickles naming numpy.core.multiarray
    ann = read_annotation_dir(THUMOS / "Thumos14reduced-Annotations")
    assert ann.names[0] == "video_validation_0000051"
    assert ann.segments[0][0] == Segment(67.5, 75.9, ann.classes.index("Billiards"))


def test_plain_arrays_and_bad_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(4.0))
    np.testing.assert_array_equal(load_npy(tmp_path / "x.npy"), np.arange(4.0))
    assert isinstance(load_npy(tmp_path / "x.npy", mmap_mode="r"), np.memmap)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a .npy file"):
        load_npy(tmp_path / "junk.npy")
    with pytest.raises(DataError, match="file not found"):
        load_npy(tmp_path / "nope.npy")
    _npy_with_pickle(tmp_path / "trunc.npy", pickle.dumps(np.zeros(2, dtype=object))[:-5],
                     shape=(2,))
    with pytest.raises(DataError, match="could not read the object array"):
        load_npy(tmp_path / "trunc.npy")
