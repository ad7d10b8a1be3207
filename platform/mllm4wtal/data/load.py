"""One entry point from the ``data`` config section to a validated ``WTALDataset``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mllm4wtal.data.features import load_packed, load_per_video
from mllm4wtal.data.splits import assign_roles
from mllm4wtal.data.synthetic import make_synthetic
from mllm4wtal.data.types import WTALDataset
from mllm4wtal.data.validate import DataError
from mllm4wtal.data.wtal_format import load_wtal

if TYPE_CHECKING:
    from mllm4wtal.config import DataConfig


def load_from_config(dc: DataConfig) -> WTALDataset:
    """Build (synthetic) or load the dataset the config names, with its roles (train,
    select, test: ``data.splits``); checks the feature width."""
    if dc.format == "synthetic":
        return assign_roles(make_synthetic(dc.synthetic), dc)
    if not dc.root:
        raise DataError(f"data.format = '{dc.format}' needs data.root: pass "
                        "--set data.root=/path/to/features")
    common = dict(expected_dim=dc.feature_dim, train_subset=dc.train_subset,
                  test_subset=dc.test_subset)
    if dc.format == "wtal":
        ds = load_wtal(dc.root, dc.name, fps=dc.fps, frames_per_snippet=dc.frames_per_snippet,
                       rgb_dim=dc.rgb_dim, **common)
    elif dc.format == "per_video":
        ds = load_per_video(dc.root, dc.name or None, fps=dc.fps,
                            frames_per_snippet=dc.frames_per_snippet, **common)
    else:
        ds = load_packed(dc.root, expected_dim=dc.feature_dim)
    return assign_roles(ds, dc)
