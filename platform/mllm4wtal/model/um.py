"""UM: weakly-supervised temporal action localization by uncertainty modelling (Lee et al.,
AAAI 2021, arXiv 2006.07006).

Reference code: github.com/Pilhyeon/WTAL-Uncertainty-Modeling, ``model.py`` (``CAS_Module``
and ``Model``: embedding, classifier, magnitude-based selection), ``train.py`` (``BMUE_loss``:
the three losses), ``options.py`` (defaults alpha = 0.0005, beta = 1, margin = 100,
r_act = 9, r_bkg = 4) and ``test.py`` (inference by feature magnitudes).

The network (paper Sec. "Main pipeline"): the embedding F = ReLU(conv3(X)) (one temporal
convolution, 2048 channels in the paper = our ``hidden``), and a classifier dropout(0.7) ->
bias-free 1x1 conv giving the class activation sequence A. UM treats background frames as
out-of-distribution: the feature magnitude ||f_t|| measures how much "action" a snippet
carries, and the paper's probability of a snippet being in-distribution (an action) is
P(d = 1 | f_t) = min(1, ||f_t|| / m).

Pseudo action / background snippets (``Model.forward``): per video, the k_act = T // r_act
snippets of largest magnitude and the k_bkg = T // r_bkg snippets of smallest magnitude
(largest max_t ||f_t|| - ||f_t||). In training both rankings are taken over a random subset:
the reference multiplies the ranking scores by a dropout(0.7) mask, so a dropped snippet
ranks with score 0 (``selection_scores``).

Losses (``BMUE_loss``; the paper writes L_total = L_cls + alpha L_um + beta L_be):
- ``cls`` (weight 1): video-level classification. Per class the mean of its k_act highest
  CAS values (top-k per class, not the magnitude selection), softmax over the C action
  classes, binary cross-entropy against the normalised labels y / sum y, averaged over
  videos and classes (the code's ``nn.BCELoss``; the paper writes a cross-entropy);
- ``um`` (alpha = 0.0005 at margin m = 100): the uncertainty modelling loss
  (max(0, m - ||mean f_act||) + ||mean f_bkg||)^2, averaged over videos, with f_act / f_bkg
  the pseudo action / background features (the magnitude of their *mean* feature);
- ``be`` (beta = 1): background entropy loss. The mean CAS over the pseudo background
  snippets, softmax over the C action classes, binary cross-entropy against the uniform
  distribution 1/C (the code's BCE form of the paper's -1/C sum_c log p_c).

Mapping onto the base-model interface (``base.py``):
- ``embedding`` = F, zero at padding; the conv sees the video zero-padded, so padding never
  changes a valid snippet;
- ``attention`` = min(1, ||f_t|| / m), the paper's P(d = 1 | f_t). Chosen over the min-max
  normalisation of ``test.py`` (between the mean magnitudes of the selected action and
  background snippets) because it is absolute, identical in training and evaluation (no
  dependence on the random selection), differentiable without going through the
  selection, and it is exactly the quantity ``um`` trains (actions to 1, background to 0).
  The min-max variant always maps some snippets of every video to 0 and 1, whatever the
  video; its test-time role of scaling the CAS is taken here by the proposal module.
- ``cas`` (C+1 logits, background last): the reference classifier has C outputs and models
  background only through the uniform target of ``be`` (the ``C + 1`` in its comment is a
  leftover of BaS-Net). Our classifier gets one more bias-free output column, the
  background logit, learned only by the shared top-k MIL (``model/losses.py::ksm_loss``:
  background 1 in the plain branch, 0 in the attention-suppressed one); UM's own losses
  read the C action columns only. With KSM on, the ``cas`` given to ``aux_losses`` is KSM's
  similarity M and UM's losses are taken on its action columns.
- ``norm`` (``norm_weight``, the config's ``model.norm_weight``, 0.8 by default): UM has no
  attention sparsity term; it is added as the mean attention of the valid snippets, as in
  the other bases, so that the config key means the same for every base. ``norm_weight=0``
  is the original UM.

Widths: with ``hidden`` channels the default margin is 100 sqrt(hidden / 2048) (the same
per-channel magnitude as the paper's 100 at 2048 channels), and the default alpha keeps
alpha m^2 = 0.0005 * 100^2 = 5, i.e. ``um`` has the same value as a function of the
normalised magnitudes ||f|| / m (the attention), and so the same balance against the
attention-based terms of the framework (suppressed MIL, sparsity, DPID distillation) at any
width. At hidden = 2048 both are the reference values. Weights use PyTorch's default
initialisation, as the reference does.

Left to the training config, not the base: the reference's Adam lr 1e-4 and weight decay
5e-4 (``options.py``, ``main.py``), batch 16, and its fixed-length (750) snippet sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm4wtal.model.base import BaseOutput, BaseWTAL, conv1d
from mllm4wtal.model.delu import attention_topk_mean
from mllm4wtal.model.losses import EPS, masked_mean, topk_mean

REF_HIDDEN, REF_MARGIN, REF_ALPHA = 2048, 100.0, 0.0005


class UM(BaseWTAL):
    """UM as a base model; see the module docstring."""

    def __init__(self, feature_dim: int, rgb_dim: int, num_classes: int, hidden: int,
                 dropout: float, norm_weight: float = 0.8, cls_weight: float = 1.0,
                 alpha: float | None = None, beta: float = 1.0, margin: float | None = None,
                 r_act: int = 9, r_bkg: int = 4, select_dropout: float = 0.7) -> None:
        super().__init__()
        self.margin = REF_MARGIN * math.sqrt(hidden / REF_HIDDEN) if margin is None else margin
        if self.margin <= 0:
            raise ValueError(f"UM needs a positive margin, got {self.margin}")
        self.alpha = REF_ALPHA * (REF_MARGIN / self.margin) ** 2 if alpha is None else alpha
        self.embed = conv1d(feature_dim, hidden)
        self.head = nn.Sequential(nn.Dropout(dropout),
                                  nn.Conv1d(hidden, num_classes + 1, 1, bias=False))
        self.norm_weight, self.cls_weight, self.beta = norm_weight, cls_weight, beta
        self.r_act, self.r_bkg, self.select_dropout = r_act, r_bkg, select_dropout

    def embedding(self, features: Tensor, mask: Tensor) -> Tensor:
        m = mask[..., None].to(features.dtype)
        return F.relu(self.embed((features * m).transpose(1, 2))).transpose(1, 2) * m

    def forward(self, features: Tensor, mask: Tensor) -> BaseOutput:
        emb = self.embedding(features, mask)
        cas = self.head(emb.transpose(1, 2)).transpose(1, 2)
        magnitude = torch.linalg.vector_norm(emb.float(), dim=-1)
        aux: dict[str, Tensor] = {}
        if self.training and self.select_dropout > 0:
            # the reference's dropout on the selection scores: which snippets may be picked
            aux["select_keep"] = torch.rand_like(magnitude) >= self.select_dropout
        return BaseOutput(embedding=emb, attention=(magnitude / self.margin).clamp(max=1),
                          cas=cas, aux=aux)

    def aux_losses(self, out: BaseOutput, cas: Tensor, labels: Tensor, mask: Tensor,
                   topk: int) -> dict[str, Tensor]:
        num_classes = labels.shape[1]
        emb = out.embedding.float()
        act_rank, bkg_rank = selection_scores(torch.linalg.vector_norm(emb, dim=-1), mask,
                                              out.aux.get("select_keep"))
        action_cas = cas.float()[..., :num_classes]
        video_act = topk_mean(action_cas, mask, self.r_act)  # top-k per class
        video_bkg = attention_topk_mean(action_cas, bkg_rank, mask, self.r_bkg)
        f_act = attention_topk_mean(emb, act_rank, mask, self.r_act)
        f_bkg = attention_topk_mean(emb, bkg_rank, mask, self.r_bkg)
        target = labels.float() / labels.float().sum(1, keepdim=True).clamp_min(EPS)
        uniform = torch.full_like(video_bkg, 1 / num_classes)
        return {
            "cls": self.cls_weight * softmax_bce(video_act, target),
            "um": self.alpha * uncertainty_loss(f_act, f_bkg, self.margin),
            "be": self.beta * softmax_bce(video_bkg, uniform),
            "norm": self.norm_weight * masked_mean(out.attention, mask),
        }


def selection_scores(magnitude: Tensor, mask: Tensor, keep: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Ranking scores (B, T) for the pseudo action snippets (||f_t||) and the pseudo
    background snippets (max over the video's valid snippets of ||f|| minus ||f_t||), both
    times the selection mask ``keep`` (B, T) bool when given, as the reference's dropout on
    the scores (a dropped snippet scores 0; the 1 / (1 - p) scaling does not change a
    ranking). Detached: the selection is not differentiated. Padding is excluded by the
    caller (``attention_topk_mean``)."""
    magnitude = magnitude.detach().float()
    top = magnitude.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    act, bkg = magnitude, top - magnitude
    if keep is not None:
        act, bkg = act * keep, bkg * keep
    return act, bkg


