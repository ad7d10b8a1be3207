"""DELU: dual-evidential learning for uncertainty modelling (Chen et al., ECCV 2022).

Reference code: github.com/MengyuanChen21/ECCV2022-DELU, ``model.py`` (class ``DELU``),
``edl_loss.py`` (``EvidenceLoss``), ``options.py`` and ``scripts/train_thumos.sh`` (the
THUMOS14 weights used here as defaults). The network is CO2-Net's (``co2net.py``); DELU adds
two losses to CO2-Net's ``mutual``, ``norm``, ``guide`` and ``coact``:

- ``edl`` (alpha_edl = 1.3): evidential deep learning on video-level evidence. The video
  logits are the mean, over the k = max(1, T // rat_atn) snippets of highest fused attention
  (rat_atn = 9), of the min-shifted attention-suppressed CAS, background dropped. Evidence
  e = exp(clamp(logits, -10, 10)), alpha = e + 1, S = sum alpha, u = C / S; the loss is
  sum_c g_c (log S - log alpha_c) with g = (1 - sg u) |y| (y / alpha) / sum(y / alpha), the
  uncertainty-weighted multi-label "log" EDL loss (``EvidenceLoss(evidence='exp',
  loss_type='log', with_kldiv=False)``; its annealing coefficient only scales the KL term,
  which is off, so it is not computed here).
- ``uct_guide`` (alpha_uct_guide = 0.4, amplitude 0.7): uncertainty-guided collaborative
  learning, the guide terms of A, A_rgb, A_flow re-weighted per snippet by a curriculum.
  Snippet uncertainty u_t = C / sum(exp(suppressed CAS_t) + 1) ranks the snippets; the curve
  w_j = amplitude * tanh((2 (j + 0.5) / n - 1)(1 - 2 progress)) + 1 over n snippets flips
  from favouring one end of the ranking to the other as training progresses; the weight of
  snippet j is w[order[j]] with order the ascending-uncertainty argsort (the reference's
  ``gather``, kept as is). Averaged over valid snippets.

CO2-Net's guide weight alpha2 is 0.4 in DELU's THUMOS14 script (``options.py`` says 0.8, and
alpha_edl 1.0 there). ``progress`` = step / total_steps (the reference's itr / max_iter):
the base counts its own training steps in the ``steps_seen`` buffer (one per ``aux_losses``
call in training mode), so that a checkpoint resumes the curriculum exactly;
``total_steps`` defaults to the THUMOS14 schedule (5000 iterations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mllm4wtal.model.base import BaseOutput
from mllm4wtal.model.co2net import CO2Net, suppress_with_min
from mllm4wtal.model.losses import EPS, masked_mean, topk_k


class DELU(CO2Net):
    """CO2-Net + evidential and uncertainty-guided losses; see the module docstring."""

    steps_seen: Tensor

    def __init__(self, feature_dim: int, rgb_dim: int, num_classes: int, hidden: int,
                 dropout: float, norm_weight: float = 0.8, guide_weight: float = 0.4,
                 mutual_weight: float = 1.0, coact_weight: float = 1.0, coact_pairs: int = 3,
                 edl_weight: float = 1.3, uct_guide_weight: float = 0.4,
                 amplitude: float = 0.7, rat_atn: int = 9, total_steps: int = 5000) -> None:
        super().__init__(feature_dim, rgb_dim, num_classes, hidden, dropout,
                         norm_weight=norm_weight, guide_weight=guide_weight,
                         mutual_weight=mutual_weight, coact_weight=coact_weight,
                         coact_pairs=coact_pairs)
        self.edl_weight, self.uct_guide_weight = edl_weight, uct_guide_weight
        self.amplitude, self.rat_atn, self.total_steps = amplitude, rat_atn, total_steps
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def progress(self) -> Tensor:
        """Training progress in [0, 1] (clamped should a run outlast ``total_steps``)."""
        return (self.steps_seen.float() / max(1, self.total_steps)).clamp(0, 1)

    def aux_losses(self, out: BaseOutput, cas: Tensor, labels: Tensor, mask: Tensor,
                   topk: int) -> dict[str, Tensor]:
        losses = super().aux_losses(out, cas, labels, mask, topk)
        supp = suppress_with_min(cas.float(), out.attention)
        num_classes = labels.shape[1]
        video = attention_topk_mean(supp[..., :num_classes], out.attention, mask, self.rat_atn)
        losses["edl"] = self.edl_weight * edl_loss(video, labels)
        losses["uct_guide"] = self.uct_guide_weight * uncertainty_guided_guide(
            cas, supp, self.attentions(out), mask, self.progress(), self.amplitude)
        if self.training:
            self.steps_seen += 1
        return losses


def attention_topk_mean(x: Tensor, attention: Tensor, mask: Tensor, divisor: int) -> Tensor:
    """Mean of x (B, T, C) over each video's k = max(1, T_valid // divisor) snippets of
    highest attention (B, T) -> (B, C)."""
    k = topk_k(mask, divisor)
    ranked_att = attention.float().masked_fill(~mask, float("-inf"))
    order = torch.argsort(ranked_att, dim=1, descending=True, stable=True)
    ranked = x.gather(1, order[..., None].expand_as(x))
    keep = torch.arange(x.shape[1], device=x.device)[None] < k[:, None]
    return (ranked * keep[..., None].to(x.dtype)).sum(1) / k[:, None].to(x.dtype)


def edl_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label evidential "log" loss of DELU (``EvidenceLoss.edl_loss`` with exp
    evidence), averaged over videos; logits (B, C), labels (B, C) multi-hot."""
    alpha = torch.exp(logits.float().clamp(-10, 10)) + 1
    strength = alpha.sum(1, keepdim=True)
    uncertainty = labels.shape[1] / strength
    inv = labels / alpha
    g = ((1 - uncertainty.detach()) * labels.sum(1, keepdim=True)
         * inv / inv.sum(1, keepdim=True).clamp_min(EPS))
    return (g * (strength.log() - alpha.log())).sum(1).mean()


def snippet_uncertainty(cas: Tensor) -> Tensor:
    """u_t = K / S_t with exp evidence over all C+1 columns of cas (B, T, C+1) -> (B, T);
    K = C as in the reference (only the ranking is used)."""
    alpha = torch.exp(cas.float().clamp(-10, 10)) + 1
    return (cas.shape[-1] - 1) / alpha.sum(-1)


def uncertainty_guided_guide(cas: Tensor, supp: Tensor, attentions: tuple[Tensor, ...],
                             mask: Tensor, progress: Tensor, amplitude: float) -> Tensor:
    """DELU's ``uct_guide_loss``: the guide terms |1 - p_bg - A| of ``attentions``
    (averaged), weighted per snippet by the uncertainty-ranked curriculum curve."""
    n = mask.sum(1, keepdim=True).clamp_min(1).float()  # (B, 1)
    idx = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]
    theta = 2 * (idx + 0.5) / n - 1
    curve = amplitude * torch.tanh(theta * (1 - 2 * progress)) + 1  # (B, T), valid j < n
    uncertainty = snippet_uncertainty(supp).masked_fill(~mask, float("inf"))
    order = torch.argsort(uncertainty, dim=1, stable=True)
    weight = curve.gather(1, order)  # padding sorts last, so valid j only read valid curve
    p_bg = torch.softmax(cas.float(), dim=-1)[..., -1]
    guide = sum((1 - p_bg - a).abs() for a in attentions) / len(attentions)
    return masked_mean(weight * guide, mask)
