"""Base WTAL models: the video branch every method builds on.

A base model turns snippet features F (B, T, D) into
- ``embedding`` F_e (B, T, H): the video embedding (eq. 2-3 of MLLM4WTAL),
- ``attention`` A (B, T) in [0, 1]: foreground attention, A_KSM when KSM is on (eq. 3),
- ``cas`` (B, T, C+1): logits of its own conv class head (last column = background),
  used when KSM is off,
- ``aux``: whatever its own auxiliary losses need.

``aux_losses`` gets the class activation actually used (the conv head's, or KSM's
similarity M when KSM replaces the head), the multi-hot labels (B, C), the padding mask
(B, T) and the top-k divisor (k = max(1, T_valid // topk)), and returns the base's own
losses beyond the top-k MIL loss, which is shared (``model/losses.py``). Bases are
interchangeable under KSM and CSR; ``BASES`` maps config names to constructors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mllm4wtal.model.losses import masked_mean


@dataclass
class BaseOutput:
    embedding: Tensor  # (B, T, H)
    attention: Tensor  # (B, T), in [0, 1]
    cas: Tensor  # (B, T, C+1) logits of the conv class head
    aux: dict[str, Tensor] = field(default_factory=dict)


def conv1d(in_dim: int, out_dim: int, kernel: int = 3) -> nn.Conv1d:
    return nn.Conv1d(in_dim, out_dim, kernel, padding=kernel // 2)


def masked_stack(layers: nn.Sequential, x: Tensor, mask: Tensor | None) -> Tensor:
    """Run ``layers`` on x (B, D, T); padded columns (``mask`` (B, T) False) are zeroed
    before every wide conv, so a video's result does not depend on how far its batch pads
    it (a conv's own zero padding and a batch's padding then look the same)."""
    if mask is None:
        return layers(x)
    m = mask[:, None].to(x.dtype)
    for layer in layers:
        if isinstance(layer, nn.Conv1d) and layer.kernel_size[0] > 1:
            x = x * m
        x = layer(x)
    return x


class Attention(nn.Module):
    """A = sigmoid(conv stack(x)): the snippet attention of eq. 3 / eq. 13."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv1d(dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            conv1d(hidden, hidden), nn.LeakyReLU(0.2), conv1d(hidden, 1, 1),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, T, dim), mask (B, T) of valid snippets (None: all) -> (B, T) in [0, 1]."""
        return torch.sigmoid(masked_stack(self.net, x.transpose(1, 2), mask)).squeeze(1)


class VideoEmbedding(nn.Module):
    """F_e = Phi_emb(F): two 1D convolutions, each followed by ReLU and dropout (eq. 2)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv1d(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            conv1d(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_stack(self.net, x.transpose(1, 2), mask).transpose(1, 2)


class ClassHead(nn.Module):
    """Conv class head: dropout + 1x1 conv to C+1 logits (background last)."""

    def __init__(self, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Conv1d(hidden, num_classes + 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.transpose(1, 2)).transpose(1, 2)


class BaseWTAL(nn.Module):
    """Interface of the base models; see the module docstring."""

    def forward(self, features: Tensor, mask: Tensor) -> BaseOutput:  # pragma: no cover
        raise NotImplementedError

    def embedding(self, features: Tensor, mask: Tensor) -> Tensor:
        """F_e alone, the localization head's input at inference (eq. 18). Bases whose
        embedding does not need their attention or class head override it to skip them;
        the same operations as ``forward``, so the same numbers bit for bit."""
        return self(features, mask).embedding

    def aux_losses(self, out: BaseOutput, cas: Tensor, labels: Tensor, mask: Tensor,
                   topk: int) -> dict[str, Tensor]:
        return {}


class MILBaseline(BaseWTAL):
    """The papers' "Baseline": embedding, one attention, conv class head.

    Trained by the shared top-k MIL losses on the CAS and on its attention-suppressed
    copy, plus the two attention terms every attention-MIL code base carries (CO2-Net and
    DELU with weights 0.8): sparsity (``norm`` = mean attention) and guidance
    (``guide`` = |1 - p_bg - A|, the attention follows the CAS's foreground probability).
    Without the guide term the suppressed branch learns to zero the attention everywhere,
    since the background logit is high in every video.
    """

    def __init__(self, feature_dim: int, rgb_dim: int, num_classes: int, hidden: int,
                 dropout: float, norm_weight: float = 0.8, guide_weight: float = 0.8) -> None:
        super().__init__()
        self.embed = VideoEmbedding(feature_dim, hidden, dropout)
        self.attn = Attention(hidden, hidden // 2 if hidden >= 16 else hidden, 0.5)
        self.head = ClassHead(hidden, num_classes, dropout)
        self.norm_weight, self.guide_weight = norm_weight, guide_weight

    def forward(self, features: Tensor, mask: Tensor) -> BaseOutput:
        emb = self.embedding(features, mask)
        return BaseOutput(embedding=emb, attention=self.attn(emb, mask), cas=self.head(emb))

    def embedding(self, features: Tensor, mask: Tensor) -> Tensor:
        return self.embed(features, mask)

    def aux_losses(self, out: BaseOutput, cas: Tensor, labels: Tensor, mask: Tensor,
                   topk: int) -> dict[str, Tensor]:
        return {"norm": self.norm_weight * masked_mean(out.attention, mask),
                "guide": self.guide_weight * guide_loss(out.attention, cas, mask)}


def guide_loss(attention: Tensor, cas: Tensor, mask: Tensor) -> Tensor:
    """mean |1 - p_bg - A|: attention agrees with the CAS's foreground probability."""
    p_bg = torch.softmax(cas.float(), dim=-1)[..., -1]
    return masked_mean((1 - p_bg - attention).abs(), mask)
