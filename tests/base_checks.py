"""Checks every base model must pass, shared by the base-model test files."""

from __future__ import annotations

import pytest
import torch
from mllm4wtal.model.losses import ksm_loss


def all_losses(model, out, labels, mask):
    """The shared top-k MIL losses plus the base's own, as DPID's phase 1 sums them."""
    losses = ksm_loss(out.cas, out.attention, labels, mask, 8)
    losses.update(model.aux_losses(out, out.cas, labels, mask, 8))
    return losses


def assert_padding_changes_nothing(model, x, mask, labels, extra: int) -> dict:
    """Padding each video ``extra`` snippets further, with garbage there, changes neither the
    outputs on the valid snippets nor any loss term. Returns the loss terms."""
    b, t, d = x.shape
    lengths = mask.sum(1).tolist()
    x_pad = torch.randn(b, t + extra, d) * 50
    mask_pad = torch.zeros(b, t + extra, dtype=torch.bool)
    for i, n in enumerate(lengths):
        x_pad[i, :n], mask_pad[i, :n] = x[i, :n], True
    with torch.no_grad():
        out, out_pad = model(x, mask), model(x_pad, mask_pad)
        ref = all_losses(model, out, labels, mask)
        got = all_losses(model, out_pad, labels, mask_pad)
    for field in ("embedding", "attention", "cas"):
        a, p = getattr(out, field), getattr(out_pad, field)
        for i, n in enumerate(lengths):
            assert torch.allclose(a[i, :n], p[i, :n], atol=1e-5), field
    assert ref.keys() == got.keys()
    for k in ref:
        assert got[k].item() == pytest.approx(ref[k].item(), rel=1e-5, abs=1e-6), k
    return ref
