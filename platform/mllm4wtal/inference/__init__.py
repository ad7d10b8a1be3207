"""Proposals from snippet scores: thresholds, outer-inner score, soft-NMS (numpy only)."""

from mllm4wtal.inference.nms import soft_nms
from mllm4wtal.inference.proposals import (
    ProposalConfig,
    SnippetScores,
    contiguous_runs,
    generate_proposals,
    generate_proposals_many,
    outer_inner_score,
    remove_ambiguous,
    results_json,
    select_classes,
    video_level_scores,
)
from mllm4wtal.inference.segments import Proposal

__all__ = [
    "Proposal", "ProposalConfig", "SnippetScores", "contiguous_runs", "generate_proposals",
    "generate_proposals_many", "outer_inner_score",
    "remove_ambiguous", "results_json", "select_classes", "soft_nms", "video_level_scores",
]
