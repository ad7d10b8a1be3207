"""CO2-Net: cross-modal consensus network (Hong et al., ACM MM 2021).

Reference code: github.com/harlanhong/MM2021-CO2-Net, ``model.py`` (class ``CO2`` with
``BWA_fusion_dropout_feat_v2`` as the cross-modal consensus module) and ``options.py``
(loss weights). The architecture, per modality m in {RGB, flow} with the other one o:

- cross-modal consensus module (CCM): a channel gate built from the global context of m
  (time-averaged, conv + LeakyReLU + dropout 0.5) times the local context of o (conv +
  LeakyReLU + dropout 0.5 per snippet), X_m' = sigmoid(global_m * local_o) * X_m;
- a per-modality attention A_m = sigmoid(dropout(conv stack(X_m'))) (dropout 0.5 on the
  logit, as in the reference code);
- fused attention A = (A_rgb + A_flow) / 2; embedding F_e = LeakyReLU(1x1 conv([X_rgb';
  X_flow'])) with dropout; class head dropout -> conv3 -> LeakyReLU -> dropout -> 1x1 conv.

Widths: the CCM gates must have the modality widths; the embedding has ``hidden`` channels
(2048 in the paper) and the attention stacks ``hidden // 4`` (512 in the paper). Convolution
weights are Kaiming-uniform with zero biases (the reference ``weights_init``).

Auxiliary losses (``CO2.criterion``; the top-k MIL on the CAS and on the suppressed CAS is the
shared ``ksm_loss``):
- ``mutual`` (alpha4 = 1): 0.5 MSE(A_rgb, sg A_flow) + 0.5 MSE(A_flow, sg A_rgb), the
  modalities' attentions teach each other (the paper's mutual learning loss);
- ``norm`` (alpha1 = 0.8): mean attention, averaged over A, A_rgb, A_flow;
- ``guide`` (alpha2 = 0.8): |1 - p_bg - A_x| averaged over the three attentions;
- ``coact`` (alpha3 = 1): the co-activity similarity loss of W-TALC (``CO2.Contrastive``)
  on the first ``coact_pairs`` row pairs (2i, 2i+1) of the batch, which the batch sampler
  fills with class-sharing videos (``data.n_similar``), on the embedding and the
  min-shifted attention-suppressed CAS.

All terms respect the padding mask; the reference code averages over the batch-padded
length instead, which is the same thing for unpadded videos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm4wtal.model.base import (
    Attention,
    BaseOutput,
    BaseWTAL,
    ClassHead,
    conv1d,
    guide_loss,
    masked_stack,
)
from mllm4wtal.model.losses import EPS, masked_mean


def kaiming_init(module: nn.Module) -> None:
    """The reference code bases' ``weights_init``: Kaiming-uniform weights, zero biases."""
    if isinstance(module, nn.Conv1d | nn.Linear):
        nn.init.kaiming_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ModalityAttention(Attention):
    """A_m: the attention stack of ``base.Attention`` with dropout on its logit (as the
    reference ``BWA_fusion_dropout_feat_v2``) and padding-exact convolutions."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.5) -> None:
        super().__init__(dim, hidden, dropout)
        self.logit_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x (B, T, dim) -> (B, T) in [0, 1]."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        logit = masked_stack(self.net, x.transpose(1, 2), mask)
        return torch.sigmoid(self.logit_dropout(logit)).squeeze(1)


class CrossModalConsensus(nn.Module):
    """CO2-Net's CCM: X_m' = sigmoid(global(X_m) * local(X_o)) * X_m, then A_m."""

    def __init__(self, main_dim: int, aux_dim: int, attn_hidden: int) -> None:
        super().__init__()
        self.global_ctx = nn.Sequential(conv1d(main_dim, main_dim), nn.LeakyReLU(0.2),
                                        nn.Dropout(0.5))
        self.local_ctx = nn.Sequential(conv1d(aux_dim, main_dim), nn.LeakyReLU(0.2),
                                       nn.Dropout(0.5))
        self.attention = ModalityAttention(main_dim, attn_hidden, 0.5)

    def forward(self, main: Tensor, aux: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """main (B, T, Dm), aux (B, T, Do), zero at padding -> (A_m (B, T), X_m' (B, T, Dm))."""
        m = mask[..., None].to(main.dtype)
        pooled = main.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, Dm)
        # a length-1 sequence: only the centre tap of the reference's kernel-3 conv acts
        global_ctx = self.global_ctx(pooled.transpose(1, 2))  # (B, Dm, 1)
        local_ctx = self.local_ctx(aux.transpose(1, 2))  # (B, Dm, T)
        enhanced = (torch.sigmoid(local_ctx * global_ctx) * main.transpose(1, 2)).transpose(1, 2)
        return self.attention(enhanced, mask), enhanced


