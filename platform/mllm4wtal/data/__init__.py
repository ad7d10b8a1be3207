"""Datasets: shared types, safe loaders (W-TALC .npy, per-video, packed), batching."""

from .batching import (
    TrainBatchSampler,
    iter_test_videos,
    multi_hot,
    pad_batch,
    sample_indices,
    sample_snippets,
)
from .features import load_packed, load_per_video, pack, read_json_gt
from .info import dataset_info
from .types import Segment, Video, WTALDataset
from .unpickle import UnsafeFileError, decode_strings, load_npy
from .validate import DataError, DataWarning, validate_dataset
from .wtal_format import infer_subsets, load_wtal, read_annotation_dir, save_wtal

__all__ = [
    "DataError",
    "DataWarning",
    "Segment",
    "TrainBatchSampler",
    "UnsafeFileError",
    "Video",
    "WTALDataset",
    "dataset_info",
    "decode_strings",
    "infer_subsets",
    "iter_test_videos",
    "load_npy",
    "load_packed",
    "load_per_video",
    "load_wtal",
    "multi_hot",
    "pack",
    "pad_batch",
    "read_annotation_dir",
    "read_json_gt",
    "sample_indices",
    "sample_snippets",
    "save_wtal",
    "validate_dataset",
]
