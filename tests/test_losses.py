"""Each loss term against a value computed by hand on a tiny input."""

from __future__ import annotations

import math

import pytest
import torch
from mllm4wtal.model.loc_head import pseudo_labels
from mllm4wtal.model.losses import (
    attention_distill,
    diou_loss_1d,
    ksm_loss,
    masked_word_nll,
    mil_loss,
    sigmoid_focal_loss,
    topk_mean,
    with_background,
)


def test_topk_mean_respects_padding():
    x = torch.tensor([[[1.0], [5.0], [3.0], [100.0]]])  # last snippet is padding
    mask = torch.tensor([[True, True, True, False]])
    # k = max(1, 3 // 2) = 1 -> 5 ; with divisor 1, k = 3 -> (1 + 5 + 3) / 3
    assert topk_mean(x, mask, 2).item() == pytest.approx(5.0)
    assert topk_mean(x, mask, 1).item() == pytest.approx(3.0)


def test_mil_loss_by_hand():
    cas = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])  # (1, T=2, C+1=3)
    mask = torch.ones(1, 2, dtype=torch.bool)
    labels = torch.tensor([[1.0, 0.0]])
    # k = max(1, 2 // 8) = 1: scores (2, 0, 1); target (0.5, 0, 0.5) with background 1
    logz = math.log(math.exp(2) + 1 + math.exp(1))
    expected = -(0.5 * (2 - logz) + 0.5 * (1 - logz))
    got = mil_loss(cas, with_background(labels, 1.0), mask, 8)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ksm_loss_suppresses_with_attention():
    cas = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]])
    att = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    labels = torch.tensor([[1.0, 0.0]])
    out = ksm_loss(cas, att, labels, mask, 8)
    # M_hat = A * M = [[2, 0, 1], [0, 0, 0]]: top-1 per class (2, 0, 1); target (1, 0, 0)
    logz = math.log(math.exp(2) + 1 + math.exp(1))
    assert out["mil_supp"].item() == pytest.approx(-(2 - logz), rel=1e-6)


def test_attention_distillation_modes_and_stop_gradient():
    s = torch.tensor([[0.2, 0.8, 0.5]], requires_grad=True)
    t = torch.tensor([[0.4, 0.4, 0.9]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    assert attention_distill(s, t, mask, "mse").item() == pytest.approx((0.04 + 0.16) / 2)
    assert attention_distill(s, t, mask, "mae").item() == pytest.approx((0.2 + 0.4) / 2)
    kl = [tt * math.log(tt / ss) + (1 - tt) * math.log((1 - tt) / (1 - ss))
          for ss, tt in ((0.2, 0.4), (0.8, 0.4))]
    assert attention_distill(s, t, mask, "kl").item() == pytest.approx(sum(kl) / 2, rel=1e-5)
    attention_distill(s, t, mask, "mse").backward()
    assert t.grad is None and s.grad is not None  # psi(): the teacher gets no gradient


def test_diou_by_hand():
    # predicted segment [-1, 3] around the snippet, target [-2, 2]: inter 3, union 5,
    # enclosing 5, centres 1 and 0 -> 1 - 3/5 + (1/5)^2
    got = diou_loss_1d(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]))
    assert got.item() == pytest.approx(1 - 0.6 + 0.04)
    assert diou_loss_1d(torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 2.0]])).item() == 0.0


def test_focal_by_hand():
    logits = torch.tensor([[[0.0, 2.0]]])
    targets = torch.tensor([[[1.0, 0.0]]])
    weight = torch.ones(1, 1)
    p1, p2 = 0.5, 1 / (1 + math.exp(-2))
    a, g = 0.25, 2.0
    expected = a * -math.log(p1) * (1 - p1) ** g + (1 - a) * -math.log(1 - p2) * p2 ** g
    got = sigmoid_focal_loss(logits, targets, weight, a, g)
    assert got.item() == pytest.approx(expected, rel=1e-5)  # one foreground pair


def test_masked_word_nll_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    targets = torch.tensor([[0, 1]])
    masked = torch.tensor([[True, False]])
    assert masked_word_nll(logits, targets, masked).item() == pytest.approx(-math.log(0.5))


def test_pseudo_labels_by_hand():
    att = torch.tensor([[1.0, 0.9, 0.1, 0.0]])
    prob = torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.1, 0.9]]])
    labels = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    pl = pseudo_labels(att, prob, labels, mask, fg_threshold=0.5, bg_threshold=0.2)
    # prior of class 0 = (0.9, 0.72, 0.05, 0) / 0.9 -> fg at 0, 1; bg at 2, 3
    assert pl.fg.tolist() == [[True, True, False, False]]
    assert pl.weight.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert pl.targets[0, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert pl.targets[0, :, 1].sum() == 0  # an unlabelled class is never foreground
    # run [0, 2): distances to start / end from snippet centres
    assert pl.dist[0, 0].tolist() == [0.5, 1.5] and pl.dist[0, 1].tolist() == [1.5, 0.5]
