"""Complete Semantic Reconstruction (eq. 11-17 of MLLM4WTAL).

F_complete = FC(F) (eq. 12) and its own attention A_CSR = sigmoid(convs(F_complete))
(eq. 13 writes F_e; CSR keeps its own embedding so that phase 2 of DPID can update it
without touching the KSM side). A masked complete description is embedded by word vectors
+ FC (F_c). The reconstructor:

- ``transformer``: an encoder whose self-attention scores are multiplied by A_CSR over the
  keys (eq. 14) gives F_fg; a decoder (text self-attention, then cross-attention to F_fg
  with scores multiplied by A_CSR, eq. 15) gives H;
- ``gru`` / ``lstm``: bidirectional recurrent encoder over A_CSR * F_complete and
  recurrent text decoder, with the same A_CSR-weighted cross-attention;

then FC to the vocabulary (eq. 16); L_CSR is the NLL of the masked words (eq. 17,
``model.losses.masked_word_nll``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mllm4wtal.model.base import Attention


def weighted_attention(q: Tensor, k: Tensor, v: Tensor, weight: Tensor, key_mask: Tensor
                       ) -> Tensor:
    """softmax(q k^T / sqrt(d) * weight) v (eq. 14-15).

    q (B, [H,] m, d), k/v (B, [H,] T, d), weight (B, T) over the keys, key_mask (B, T)
    valid keys. The weight multiplies the score of key j, q.k_j * w_j = q.(w_j k_j), so it
    is folded into the keys and the product runs in ``scaled_dot_product_attention``: no
    (m, T) score matrix per head is kept for the backward pass where the kernel allows.
    """
    heads = (None,) * (q.dim() - 3)  # broadcast over the head dimension, if any
    k = k * weight[(slice(None), *heads, slice(None), None)]
    mask = key_mask[(slice(None), *heads, None, slice(None))]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class WeightedMHA(nn.Module):
    """Multi-head attention whose scores are multiplied by a per-key weight (A_CSR)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"csr.dim={dim} must be divisible by csr.heads={heads}")
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mem: Tensor, weight: Tensor, key_mask: Tensor) -> Tensor:
        b, m, d = x.shape
        h = self.heads

        def split(z: Tensor) -> Tensor:  # (B, n, d) -> (B, h, n, d / h), a view
            return z.view(b, z.shape[1], h, d // h).transpose(1, 2)

        out = weighted_attention(split(self.q(x)), split(self.k(mem)), split(self.v(mem)),
                                 weight, key_mask)
        return self.o(out.transpose(1, 2).reshape(b, m, d))


class _FFN(nn.Sequential):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, dim * 2), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim * 2, dim))


class EncoderLayer(nn.Module):
    """F_fg = Phi_enc(F_complete, A_CSR) (eq. 14), pre-norm residual block."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WeightedMHA(dim, heads)
        self.ffn = _FFN(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, weight: Tensor, mask: Tensor) -> Tensor:
        y = self.n1(x)
        x = x + self.drop(self.attn(y, y, weight, mask))
        return x + self.drop(self.ffn(self.n2(x)))


class DecoderLayer(nn.Module):
    """H = Phi_dec(F_c, F_fg, A_CSR) (eq. 15): text self-attention, A-weighted cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross = WeightedMHA(dim, heads)
        self.ffn = _FFN(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, text_mask: Tensor, mem: Tensor, weight: Tensor,
                mem_mask: Tensor) -> Tensor:
        y = self.n1(x)
        x = x + self.drop(self.self_attn(y, y, y, key_padding_mask=~text_mask,
                                         need_weights=False)[0])
        x = x + self.drop(self.cross(self.n2(x), mem, weight, mem_mask))
        return x + self.drop(self.ffn(self.n3(x)))


class CSR(nn.Module):
    def __init__(self, feature_dim: int, word_dim: int, vocab_size: int, dim: int,
                 reconstructor: str, layers: int, heads: int, max_len: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.kind = reconstructor
        self.fc = nn.Linear(feature_dim, dim)  # eq. 12
        self.attn = Attention(dim, max(dim // 2, 8), 0.5)  # eq. 13
        self.word_fc = nn.Linear(word_dim, dim)
        self.mask_embedding = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        if reconstructor == "transformer":
            self.enc = nn.ModuleList(EncoderLayer(dim, heads, dropout) for _ in range(layers))
            self.dec = nn.ModuleList(DecoderLayer(dim, heads, dropout) for _ in range(layers))
        elif reconstructor in ("gru", "lstm"):
            rnn = nn.GRU if reconstructor == "gru" else nn.LSTM
            self.enc_rnn = rnn(dim, dim // 2, layers, batch_first=True, bidirectional=True)
            self.dec_rnn = rnn(dim, dim // 2, layers, batch_first=True, bidirectional=True)
            self.cross = WeightedMHA(dim, heads)
            self.cross_norm = nn.LayerNorm(dim)
        else:
            raise ValueError(f"unknown reconstructor '{reconstructor}'")
        self.norm = nn.LayerNorm(dim)
        self.vocab_head = nn.Linear(dim, vocab_size)  # eq. 16

    def embed_video(self, features: Tensor, mask: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
        """F_complete (B, T, dim) and A_CSR (B, T); ``mask`` (B, T) valid snippets."""
        fc = self.fc(features)
        return fc, self.attn(fc, mask)

    def reconstruct(self, f_complete: Tensor, weight: Tensor, video_mask: Tensor,
                    word_vectors: Tensor, text_mask: Tensor, masked: Tensor) -> Tensor:
        """Vocabulary logits (B, m, V) for a masked sentence given the video and a weight.

        word_vectors (B, m, word_dim) of the sentence; text_mask (B, m) present words;
        masked (B, m) positions replaced by the mask embedding.
        """
        fc_text = self.word_fc(word_vectors)
        fc_text = torch.where(masked[..., None], self.mask_embedding.expand_as(fc_text), fc_text)
        x = fc_text + self.pos[: fc_text.shape[1]]
        if self.kind == "transformer":
            mem = f_complete
            for layer in self.enc:
                mem = layer(mem, weight, video_mask)
            for layer in self.dec:
                x = layer(x, text_mask, mem, weight, video_mask)
        else:
            mem = self._run(self.enc_rnn, f_complete * weight[..., None], video_mask)
            x = self._run(self.dec_rnn, x, text_mask)
            x = x + self.cross(self.cross_norm(x), mem, weight, video_mask)
        return self.vocab_head(self.norm(x))

    @staticmethod
    def _run(rnn: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=x.shape[1])
        return out
