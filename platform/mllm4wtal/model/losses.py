"""Loss terms of MLLM4WTAL, one function per equation: L_KSM (eq. 6-10), L_CSR and its
contrast (eq. 17), L_loc (eq. 18), the distillation terms of L_match / L_rec (eq. 19-20)
and their alternatives. Every function respects the padding mask (B, T): padded snippets
never enter a top-k, a mean or a pseudo-label."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def topk_k(mask: Tensor, divisor: int) -> Tensor:
    """k per video: max(1, valid_length // divisor), as the reference code bases do."""
    return (mask.sum(1) // divisor).clamp_min(1)


def topk_mean(x: Tensor, mask: Tensor, divisor: int) -> Tensor:
    """Mean of the top-k values over time of x (B, T, C), k per video (eq. 6-7) -> (B, C)."""
    k = topk_k(mask, divisor)  # (B,)
    filled = x.masked_fill(~mask[..., None], float("-inf"))
    ranked = filled.sort(dim=1, descending=True).values
    ranked = ranked.masked_fill(torch.isinf(ranked), 0.0)  # only beyond k_i, never summed
    csum = ranked.cumsum(1)
    idx = (k - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2])
    return csum.gather(1, idx).squeeze(1) / k[:, None].to(x.dtype)


def mil_loss(cas: Tensor, targets: Tensor, mask: Tensor, divisor: int) -> Tensor:
    """Top-k MIL cross-entropy: softmax over classes of top-k means (eq. 6-10).

    ``targets`` (B, C+1) is normalised to a distribution per video (multi-label videos share
    the mass, as in W-TALC / CO2-Net).
    """
    scores = topk_mean(cas, mask, divisor)
    t = targets / targets.sum(1, keepdim=True).clamp_min(EPS)
    return -(t * F.log_softmax(scores, dim=1)).sum(1).mean()


def with_background(labels: Tensor, value: float) -> Tensor:
    """(B, C) multi-hot -> (B, C+1) with the background column set to ``value``."""
    return torch.cat([labels, labels.new_full((labels.shape[0], 1), value)], dim=1)


def ksm_loss(cas: Tensor, attention: Tensor, labels: Tensor, mask: Tensor, divisor: int
             ) -> dict[str, Tensor]:
    """L_KSM (eq. 10): MIL on M with the background labelled 1, and on the
    attention-suppressed M_hat = A * M with the background labelled 0."""
    suppressed = attention[..., None] * cas
    return {
        "mil": mil_loss(cas, with_background(labels, 1.0), mask, divisor),
        "mil_supp": mil_loss(suppressed, with_background(labels, 0.0), mask, divisor),
    }


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, T) over all valid snippets of the batch."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1)


