"""The three data roles: ``train``, ``select`` and ``test``.

``select`` is what chooses: ``best.pt``, a sweep's best trial, an ablation's cells. ``test`` is
reported for what was chosen and never chooses. By default ``select`` is a seeded,
class-stratified hold-out of the training subset (``data.select: holdout``), carved out of
training; it depends only on the training videos' names and labels, the fraction and the seed,
so every trial of a sweep gets the same one. ``data.select: test`` is the field's protocol
(every THUMOS14 code base picks its checkpoint by test mAP) and is labelled so wherever it
appears.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np

from mllm4wtal.data.types import Video, WTALDataset

if TYPE_CHECKING:
    from mllm4wtal.config import DataConfig

HOLDOUT, TEST = "holdout", "test"


def holdout_names(videos: list[Video], fraction: float, seed: int) -> tuple[str, ...]:
    """Names of the videos held out for ``select``, sorted.

    Stratified by each video's rarest label (the usual multi-label shortcut; videos without
    a label form a group of their own): ``round(fraction * len(videos))`` videos in all,
    shared among the groups in proportion to their sizes (largest remainders), never a whole
    group, so that every class keeps training videos; within a group the draw is seeded.
    """
    counts: dict[int, int] = {}
    for v in videos:
        for c in v.labels:
            counts[c] = counts.get(c, 0) + 1
    groups: dict[int, list[str]] = {}
    for v in videos:
        key = min(v.labels, key=lambda c: (counts[c], c)) if v.labels else -1
        groups.setdefault(key, []).append(v.name)
    keys = sorted(groups)
    quota = {k: fraction * len(groups[k]) for k in keys}
    take = {k: min(int(quota[k]), len(groups[k]) - 1) for k in keys}
    left = round(fraction * len(videos)) - sum(take.values())
    for k in sorted(keys, key=lambda k: (take[k] - quota[k], k)):  # largest remainder first
        if left <= 0:
            break
        if take[k] < len(groups[k]) - 1:
            take[k] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for k in keys:
        names = sorted(groups[k])
        held += [names[i] for i in sorted(rng.permutation(len(names))[:take[k]])]
    return tuple(sorted(held))


def assign_roles(dataset: WTALDataset, dc: DataConfig) -> WTALDataset:
    """``dataset`` with the roles ``dc`` asks for (the videos are shared, not copied); the same
    dataset back when it has them already."""
    holdout = dc.select == HOLDOUT
    roles = (dc.select, dc.select_fraction if holdout else 0.0, dc.select_seed if holdout else 0)
    if dataset.select_roles == roles:
        return dataset
    names = (holdout_names(dataset.split(dataset.train_subset), dc.select_fraction,
                           dc.select_seed) if holdout else ())
    return dataclasses.replace(dataset, select_protocol=dc.select,
                               select_names=frozenset(names), select_roles=roles)


def split_hash(names: list[str]) -> str:
    """A short fingerprint of a list of video names (order-free)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def split_record(dataset: WTALDataset) -> dict:
    """What a run records of its split (``split.json``, MLflow tags): the protocol, the
    hold-out's parameters, the ``select`` videos and a hash of each role."""
    protocol, fraction, seed = dataset.select_roles
    select = [v.name for v in dataset.select]
    train = [v.name for v in dataset.train]
    return {"select": protocol, "fraction": fraction, "seed": seed,
            "description": describe(dataset),
            "select_videos": select, "select_hash": split_hash(select),
            "train_count": len(train), "train_hash": split_hash(train),
            "test_count": len(dataset.test),
            "test_hash": split_hash([v.name for v in dataset.test])}


def describe(dataset: WTALDataset) -> str:
    """The ``select`` role in words, for every place that shows a selected figure."""
    protocol, fraction, seed = dataset.select_roles
    if protocol == TEST:
        return (f"test subset '{dataset.test_subset}' (the field's protocol: chosen on the "
                "test videos)")
    return (f"hold-out of {fraction:.0%} of the training videos (seed {seed}, "
            f"{len(dataset.select_names)} videos, not trained on)")
