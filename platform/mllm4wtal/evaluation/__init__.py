"""Detection mAP@tIoU with the ActivityNet protocol (kept apart from the models)."""

from mllm4wtal.evaluation.detection import (
    ACTIVITYNET_TIOUS,
    THUMOS14_TIOUS,
    DetectionResult,
    average_metric_name,
    average_precision_matrix,
    evaluate_detection,
    evaluate_files,
    interpolated_ap,
    segment_iou,
    tiou_key,
)
from mllm4wtal.evaluation.io import (
    EvaluationInputError,
    load_ground_truth,
    load_predictions,
    parse_ground_truth,
    parse_predictions,
    parse_tiou_range,
)

__all__ = [
    "ACTIVITYNET_TIOUS",
    "THUMOS14_TIOUS",
    "DetectionResult",
    "EvaluationInputError",
    "average_metric_name",
    "average_precision_matrix",
    "evaluate_detection",
    "evaluate_files",
    "interpolated_ap",
    "load_ground_truth",
    "load_predictions",
    "parse_ground_truth",
    "parse_predictions",
    "parse_tiou_range",
    "segment_iou",
    "tiou_key",
]
