"""Prior-driven localization head (eq. 18 of MLLM4WTAL, after PivoTAL).

On the video embedding F_e: per-snippet class logits (B, T, C) and distances to the start
and end of the action (B, T, 2, in snippets). Supervision comes from the priors:
prior(t, c) = A(t) * p(t, c), the attention times the class activation of the video's
labelled classes, detached and rescaled to [0, 1] per video and class. Snippets with a
prior >= fg_threshold are foreground of that class (their contiguous run is the pseudo
segment the distances regress to); snippets whose largest prior <= bg_threshold are
background; the rest are ignored.

L_loc = sigmoid focal (labelled snippets) + DIoU (foreground snippets) + MIL (top-k pooled
class logits vs the video labels). At inference only the video branch and this head run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm4wtal.model.base import conv1d, masked_stack
from mllm4wtal.model.losses import PseudoLabels


class LocHead(nn.Module):
    def __init__(self, hidden: int, num_classes: int, width: int | None = None) -> None:
        super().__init__()
        w = width or max(hidden // 4, 16)
        self.trunk = nn.Sequential(conv1d(hidden, w), nn.ReLU(), conv1d(w, w), nn.ReLU())
        self.cls = conv1d(w, num_classes)
        self.reg = conv1d(w, 2)
        nn.init.constant_(self.cls.bias, -2.0)  # start from a low foreground prior (focal)

    def forward(self, embedding: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Class logits (B, T, C) and distances (B, T, 2); ``mask`` (B, T) valid snippets."""
        h = masked_stack(self.trunk, embedding.transpose(1, 2), mask)
        if mask is not None:  # the output convs are wide too
            h = h * mask[:, None].to(h.dtype)
        logits = self.cls(h).transpose(1, 2)
        dist = F.softplus(self.reg(h)).transpose(1, 2)
        return logits, dist


def _run_bounds(fg: Tensor) -> tuple[Tensor, Tensor]:
    """For each snippet, start and end (exclusive) of the True run it lies in (B, T)."""
    b, t = fg.shape
    idx = torch.arange(t, device=fg.device).expand(b, t)
    # start: last index <= i where a run begins; end: first index > i where it has ended
    begins = fg & ~F.pad(fg, (1, 0))[:, :-1]
    ends = fg & ~F.pad(fg, (0, 1))[:, 1:]
    start = torch.where(begins, idx, torch.zeros_like(idx)).cummax(1).values
    rev_end = torch.where(ends, idx + 1, torch.full_like(idx, t)).flip(1).cummin(1).values.flip(1)
    return start, rev_end


def pseudo_labels(attention: Tensor, class_prob: Tensor, labels: Tensor, mask: Tensor,
                  fg_threshold: float, bg_threshold: float) -> PseudoLabels:
    """Pseudo-labels from the priors; all inputs are detached here (stop-gradient)."""
    prior = (attention.detach()[..., None] * class_prob.detach()) * labels[:, None, :]
    prior = prior.masked_fill(~mask[..., None], 0.0)
    peak = prior.amax(1, keepdim=True).clamp_min(1e-6)
    prior = prior / peak
    fg_c = (prior >= fg_threshold) & (labels[:, None, :] > 0) & mask[..., None]
    fg = fg_c.any(-1)
    bg = (prior.amax(-1) <= bg_threshold) & mask & ~fg
    start, end = _run_bounds(fg)
    idx = torch.arange(fg.shape[1], device=fg.device).expand_as(start)
    dist = torch.stack([idx - start + 0.5, end - idx - 0.5], dim=-1).to(attention.dtype)
    return PseudoLabels(targets=fg_c.to(attention.dtype), weight=(fg | bg).to(attention.dtype),
                        fg=fg, dist=dist)
