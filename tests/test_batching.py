"""Snippet sampling, padding and class-balanced batches (mllm4wtal.data.batching)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mllm4wtal.data import (
    Segment,
    TrainBatchSampler,
    Video,
    WTALDataset,
    iter_test_videos,
    load_packed,
    pack,
    pad_batch,
    sample_indices,
    sample_snippets,
)
from mllm4wtal.errors import UserError

DIM = 6
C = 5


def make_dataset(n_train: int = 20, n_test: int = 3, seed: int = 0) -> WTALDataset:
    """Videos of 3..40 snippets; every class has several training videos."""
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n_train + n_test):
        t = int(rng.integers(3, 41))
        labels = tuple(sorted({i % C, int(rng.integers(C))}))
        videos.append(Video(
            name=f"v{i}",
            subset="train" if i < n_train else "test",
            features=rng.standard_normal((t, DIM)).astype(np.float32),
            labels=labels,
            segments=tuple(Segment(0.0, 0.5, lab) for lab in labels),
            duration=t * 16 / 25,
            fps=25.0,
        ))
    return WTALDataset("toy", [f"c{k}" for k in range(C)], videos, "train", "test", DIM // 2)


# ------------------------------------------------------------------------------ sampling


@settings(max_examples=200, deadline=None)
@given(t=st.integers(1, 500), max_seqlen=st.integers(1, 120), seed=st.integers(0, 2**31))
def test_sample_indices_properties(t: int, max_seqlen: int, seed: int) -> None:
    idx = sample_indices(t, max_seqlen, np.random.default_rng(seed), train=True)
    if t <= max_seqlen:
        np.testing.assert_array_equal(idx, np.arange(t))
        return
    assert idx.shape == (max_seqlen,)
    assert idx.min() >= 0 and idx.max() < t
    assert np.all(np.diff(idx) > 0)  # sorted, unique
    # one index per equal-width bin (random perturbation sampling)
    edges = np.arange(max_seqlen + 1) * t // max_seqlen
    assert np.all((idx >= edges[:-1]) & (idx < edges[1:]))


def test_sample_indices_random_and_seeded() -> None:
    a = sample_indices(1000, 50, np.random.default_rng(1), train=True)
    b = sample_indices(1000, 50, np.random.default_rng(1), train=True)
    c = sample_indices(1000, 50, np.random.default_rng(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_test_mode_keeps_full_length() -> None:
    feats = np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float16)
    out = sample_snippets(feats, 50, np.random.default_rng(0), train=False)
    assert out.shape == (300, DIM) and out.dtype == np.float32
    np.testing.assert_array_equal(out, feats.astype(np.float32))


def test_sample_snippets_rows_match_indices() -> None:
    feats = np.arange(100 * DIM, dtype=np.float32).reshape(100, DIM)
    out = sample_snippets(feats, 10, np.random.default_rng(3), train=True)
    idx = sample_indices(100, 10, np.random.default_rng(3), train=True)
    np.testing.assert_array_equal(out, feats[idx])
    short = sample_snippets(feats[:7], 10, np.random.default_rng(3), train=True)
    assert short.shape == (7, DIM)  # not padded here; pad_batch pads and masks
    with pytest.raises(UserError, match="max_seqlen must be positive"):
        sample_indices(5, 0, np.random.default_rng(0), train=True)


def test_pad_batch_shapes_and_mask() -> None:
    arrays = [np.ones((3, DIM), np.float32), 2 * np.ones((5, DIM), np.float16)]
    feats, mask = pad_batch(arrays)
    assert feats.shape == (2, 5, DIM) and feats.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert feats[0, 3:].abs().sum() == 0 and feats[1].eq(2).all()
    feats, mask = pad_batch(arrays, length=8)
    assert feats.shape == (2, 8, DIM) and mask.sum(1).tolist() == [3, 5]
    with pytest.raises(UserError, match="rows > length"):
        pad_batch(arrays, length=4)


# ----------------------------------------------------------------------------- batches


def _as_tuple(batch: dict) -> tuple:
    return (batch["features"].numpy().tobytes(), batch["indices"].tolist(),
            [s.tolist() for s in batch["snippet_indices"]])


def test_train_batches_shapes_labels_and_content() -> None:
    ds = make_dataset()
    sampler = TrainBatchSampler.from_dataset(ds, batch_size=8, max_seqlen=16, n_similar=3,
                                             seed=0, num_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    train = ds.train
    for b in batches:
        assert b["features"].shape == (8, 16, DIM) and b["features"].dtype == torch.float32
        assert b["mask"].shape == (8, 16) and b["mask"].dtype == torch.bool
        assert b["labels"].shape == (8, C) and b["labels"].dtype == torch.float32
        assert b["indices"].shape == (8,) and b["indices"].dtype == torch.long
        for row, i in enumerate(b["indices"].tolist()):
            v = train[i]
            n = min(v.num_snippets, 16)
            assert b["mask"][row].sum() == n and b["mask"][row, :n].all()
            assert b["labels"][row].nonzero().flatten().tolist() == list(v.labels)
            idx = b["snippet_indices"][row]
            assert len(idx) == n and np.all(np.diff(idx) > 0) and idx.max() < v.num_snippets
            np.testing.assert_array_equal(b["features"][row, :n].numpy(), v.features[idx])
            assert b["features"][row, n:].abs().sum() == 0


def test_n_similar_pairs_share_a_class() -> None:
    ds = make_dataset()
    sampler = TrainBatchSampler.from_dataset(ds, batch_size=10, max_seqlen=8, n_similar=4,
                                             seed=5, num_batches=30)
    for b in sampler:
        assert b["n_similar"] == 4
        idx = b["indices"].tolist()
        for k in range(4):
            a, c = ds.train[idx[2 * k]], ds.train[idx[2 * k + 1]]
            assert idx[2 * k] != idx[2 * k + 1]
            assert set(a.labels) & set(c.labels)
            assert (b["labels"][2 * k] * b["labels"][2 * k + 1]).sum() >= 1


def test_batches_deterministic_for_a_seed() -> None:
    ds = make_dataset()

    def run(seed: int, epoch: int = 0) -> list[tuple]:
        s = TrainBatchSampler.from_dataset(ds, batch_size=6, max_seqlen=10, n_similar=2,
                                           seed=seed)
        s.set_epoch(epoch)
        return [_as_tuple(b) for b in itertools.islice(s, 4)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7, epoch=1) != run(7) and run(7, epoch=1) == run(7, epoch=1)
    s = TrainBatchSampler.from_dataset(ds, batch_size=6, max_seqlen=10, seed=7, num_batches=3)
    assert [_as_tuple(b) for b in s] == [_as_tuple(b) for b in s]  # re-iterable


def test_sampler_argument_errors() -> None:
    ds = make_dataset()
    with pytest.raises(UserError, match="2\\*n_similar <= batch_size"):
        TrainBatchSampler.from_dataset(ds, batch_size=4, max_seqlen=8, n_similar=3)
    lonely = [Video(f"x{i}", "train", np.zeros((4, DIM), np.float32), (i,), (), 1.0, 25.0)
              for i in range(3)]
    with pytest.raises(UserError, match="no class has two training videos"):
        TrainBatchSampler(lonely, 3, batch_size=2, max_seqlen=4, n_similar=1)
    with pytest.raises(TypeError, match="no length"):
        len(TrainBatchSampler(lonely, 3, batch_size=2, max_seqlen=4))


def test_batches_from_packed_memmap(tmp_path: Path) -> None:
    ds = make_dataset()
    pack(ds, tmp_path)
    packed = load_packed(tmp_path)
    s = TrainBatchSampler.from_dataset(packed, batch_size=4, max_seqlen=12, n_similar=1,
                                       seed=0, num_batches=2)
    for b in s:
        assert b["features"].dtype == torch.float32 and torch.isfinite(b["features"]).all()


def test_iter_test_videos_full_length() -> None:
    ds = make_dataset()
    items = list(iter_test_videos(ds.test, ds.num_classes))
    assert [it["index"] for it in items] == [0, 1, 2]
    for it, v in zip(items, ds.test, strict=True):
        assert it["features"].shape == (1, v.num_snippets, DIM)
        assert it["mask"].all() and it["video"] is v
        np.testing.assert_array_equal(it["features"][0].numpy(), v.features)
        assert it["labels"][0].nonzero().flatten().tolist() == list(v.labels)


def test_torch_training_loop_smoke() -> None:
    ds = make_dataset()
    model = torch.nn.Linear(DIM, C)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = TrainBatchSampler.from_dataset(ds, batch_size=4, max_seqlen=8, n_similar=1,
                                             seed=0, num_batches=3)
    for b in sampler:
        logits = model(b["features"])  # (B, T, C)
        m = b["mask"].unsqueeze(-1).float()
        video_logits = (logits * m).sum(1) / m.sum(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(video_logits, b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
