"""Snippet sampling and batches for WTAL training, as in W-TALC / CO2-Net.

Training batches hold ``batch_size`` videos: ``n_similar`` pairs of videos sharing a class
(the co-activity similarity loss needs them) and the rest drawn at random; each video longer
than ``max_seqlen`` is cut to ``max_seqlen`` snippets by random perturbation sampling, shorter
ones are zero-padded, with a mask saying which rows are real. Test videos go one at a time at
full length. Plain numpy + torch: any training loop can iterate these.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .types import Video, WTALDataset

__all__ = [
    "sample_indices",
    "sample_snippets",
    "pad_batch",
    "multi_hot",
    "TrainBatchSampler",
    "iter_test_videos",
]


def sample_indices(
    num_snippets: int, max_seqlen: int, rng: np.random.Generator, train: bool
) -> np.ndarray:
    """Snippet indices to keep, sorted.

    Training with ``num_snippets > max_seqlen``: the range is cut into ``max_seqlen`` equal
    bins and one index is drawn uniformly in each (CO2-Net ``random_perturb``; bins here are
    half-open, so indices are also unique). Otherwise (test, or short video): all indices.
    """
    if max_seqlen <= 0:
        raise UserError(f"max_seqlen must be positive, got {max_seqlen}.")
    if not train or num_snippets <= max_seqlen:
        return np.arange(num_snippets)
    # integer bin edges floor(i * T / n): exact, so the last edge is T
    edges = np.arange(max_seqlen + 1, dtype=np.int64) * num_snippets // max_seqlen
    # each bin is >= 1 wide because num_snippets > max_seqlen
    return rng.integers(edges[:-1], edges[1:])


def sample_snippets(
    features: np.ndarray, max_seqlen: int, rng: np.random.Generator, train: bool
) -> np.ndarray:
    """``features[sample_indices(...)]`` as float32 (at most ``max_seqlen`` rows in training).

    Shorter videos are returned as they are; :func:`pad_batch` pads them and masks the pad.
    """
    idx = sample_indices(int(features.shape[0]), max_seqlen, rng, train)
    return np.asarray(features[idx], dtype=np.float32)


def pad_batch(
    arrays: Sequence[np.ndarray], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(T_i, D)`` arrays into ``(B, T, D)`` float32 zeros-padded + ``(B, T)`` bool mask.

    ``T`` is ``length`` if given (it must be >= every ``T_i``), else the longest ``T_i``.
    """
    if not arrays:
        raise UserError("pad_batch needs at least one array.")
    dim = int(arrays[0].shape[1])
    lengths = [int(a.shape[0]) for a in arrays]
    t = max(lengths) if length is None else length
    if max(lengths) > t:
        raise UserError(f"pad_batch: an array has {max(lengths)} rows > length {t}.")
    feats = np.zeros((len(arrays), t, dim), dtype=np.float32)
    mask = np.zeros((len(arrays), t), dtype=bool)
    for i, (a, n) in enumerate(zip(arrays, lengths, strict=True)):
        feats[i, :n] = a  # converts float16 memmap rows on the way
        mask[i, :n] = True
    return torch.from_numpy(feats), torch.from_numpy(mask)


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """``(B, C)`` float multi-hot of video-level labels."""
    out = torch.zeros((len(labels), num_classes), dtype=torch.float32)
    for i, labs in enumerate(labels):
        if len(labs):
            out[i, list(labs)] = 1.0
    return out


