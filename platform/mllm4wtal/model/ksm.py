"""Key Semantic Matching (eq. 4-10 of MLLM4WTAL).

Text queries: T_query = [T_start; T_context; T_key] (eq. 5) -> transformer encoder ->
one query per class, read out as the mean of all its token outputs; the (C+1)-th
(background) query is a parameter initialised to zero. The class queries are centred
(their mean over classes removed) before normalisation: the component every class shares
(the prompt, common words) says nothing about the class, and with it the queries of
classes with similar names start nearly parallel, which stalls the MIL losses.

Matching: M = s <F_e / |F_e|, F_query / |F_query|> (inner products of unit vectors with a
learnable scale s, initialised to 10, as CLIP-style matching does: raw inner products of
fresh embeddings are too small to train the MIL losses at the paper's learning rate); the
background query is not normalised so that it can start at zero. M_hat = A_KSM * M. The
loss (eq. 6-10) is ``model.losses.ksm_loss``.

``prompt``: ``learnable`` context vectors shared by all classes (CoOp's unified context,
as the paper), ``class_specific``: one learnable context per class (CoOp's CSC; it lets
the queries of classes whose descriptions share words, GolfSwing / TennisSwing at cos
0.96, move apart), or ``handcraft``: the fixed word vectors of a hand-written prompt
(``text.tensors.HANDCRAFT_PROMPT``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KSM(nn.Module):
    def __init__(self, word_dim: int, hidden: int, dim: int, n_ctx: int, layers: int,
                 heads: int, prompt: str, num_classes: int,
                 handcraft: Tensor | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        self.word_proj = nn.Linear(word_dim, dim)
        if prompt in ("learnable", "class_specific"):
            shape = (n_ctx, dim) if prompt == "learnable" else (num_classes, n_ctx, dim)
            self.ctx = nn.Parameter(torch.randn(shape) * 0.02)
        elif prompt == "handcraft":
            if handcraft is None:
                raise ValueError("prompt='handcraft' needs the prompt's word vectors")
            self.register_buffer("handcraft", handcraft.clone())
            self.ctx = None
        else:
            raise ValueError(f"unknown prompt '{prompt}'")
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden))
        self.bg_query = nn.Parameter(torch.zeros(hidden))
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def _context(self) -> Tensor:
        return self.ctx if self.ctx is not None else self.word_proj(self.handcraft)

    def queries(self, key_vectors: Tensor, key_mask: Tensor) -> Tensor:
        """F_query (C+1, H) from the word vectors of one key description per class.

        key_vectors (C, L, word_dim); key_mask (C, L), True where a word is present.
        """
        c = key_vectors.shape[0]
        ctx = self._context()
        ctx = ctx.expand(c, -1, -1) if ctx.dim() == 2 else ctx
        tokens = torch.cat([self.start.expand(c, 1, -1), ctx, self.word_proj(key_vectors)],
                           dim=1)
        present = torch.cat([key_mask.new_ones(c, 1 + ctx.shape[1]), key_mask], dim=1)
        encoded = self.encoder(tokens, src_key_padding_mask=~present)
        m = present.to(encoded.dtype)[..., None]
        fq = self.out((encoded * m).sum(1) / m.sum(1))
        fq = F.normalize(fq - fq.mean(0, keepdim=True), dim=-1)
        return torch.cat([fq, self.bg_query[None]], dim=0)

    def match(self, embedding: Tensor, queries: Tensor) -> Tensor:
        """M (B, T, C+1) from F_e (B, T, H) and the queries (C+1, H) (eq. 6-7 inputs)."""
        return self.log_scale.exp() * F.normalize(embedding, dim=-1) @ queries.t()
