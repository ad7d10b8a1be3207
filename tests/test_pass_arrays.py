"""The array-level pieces of the evaluation pass give what the Proposal-level ones give, and
its top-k mean is the losses' bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mllm4wtal.inference import (
    ProposalConfig,
    SnippetScores,
    remove_ambiguous,
    results_json,
)
from mllm4wtal.inference.evaluate import topk_mean
from mllm4wtal.inference.proposals import (
    generate_proposal_arrays,
    generate_proposals_many,
    overlaps_ambiguous,
    results_json_arrays,
)
from mllm4wtal.model import losses


@pytest.mark.parametrize("seed", range(3))
def test_topk_mean_is_the_losses_topk_mean(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 50, 6, generator=g).round(decimals=1)  # ties
    lengths = torch.tensor([50, 1, 7, 8, 9, 33, 16])
    mask = torch.arange(50)[None] < lengths[:, None]
    for divisor in (1, 3, 8):
        assert torch.equal(topk_mean(x, mask, divisor), losses.topk_mean(x, mask, divisor))
        # the logits' layout in the pass: a transposed view of (B, C, T)
        xt = x.transpose(1, 2).contiguous().transpose(1, 2)
        assert torch.equal(topk_mean(xt, mask, divisor), losses.topk_mean(xt, mask, divisor))


def test_array_proposals_results_and_ambiguous_removal_match_the_lists():
    rng = np.random.default_rng(0)
    videos = [SnippetScores(rng.normal(size=(t, 4)), rng.random(t), 25.0, t * 0.64)
              for t in (30, 1, 80, 55)]
    config = ProposalConfig()
    lists = list(generate_proposals_many(videos, config))
    arrays = list(generate_proposal_arrays(videos, config))
    assert [a.to_list() for a in arrays] == lists and sum(map(len, lists)) > 20
    classes = ["a", "b", "c", "d"]
    names = [f"v{i}" for i in range(len(videos))]
    assert (results_json_arrays(dict(zip(names, arrays, strict=True)), classes, "x")
            == results_json(dict(zip(names, lists, strict=True)), classes, "x"))
    ambiguous = [(1.0, 3.0), (20.0, 21.5)]
    for a, props in zip(arrays, lists, strict=True):
        kept = a.keep(~overlaps_ambiguous(a.start, a.end, ambiguous)).to_list()
        assert kept == remove_ambiguous(props, ambiguous)