def attention_distill(student: Tensor, teacher: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Distance between a student attention and the stop-gradient of a teacher (psi in
    eq. 19-20). ``mode``: mse (the paper), mae, or kl (Bernoulli KL(teacher || student))."""
    t = teacher.detach()
    if mode == "mse":
        d = (student - t) ** 2
    elif mode == "mae":
        d = (student - t).abs()
    elif mode == "kl":
        s = student.clamp(EPS, 1 - EPS)
        tc = t.clamp(EPS, 1 - EPS)
        d = tc * (tc / s).log() + (1 - tc) * ((1 - tc) / (1 - s)).log()
    else:
        raise ValueError(f"unknown distillation mode '{mode}'")
    return masked_mean(d, mask)


def ternary_kd(student: Tensor, teacher: Tensor, features: Tensor, mask: Tensor,
               delta_h: float, delta_l: float, tau: float) -> Tensor:
    """Ternary pseudo-label distillation + foreground/background contrast (Ju et al. 2023).

    The stop-gradient teacher attention gives confident foreground (>= delta_h), confident
    background (<= delta_l) and ignored snippets. The student fits the confident labels by
    binary cross-entropy; its features are contrasted: each confident foreground snippet
    must be closer (cosine / tau) to the video's foreground prototype than the background
    snippets are (InfoNCE).
    """
    t = teacher.detach()
    fg = (t >= delta_h) & mask
    bg = (t <= delta_l) & mask
    conf = fg | bg
    bce = F.binary_cross_entropy(student.clamp(EPS, 1 - EPS), fg.to(student.dtype),
                                 reduction="none")
    kd = (bce * conf).sum() / conf.sum().clamp_min(1)

    z = F.normalize(features, dim=-1)  # (B, T, H)
    fgf = fg.to(z.dtype)
    proto = F.normalize((z * fgf[..., None]).sum(1) / fgf.sum(1, keepdim=True).clamp_min(1),
                        dim=-1)  # (B, H)
    sim = torch.einsum("bth,bh->bt", z, proto) / tau  # (B, T)
    neg = sim.masked_fill(~bg, float("-inf"))
    # per fg snippet: -log exp(pos) / (exp(pos) + sum exp(neg))
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True).expand_as(sim)
    denom = torch.logaddexp(sim, neg_lse)
    valid = fg & bg.any(1, keepdim=True)
    nce = ((denom - sim) * valid).sum() / valid.sum().clamp_min(1)
    return kd + nce


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, weight: Tensor, alpha: float,
                       gamma: float) -> Tensor:
    """Sigmoid focal loss (Lin et al.), summed over classes and the weighted snippets,
    normalised by the number of foreground (snippet, class) pairs."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    loss = loss * weight[..., None]
    return loss.sum() / targets.mul(weight[..., None]).sum().clamp_min(1)


def diou_loss_1d(pred: Tensor, target: Tensor) -> Tensor:
    """Distance-IoU loss on 1D segments given as (distance to start, distance to end) from
    the same snippet: 1 - IoU + (centre distance / enclosing length)^2. Mean over rows."""
    if pred.numel() == 0:
        return pred.sum()
    ps, pe = pred[:, 0], pred[:, 1]
    ts, te = target[:, 0], target[:, 1]
    inter = torch.minimum(ps, ts) + torch.minimum(pe, te)
    union = (ps + pe) + (ts + te) - inter
    iou = inter / union.clamp_min(EPS)
    enclose = torch.maximum(ps, ts) + torch.maximum(pe, te)
    centre = ((pe - ps) - (te - ts)) / 2  # centres relative to the snippet
    return (1 - iou + (centre / enclose.clamp_min(EPS)) ** 2).mean()


@dataclass
class PseudoLabels:
    targets: Tensor  # (B, T, C) 1 for foreground of class c
    weight: Tensor  # (B, T) 1 where the snippet is labelled (foreground or background)
    fg: Tensor  # (B, T) bool, foreground of any class
    dist: Tensor  # (B, T, 2) distances to the pseudo segment's start / end (fg only)


def loc_loss(logits: Tensor, dist: Tensor, pl: PseudoLabels, labels: Tensor, mask: Tensor,
             topk: int, alpha: float, gamma: float) -> dict[str, Tensor]:
    """L_loc = focal + DIoU + MIL (eq. 18)."""
    video = topk_mean(logits, mask, topk)
    return {
        "focal": sigmoid_focal_loss(logits, pl.targets, pl.weight, alpha, gamma),
        "diou": diou_loss_1d(dist[pl.fg], pl.dist[pl.fg]),
        "loc_mil": F.binary_cross_entropy_with_logits(video, labels),
    }


def masked_word_nll(logits: Tensor, targets: Tensor, masked: Tensor) -> Tensor:
    """NLL of the masked words (eq. 17), averaged over each sentence's masked words -> (B,)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    m = masked.to(nll.dtype)
    return (nll * m).sum(1) / m.sum(1).clamp_min(1)


def csr_contrast(nll_fg: Tensor, nll_whole: Tensor, nll_rest: Tensor, gamma1: float,
                 gamma2: float) -> Tensor:
    """Hinge contrast of CSR: the foreground-weighted reconstruction (A) must explain the
    words better than the whole video (A = 1) by ``gamma1`` and than the complement
    (1 - A) by ``gamma2``; inputs are per-sentence NLLs (B,)."""
    return ((nll_fg - nll_whole + gamma1).clamp_min(0)
            + (nll_fg - nll_rest + gamma2).clamp_min(0)).mean()
