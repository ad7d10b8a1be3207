"""Human-readable summary of a loaded dataset (``mllm4wtal data info``)."""

from __future__ import annotations

import numpy as np

from .types import WTALDataset

__all__ = ["dataset_info"]


def dataset_info(ds: WTALDataset) -> str:
    """Videos and instances per subset, classes, snippet-length stats, width, ambiguous."""
    subsets = sorted({v.subset for v in ds.videos})
    lines = [f"dataset {ds.name}: {len(ds.videos)} videos, {ds.num_classes} classes"]
    for s in subsets:
        vids = ds.split(s)
        role = (" (train)" if s == ds.train_subset else "") + (
            " (test)" if s == ds.test_subset else "")
        n_inst = sum(len(v.segments) for v in vids)
        lines.append(f"  {s}{role}: {len(vids)} videos, {n_inst} instances")
    lengths = np.array([v.num_snippets for v in ds.videos], dtype=np.int64)
    if lengths.size:
        lines.append(
            f"  snippets/video: min {lengths.min()}, median {np.median(lengths):g}, "
            f"mean {lengths.mean():.1f}, max {lengths.max()}"
        )
    lines.append(
        f"  feature width {ds.feature_dim} (rgb {ds.rgb_dim} + flow "
        f"{ds.feature_dim - ds.rgb_dim}), {ds.frames_per_snippet} frames/snippet"
    )
    n_amb = sum(len(v) for v in ds.ambiguous.values())
    lines.append(f"  ambiguous segments: {n_amb} in {len(ds.ambiguous)} videos")
    return "\n".join(lines)