class TrainBatchSampler:
    """Seeded, re-iterable source of class-balanced training batches.

    Each batch (dict):
        ``features``: (B, max_seqlen, D) float32 tensor; ``mask``: (B, max_seqlen) bool;
        ``labels``: (B, C) float multi-hot; ``indices``: (B,) long, positions in ``videos``;
        ``snippet_indices``: list of the sampled snippet indices per video;
        ``n_similar``: the number of leading pairs (rows 2k, 2k+1) that share a class.

    The first ``2 * n_similar`` rows are pairs of distinct videos sharing a class (class
    drawn among classes with >= 2 videos, without replacement while enough exist); the rest
    are drawn without replacement from all videos. Iterating twice gives the same batches;
    :meth:`set_epoch` changes the stream deterministically.
    """

    def __init__(
        self,
        videos: Sequence[Video],
        num_classes: int,
        *,
        batch_size: int,
        max_seqlen: int,
        n_similar: int = 0,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        if not videos:
            raise UserError("TrainBatchSampler: no training videos.")
        if batch_size <= 0 or n_similar < 0 or 2 * n_similar > batch_size:
            raise UserError(
                f"TrainBatchSampler: need batch_size > 0 and 0 <= 2*n_similar <= batch_size, "
                f"got batch_size={batch_size}, n_similar={n_similar}."
            )
        self.videos = list(videos)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.max_seqlen = max_seqlen
        self.seed = seed
        self.num_batches = num_batches
        self.epoch = 0
        by_class: dict[int, list[int]] = {}
        for i, v in enumerate(self.videos):
            for c in v.labels:
                by_class.setdefault(c, []).append(i)
        # only classes that can supply two distinct videos form pairs
        self.class_to_videos = {c: np.array(ix) for c, ix in sorted(by_class.items())
                                if len(ix) >= 2}
        self._pair_classes = np.array(list(self.class_to_videos), dtype=np.int64)
        if n_similar and not len(self._pair_classes):
            raise UserError(
                "TrainBatchSampler: n_similar > 0 but no class has two training videos; "
                "set n_similar=0."
            )
        self.n_similar = n_similar

    @classmethod
    def from_dataset(cls, ds: WTALDataset, **kw: Any) -> TrainBatchSampler:
        """Sampler over ``ds.train`` (``indices`` are positions in ``ds.train``)."""
        return cls(ds.train, ds.num_classes, **kw)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's stream (same seed and epoch -> same batches)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("infinite TrainBatchSampler (num_batches=None) has no length")
        return self.num_batches

    def choose_videos(self, rng: np.random.Generator) -> np.ndarray:
        """Video positions of one batch: the similar pairs first, then the random rest."""
        chosen: list[int] = []
        if self.n_similar:
            k = len(self._pair_classes)
            classes = rng.choice(self._pair_classes, size=self.n_similar,
                                 replace=self.n_similar > k)
            for c in classes:
                chosen.extend(rng.choice(self.class_to_videos[int(c)], size=2, replace=False))
        rest = self.batch_size - len(chosen)
        if rest:
            n = len(self.videos)
            chosen.extend(rng.choice(n, size=rest, replace=rest > n))
        return np.asarray(chosen, dtype=np.int64)

    def make_batch(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one batch with ``rng``."""
        idx = self.choose_videos(rng)
        snippet_idx, feats = [], []
        for i in idx:
            f = self.videos[int(i)].features
            s = sample_indices(int(f.shape[0]), self.max_seqlen, rng, train=True)
            snippet_idx.append(s)
            feats.append(f[s])
        features, mask = pad_batch(feats, length=self.max_seqlen)
        return {
            "features": features,
            "mask": mask,
            "labels": multi_hot([self.videos[int(i)].labels for i in idx], self.num_classes),
            "indices": torch.from_numpy(idx),
            "snippet_indices": snippet_idx,
            "n_similar": self.n_similar,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        step = 0
        while self.num_batches is None or step < self.num_batches:
            yield self.make_batch(rng)
            step += 1


def iter_test_videos(videos: Sequence[Video], num_classes: int) -> Iterator[dict[str, Any]]:
    """One full-length video at a time: ``features`` (1, T, D) float32, ``mask`` (1, T),
    ``labels`` (1, C), ``index`` (position in ``videos``) and the ``video`` itself."""
    for i, v in enumerate(videos):
        features, mask = pad_batch([v.features])
        yield {
            "features": features,
            "mask": mask,
            "labels": multi_hot([v.labels], num_classes),
            "index": i,
            "video": v,
        }