def softmax_bce(logits: Tensor, target: Tensor) -> Tensor:
    """``nn.BCELoss`` on softmax(logits) (B, C) against target (B, C), averaged over all
    entries, with its log clamp at -100; log p and log(1 - p) are taken stably from the
    logits (log(1 - p_c) = logsumexp of the other logits - logsumexp of all)."""
    log_p = F.log_softmax(logits, dim=-1)
    c = logits.shape[-1]
    if c == 1:  # p = 1: log(1 - p) = -inf, clamped as BCELoss does (and target 1 - t = 0)
        log_q = torch.full_like(logits, -100.0)
    else:
        eye = torch.eye(c, dtype=torch.bool, device=logits.device)
        others = logits[:, None, :].expand(-1, c, -1).masked_fill(eye, float("-inf"))
        log_q = torch.logsumexp(others, -1) - torch.logsumexp(logits, -1, keepdim=True)
    return -(target * log_p.clamp_min(-100) + (1 - target) * log_q.clamp_min(-100)).mean()


def uncertainty_loss(f_act: Tensor, f_bkg: Tensor, margin: float) -> Tensor:
    """L_um = mean over videos of (max(0, m - ||f_act||) + ||f_bkg||)^2, f_act and f_bkg
    (B, H) the mean features of the pseudo action / background snippets."""
    act = (margin - torch.linalg.vector_norm(f_act, dim=-1)).clamp_min(0)
    return ((act + torch.linalg.vector_norm(f_bkg, dim=-1)) ** 2).mean()