class CO2Net(BaseWTAL):
    """CO2-Net as a base model; see the module docstring."""

    def __init__(self, feature_dim: int, rgb_dim: int, num_classes: int, hidden: int,
                 dropout: float, norm_weight: float = 0.8, guide_weight: float = 0.8,
                 mutual_weight: float = 1.0, coact_weight: float = 1.0,
                 coact_pairs: int = 3) -> None:
        super().__init__()
        if not 0 < rgb_dim < feature_dim:
            raise ValueError(f"CO2-Net needs RGB and flow features: rgb_dim={rgb_dim}, "
                             f"feature_dim={feature_dim}")
        self.rgb_dim = rgb_dim
        flow_dim = feature_dim - rgb_dim
        attn_hidden = max(1, hidden // 4)
        self.rgb = CrossModalConsensus(rgb_dim, flow_dim, attn_hidden)
        self.flow = CrossModalConsensus(flow_dim, rgb_dim, attn_hidden)
        self.fusion = nn.Sequential(conv1d(feature_dim, hidden, 1), nn.LeakyReLU(0.2),
                                    nn.Dropout(dropout))
        self.cls_conv = nn.Sequential(nn.Dropout(dropout), conv1d(hidden, hidden),
                                      nn.LeakyReLU(0.2))
        self.head = ClassHead(hidden, num_classes, dropout)
        self.norm_weight, self.guide_weight = norm_weight, guide_weight
        self.mutual_weight, self.coact_weight = mutual_weight, coact_weight
        self.coact_pairs = coact_pairs
        self.apply(kaiming_init)

    def _fuse(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The embedding and the two modalities' attentions."""
        m = mask[..., None].to(features.dtype)
        x = features * m
        rgb, flow = x[..., : self.rgb_dim], x[..., self.rgb_dim:]
        a_rgb, x_rgb = self.rgb(rgb, flow, mask)
        a_flow, x_flow = self.flow(flow, rgb, mask)
        fused = torch.cat([x_rgb, x_flow], dim=-1).transpose(1, 2)
        emb = self.fusion(fused).transpose(1, 2) * m  # zero at padding for later convs
        return emb, a_rgb, a_flow

    def embedding(self, features: Tensor, mask: Tensor) -> Tensor:
        return self._fuse(features, mask)[0]

    def forward(self, features: Tensor, mask: Tensor) -> BaseOutput:
        emb, a_rgb, a_flow = self._fuse(features, mask)
        cas = self.head(self.cls_conv(emb.transpose(1, 2)).transpose(1, 2))
        return BaseOutput(embedding=emb, attention=(a_rgb + a_flow) / 2, cas=cas,
                          aux={"rgb_attention": a_rgb, "flow_attention": a_flow})

    def attentions(self, out: BaseOutput) -> tuple[Tensor, Tensor, Tensor]:
        return out.attention, out.aux["rgb_attention"], out.aux["flow_attention"]

    def aux_losses(self, out: BaseOutput, cas: Tensor, labels: Tensor, mask: Tensor,
                   topk: int) -> dict[str, Tensor]:
        atts = self.attentions(out)
        losses = {
            "mutual": self.mutual_weight * mutual_loss(atts[1], atts[2], mask),
            "norm": self.norm_weight * sum(masked_mean(a, mask) for a in atts) / 3,
            "guide": self.guide_weight * sum(guide_loss(a, cas, mask) for a in atts) / 3,
        }
        if self.coact_weight:
            supp = suppress_with_min(cas.float(), out.attention)
            losses["coact"] = self.coact_weight * coactivity_loss(
                out.embedding, supp, labels, mask, self.coact_pairs)
        return losses


def mutual_loss(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Cross-modal mutual learning of CO2-Net: each attention regresses onto the other's
    stop-gradient, 0.5 MSE(a, sg b) + 0.5 MSE(b, sg a)."""
    return 0.5 * (masked_mean((a - b.detach()) ** 2, mask)
                  + masked_mean((b - a.detach()) ** 2, mask))


def suppress_with_min(cas: Tensor, attention: Tensor) -> Tensor:
    """A * (cas - min_c cas) + min_c cas: the reference ``_multiply(include_min=True)``, which
    suppresses towards each snippet's lowest logit rather than towards zero."""
    low = cas.min(dim=-1, keepdim=True).values
    return attention[..., None] * (cas - low) + low


def coactivity_loss(features: Tensor, cas: Tensor, labels: Tensor, mask: Tensor,
                    pairs: int, margin: float = 0.5) -> Tensor:
    """Co-activity similarity loss (W-TALC, Paul et al. ECCV 2018; ``CO2.Contrastive``).

    For rows (2i, 2i+1), i < ``pairs``: per class c, the temporal softmax of the CAS gives a
    high-attention feature H_c and a low-attention feature L_c (weights (1 - softmax) / (n-1))
    of each video. For classes both videos carry, the two H must be closer (1 - cosine) than
    either H is to the other's L, by ``margin``; hinge terms weighted 0.5, averaged over the
    shared (pair, class) count. Zero when no pair shares a class.
    """
    p = min(pairs, features.shape[0] // 2)
    num_classes = labels.shape[1]
    if p == 0:
        return features.sum() * 0  # keeps the graph (and the dtype) of a real loss
    x = features[: 2 * p].float()
    m = mask[: 2 * p]
    act = cas[: 2 * p, :, :num_classes].float().masked_fill(~m[..., None], float("-inf"))
    w = torch.softmax(act, dim=1)  # (2p, T, C), zero at padding
    n = m.sum(1).to(x.dtype).sub(1).clamp_min(1)[:, None, None]
    low_w = (1 - w) * m[..., None] / n
    high = torch.einsum("btd,btc->bdc", x, w)  # (2p, D, C)
    low = torch.einsum("btd,btc->bdc", x, low_w)

    def dist(u: Tensor, v: Tensor) -> Tensor:
        return 1 - F.cosine_similarity(u, v, dim=1, eps=EPS)  # (p, C)

    h1, h2, l1, l2 = high[0::2], high[1::2], low[0::2], low[1::2]
    d_pos = dist(h1, h2)
    shared = labels[0: 2 * p: 2] * labels[1: 2 * p: 2]  # (p, C)
    hinge = (0.5 * (d_pos - dist(h1, l2) + margin).clamp_min(0)
             + 0.5 * (d_pos - dist(h2, l1) + margin).clamp_min(0))
    return (hinge * shared).sum() / shared.sum().clamp_min(1)  # 0 when nothing is shared
