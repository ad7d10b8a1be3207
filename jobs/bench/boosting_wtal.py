"""The Boosting-WTAL training iteration (TSM + VLC, three optimisers), re-implemented.

The reference of ``reference_iteration.py``: Li et al., "Boosting Weakly-Supervised Temporal
Action Localization with Text Information" (CVPR 2023;
/work/shared/papers/li2023-boosting-wtal-text.txt), written here from the paper and from
reading its public code base (github.com/lgzlIlIlI/Boosting-WTAL: ``model.py`` TSM,
``model2.py`` VLC, ``modules/`` the transformer, ``train.py`` the iteration, ``main.py`` the
optimisers, ``options.py`` / ``run.sh`` the THUMOS14 settings, ``wsad_dataset.py`` the
sentences). Widths at ``SCALES["paper"]``:

* two-stream attention (TSM and VLC each own one; ``model.py`` ``Attn``, paper eq. 1, 5),
  per stream (RGB 1024, flow 1024): autoencoder conv3 1024->512->1024 from the other
  stream (its output regresses this stream: the MSE x 1.5 of ``train.py``); channel gate
  conv3 1024->1024 on the time-mean; bit-wise gate conv3 512->1024; filtered feature =
  sigmoid(gate x cosine) x stream; attention conv3 1024->512, conv3 512->512, conv1 512->1,
  sigmoid; LeakyReLU 0.2, dropout 0.5. att = mean of the two streams' attentions;
* TSM video branch (sec. 3.2; ``model.py`` ``TSM``): two conv3 2048->2048 (dropout 0.7);
  CAS = the inner product with the C+1 = 21 text queries (eq. 3);
* TSM text queries (eq. 2; ``model.py``): per class 9 learnable context tokens (``num_pro``)
  + the 2 GloVe (300-d) words of the label; background words learnable; conv1 300->2048,
  + learnable per-token offset + sinusoidal position; one block without normalisation:
  8-head self-attention 2048 and MLP 2048->8192->2048 (GELU), each behind a layer-scale
  drop-path (1e-4, p 0.1); the query is token 0 (the code has no [START] token);
* TSM losses (eq. 4; ``train.py`` ``criterion``): top-k MIL (k = T // 7) on the CAS (with
  background) and on the attention-suppressed CAS (without), co-activity loss on the 3
  class-sharing pairs, attention norm and guide terms (0.8 each, mean of 3 attentions),
  the autoencoders' MSE x 1.5, and 1.5 MSE(att_TSM, sg(att_VLC)) (eq. 11);
* VLC (sec. 3.3; ``model2.py`` ``VLC``, ``modules/``): frames FC 2048->512 (dropout 0.1),
  words FC 300->512 of "one video of the <label>." (14 tokens + start, vocabulary 8001);
  1/3 of the words masked with a learnable token, drawn by part-of-speech weight; a
  reconstructor of 3 video layers (self-attention over the T snippets, causal like every
  stack of ``modules/decoder.py``; as in its ``multihead_attention.py`` the softmax, not
  the score of eq. 6, is multiplied by att_VLC and renormalised) and 3 text layers (causal
  self-attention, cross-attention to the video reweighted by att_VLC, eq. 7), all
  post-norm, 4 heads, FFN 512->1024->512; FC 512->8001 (eq. 8); run three times, with
  att, without weight and with 1 - att (eq. 10); a 1+1-layer proposal scorer runs too, its
  output unused (as in ``model2.py``);
* VLC losses (eq. 9-10; ``model2.py``): label-smoothed (0.1) NLL; ``rec_loss`` = NLL(att) +
  NLL(none); ``ivc_loss`` = hinges NLL(att) - NLL(none) + 0.1 and NLL(att) - NLL(1-att) +
  0.15 (the paper says gamma2 0.2; the code 0.15), + the autoencoders' MSE x 1.5 +
  1.5 MSE(att_VLC, sg(att_TSM));
* the iteration (``train.py``): TSM forward; VLC forward with its attention frozen,
  ``rec_loss`` backward (graph retained), clip 10, step of the reconstructor's Adam; VLC
  forward again with the reconstructor frozen, ``ivc_loss`` backward, clip 10, step of the
  attention's Adam (both Adam lr 4e-4, inverse-sqrt schedule, 400 warm-up updates from
  1e-7, ``main.py``); then the TSM loss backward and the TSM Adam step (lr 5e-5, weight
  decay 1e-3, ``run.sh``). B = 10 (3 class-sharing pairs), T = 320 (``options.py``).

Simplified: inputs are random tensors of the real shapes (features uniform in [0, 1),
sentences of 5-9 random words); 1x1 convolutions are written as linear layers (same
FLOPs); the code base's per-head average of attention weights (unused) and word accuracy
are not computed; the reconstructor is fed the masked sentence with positions, as the
paper says (``model2.py`` builds it, then feeds the unmasked one: the same cost).
``SCALES["small"]`` shrinks every width, and VLC to 1 + 1 layers, for a smoke run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Shapes:
    batch: int
    length: int  # T
    feature: int  # D: RGB then flow, half each
    att_hidden: int  # the attention head's conv width
    glove: int  # word-vector width
    n_ctx: int  # TSM learnable context tokens
    text_heads: int
    mlp: int  # TSM text MLP
    hid: int  # VLC width
    vlc_heads: int
    vlc_layers: int
    vocab: int
    words: int  # sentence tokens (without the start token)
    classes: int = 20
    topk_div: int = 7
    pairs: int = 3


SCALES = {
    "paper": Shapes(10, 320, 2048, 512, 300, 9, 8, 8192, 512, 4, 3, 8001, 14),
    "small": Shapes(10, 32, 128, 32, 50, 4, 4, 512, 64, 4, 1, 500, 14),
}


def sinusoid(n: int, dim: int) -> Tensor:
    """Fixed positions, sines then cosines; position 0 is padding (zeros)."""
    freq = torch.exp(torch.arange(dim // 2) * -(math.log(10000.0) / (dim // 2 - 1)))
    angle = torch.arange(n)[:, None] * freq[None]
    table = torch.cat([angle.sin(), angle.cos()], 1)
    table[0] = 0
    return table


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, key_pad: Tensor | None = None,
           causal: bool = False, reweight: Tensor | None = None) -> Tensor:
    """Multi-head attention as ``modules/multihead_attention.py`` computes it: explicit
    scores, softmax, then (VLC) the probabilities times a per-key weight, renormalised."""
    b, lq, w = q.shape
    d = w // heads
    q, k, v = (z.reshape(b, -1, heads, d).transpose(1, 2) for z in (q * d ** -0.5, k, v))
    scores = q @ k.transpose(-1, -2)
    if causal:
        scores = scores + torch.full(scores.shape[-2:], float("-inf")).triu(1)
    if key_pad is not None:
        scores = scores.masked_fill(key_pad[:, None, None, :], -1e30)
    p = scores.softmax(-1)
    if reweight is not None:
        p = p * (reweight[:, None, None, :] + 1e-10)
        p = p / p.sum(-1, keepdim=True)
    return (p @ v).transpose(1, 2).reshape(b, lq, w)


def conv(cin: int, cout: int, p: float, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.LeakyReLU(0.2),
                         nn.Dropout(p))


class StreamAttention(nn.Module):
    """One stream's filtered feature and attention, guided by the other stream."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.ae_enc, self.ae_dec = conv(width, width // 2, 0.5), conv(width // 2, width, 0.5)
        self.channel, self.bitwise = conv(width, width, 0.5), conv(width // 2, width, 0.5)
        self.head = nn.Sequential(conv(width, hidden, 0.5), nn.Conv1d(hidden, hidden, 3,
                                  padding=1), nn.LeakyReLU(0.2), nn.Conv1d(hidden, 1, 1),
                                  nn.Dropout(0.5), nn.Sigmoid())

    def forward(self, x: Tensor, other: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        code = self.ae_enc(other)
        channel = F.normalize(self.channel(x.mean(-1, keepdim=True)), dim=1)
        gate = self.bitwise(code)
        cosine = (channel * F.normalize(gate, dim=1)).sum(1, keepdim=True)
        filtered = torch.sigmoid(gate * cosine) * x
        return self.head(filtered)[:, 0], filtered, F.mse_loss(self.ae_dec(code), x)


class TwoStreamAttention(nn.Module):
    def __init__(self, s: Shapes) -> None:
        super().__init__()
        self.rgb, self.flow = (StreamAttention(s.feature // 2, s.att_hidden) for _ in "rf")

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # x (B, D, T)
        rgb, flow = x.chunk(2, 1)
        a_r, f_r, rec_r = self.rgb(rgb, flow)
        a_f, f_f, rec_f = self.flow(flow, rgb)
        return {"att": (a_r + a_f) / 2, "att_r": a_r, "att_f": a_f,
                "feat": torch.cat([f_r, f_f], 1), "recon": rec_r + rec_f}


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if not training:
        return x
    return x * (torch.rand(x.shape[0], 1, 1) + 1 - p).floor() / (1 - p)


class TextQueries(nn.Module):
    """TSM's C+1 class queries: [context; label words] through one transformer block."""

    def __init__(self, s: Shapes) -> None:
        super().__init__()
        c, n, w = s.classes + 1, s.n_ctx + 2, s.feature
        self.ctx = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(c, s.n_ctx, s.glove)))
        self.register_buffer("label_words", torch.randn(s.classes, 2, s.glove) * 0.3)
        self.background = nn.Parameter(torch.zeros(1, 2, s.glove))
        self.embed = nn.Sequential(nn.Linear(s.glove, w), nn.LeakyReLU(0.2), nn.Dropout(0.5))
        self.offset = nn.Parameter(0.03125 * torch.randn(c, n, w))
        self.register_buffer("pos", sinusoid(n, w))
        self.heads, self.qkv, self.proj = s.text_heads, nn.Linear(w, 3 * w), nn.Linear(w, w)
        self.mlp = nn.Sequential(nn.Linear(w, s.mlp), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(s.mlp, w), nn.Dropout(0.1))
        self.scale_attn, self.scale_mlp = (nn.Parameter(torch.full((w,), 1e-4)) for _ in "am")

    def forward(self) -> Tensor:
        tokens = torch.cat([self.ctx, torch.cat([self.label_words, self.background])], 1)
        x = self.embed(tokens) + self.offset + self.pos
        q, k, v = self.qkv(x).chunk(3, -1)
        x = x + drop_path(self.scale_attn * self.proj(attend(q, k, v, self.heads)), 0.1,
                          self.training)
        x = x + drop_path(self.scale_mlp * self.mlp(x), 0.1, self.training)
        return x[:, 0]


class TSM(nn.Module):
    def __init__(self, s: Shapes) -> None:
        super().__init__()
        self.attention = TwoStreamAttention(s)
        self.fusion1, self.fusion2 = conv(s.feature, s.feature, 0.7), conv(s.feature,
                                                                            s.feature, 0.7)
        self.text = TextQueries(s)
        for m in self.modules():  # ``model.py`` ``weights_init``
            if isinstance(m, nn.Conv1d | nn.Linear):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        out = self.attention(features.transpose(1, 2))
        h0 = self.fusion1(out["feat"])
        out["cas"] = torch.einsum("bdt,cd->btc", self.fusion2(h0), self.text())
        out["feat"] = h0.transpose(1, 2)
        return out


def topk_mil(cas: Tensor, labels: Tensor, k: int, background: float) -> Tensor:
    y = torch.cat([labels, torch.full_like(labels[:, :1], background)], 1)
    y = y / (y.sum(1, keepdim=True) + 1e-4)
    return -(y * cas.topk(k, dim=1).values.mean(1).log_softmax(-1)).sum(-1).mean()


def co_activity(feat: Tensor, cas: Tensor, labels: Tensor, pairs: int) -> Tensor:
    y = torch.cat([labels, torch.zeros_like(labels[:, :1])], 1)
    loss, count, n = feat.new_zeros(()), feat.new_zeros(()), max(feat.shape[1] - 1, 1)
    for i in range(0, 2 * pairs, 2):
        a1, a2 = cas[i].softmax(0), cas[i + 1].softmax(0)
        h1, h2 = feat[i].T @ a1, feat[i + 1].T @ a2
        l1, l2 = feat[i].T @ ((1 - a1) / n), feat[i + 1].T @ ((1 - a2) / n)
        d1, d2, d3 = (1 - F.cosine_similarity(u, v, dim=0) for u, v in ((h1, h2), (h1, l2),
                                                                          (h2, l1)))
        both = y[i] * y[i + 1]
        loss = loss + 0.5 * ((F.relu(d1 - d2 + 0.5) + F.relu(d1 - d3 + 0.5)) * both).sum()
        count = count + both.sum()
    return loss / count


def tsm_loss(out: dict[str, Tensor], labels: Tensor, s: Shapes) -> Tensor:
    cas, att = out["cas"], out["att"][..., None]
    low = cas.min(-1, keepdim=True).values
    suppressed = att * (cas - low) + low
    k = max(1, cas.shape[1] // s.topk_div)
    background = cas.softmax(-1)[..., -1]
    atts = (out["att"], out["att_r"], out["att_f"])
    norm = sum(a.mean() for a in atts) / 3
    guide = sum((1 - a - background).abs().mean() for a in atts) / 3
    return (topk_mil(cas, labels, k, 1.0) + topk_mil(suppressed, labels, k, 0.0)
            + co_activity(out["feat"], suppressed, labels, s.pairs) + 0.8 * norm
            + 0.8 * guide + 1.5 * out["recon"])


class DecoderLayer(nn.Module):
    """Post-norm layer of ``modules/decoder.py``: causal self-attention, optional
    cross-attention, FFN (width x 2); both attentions may be reweighted per key."""

    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_qkv, self.self_out, self.norm1 = nn.Linear(w, 3 * w), nn.Linear(w, w), \
            nn.LayerNorm(w)
        self.cross_q, self.cross_kv = nn.Linear(w, w), nn.Linear(w, 2 * w)
        self.cross_out, self.norm2 = nn.Linear(w, w), nn.LayerNorm(w)
        self.ffn = nn.Sequential(nn.Linear(w, 2 * w), nn.ReLU(), nn.Linear(2 * w, w))
        self.norm3 = nn.LayerNorm(w)

    def forward(self, x: Tensor, pad: Tensor, memory: Tensor | None = None,
                memory_pad: Tensor | None = None, self_weight: Tensor | None = None,
                memory_weight: Tensor | None = None) -> Tensor:
        q, k, v = self.self_qkv(x).chunk(3, -1)
        x = self.norm1(x + self.self_out(attend(q, k, v, self.heads, pad, True, self_weight)))
        if memory is not None:
            k, v = self.cross_kv(memory).chunk(2, -1)
            x = self.norm2(x + self.cross_out(attend(self.cross_q(x), k, v, self.heads,
                                                     memory_pad, False, memory_weight)))
        return self.norm3(x + self.ffn(x))


class DualDecoder(nn.Module):
    """``modules/transformers.py`` ``DualTransformer``: a video stack and a text stack."""

    def __init__(self, w: int, heads: int, layers: int) -> None:
        super().__init__()
        self.video = nn.ModuleList(DecoderLayer(w, heads) for _ in range(layers))
        self.text = nn.ModuleList(DecoderLayer(w, heads) for _ in range(layers))

    def complete(self, frames: Tensor, frames_pad: Tensor, words: Tensor, words_pad: Tensor,
                 weight: Tensor | None) -> Tensor:  # eq. 6-7
        for layer in self.video:
            frames = layer(frames, frames_pad, self_weight=weight)
        for layer in self.text:
            words = layer(words, words_pad, frames, frames_pad, memory_weight=weight)
        return words

    def score(self, frames: Tensor, frames_pad: Tensor, words: Tensor, words_pad: Tensor
              ) -> Tensor:
        for layer in self.text:
            words = layer(words, words_pad)
        for layer in self.video:
            frames = layer(frames, frames_pad, words, words_pad)
        return frames


class VLC(nn.Module):
    def __init__(self, s: Shapes) -> None:
        super().__init__()
        self.attention = TwoStreamAttention(s)  # the "mask generator"
        self.frame_fc, self.word_fc = nn.Linear(s.feature, s.hid), nn.Linear(s.glove, s.hid)
        self.mask_vec, self.start_vec = (nn.Parameter(torch.zeros(s.glove)) for _ in "ms")
        self.completer = DualDecoder(s.hid, s.vlc_heads, s.vlc_layers)
        self.scorer = DualDecoder(s.hid, s.vlc_heads, 1)
        self.fc_rec = nn.Linear(s.hid, s.vocab)
        self.register_buffer("pos", sinusoid(s.words + 1, s.hid))

    def train_only(self, attention: bool) -> None:
        """Freeze the reconstructor (``attention``) or the attention (not ``attention``)."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("attention.") == attention)

    def forward(self, features: Tensor, words: Tensor, lengths: Tensor, pos_weight: Tensor
                ) -> dict[str, Tensor]:
        out = self.attention(features.transpose(1, 2))
        weight = out["att"]
        frames = self.frame_fc(F.dropout(out["feat"].transpose(1, 2), 0.1, self.training))
        frames_pad = torch.zeros(frames.shape[:2], dtype=torch.bool)
        words = torch.cat([self.start_vec.expand(len(words), 1, -1), words[:, 1:]], 1)
        words = self.word_fc(F.dropout(words, 0.1, self.training))
        words_pad = torch.arange(words.shape[1])[None] >= lengths[:, None] + 1
        self.scorer.score(frames, frames_pad, words + self.pos, words_pad)  # unused, as there
        chosen = torch.zeros(words.shape[:2], dtype=torch.bool)
        for i, n in enumerate(lengths.tolist()):  # mask 1/3 of the words, by POS weight
            if n // 3:
                chosen[i, torch.multinomial(pos_weight[i, :n], n // 3) + 1] = True
        masked = torch.where(chosen[..., None], self.word_fc(self.mask_vec), words) + self.pos
        inp, inp_pad = masked[:, :-1], words_pad[:, :-1]
        for name, w in (("logits", weight), ("hard", None), ("easy", 1 - weight)):
            out[name] = self.fc_rec(self.completer.complete(frames, frames_pad, inp, inp_pad, w))
        out["keep"] = ~inp_pad
        return out


def smoothed_nll(logits: Tensor, ids: Tensor, keep: Tensor) -> Tensor:
    logp = logits.log_softmax(-1)
    nll = 0.9 * -logp.gather(-1, ids[..., None])[..., 0] - 0.1 / logp.shape[-1] * logp.sum(-1)
    return (nll * keep).sum(-1) / keep.sum(-1)


class Reference:
    """TSM + VLC, their three optimisers, and random inputs of the real shapes."""

    def __init__(self, s: Shapes, seed: int = 0) -> None:
        assert s.batch >= 2 * s.pairs
        torch.manual_seed(seed)
        self.s, self.tsm, self.vlc = s, TSM(s), VLC(s)
        self.opt_tsm = torch.optim.Adam(self.tsm.parameters(), lr=5e-5, weight_decay=1e-3)
        self.vlc.train_only(attention=False)
        self.opt_rec = torch.optim.Adam([p for p in self.vlc.parameters() if p.requires_grad],
                                        lr=4e-4)
        self.vlc.train_only(attention=True)
        self.opt_mask = torch.optim.Adam(self.vlc.attention.parameters(), lr=4e-4)

        def inverse_sqrt(step: int) -> float:
            if step < 400:
                return (1e-7 + step * (4e-4 - 1e-7) / 400) / 4e-4
            return math.sqrt(400 / step)

        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, inverse_sqrt)
                          for o in (self.opt_rec, self.opt_mask)]
        g = torch.Generator().manual_seed(seed)
        self.batches = [self.random_batch(g) for _ in range(2)]
        self.iteration = 0

    def random_batch(self, g: torch.Generator) -> dict[str, Tensor]:
        s = self.s
        labels = torch.zeros(s.batch, s.classes)
        for i in range(s.batch):  # pairs share a class (``load_data``'s similar pairs)
            if i < 2 * s.pairs and i % 2:
                labels[i] = labels[i - 1]
            else:
                labels[i, int(torch.randint(s.classes, (1,), generator=g))] = 1
        lengths = torch.randint(5, 10, (s.batch,), generator=g)
        present = torch.arange(s.words)[None] < lengths[:, None]
        ids = torch.randint(1, s.vocab, (s.batch, s.words), generator=g) * present
        words = torch.randn(s.batch, s.words + 1, s.glove, generator=g) * 0.3
        words[:, 1:] *= present[..., None]
        pos_weight = (1 + torch.randint(2, (s.batch, s.words), generator=g)) * present
        return {"features": torch.rand(s.batch, s.length, s.feature, generator=g),
                "labels": labels, "ids": ids, "words": words, "lengths": lengths,
                "pos_weight": pos_weight.float()}

    def step(self) -> float:
        """One ``train.py`` iteration; the VLC graphs stay referenced until its end."""
        b = self.batches[self.iteration % len(self.batches)]
        self.tsm.train()
        tsm_out = self.tsm(b["features"])
        loss_tsm = tsm_loss(tsm_out, b["labels"], self.s)
        text = (b["words"], b["lengths"], b["pos_weight"])

        self.vlc.train_only(attention=False)
        self.opt_rec.zero_grad()
        rec = self.vlc(b["features"], *text)
        loss_tsm = loss_tsm + 1.5 * F.mse_loss(tsm_out["att"], rec["att"].detach())
        loss_rec = (smoothed_nll(rec["logits"], b["ids"], rec["keep"]).mean()
                    + smoothed_nll(rec["hard"], b["ids"], rec["keep"]).mean())
        loss_rec.backward(retain_graph=True)
        nn.utils.clip_grad_norm_(self.vlc.parameters(), 10)
        self.opt_rec.step()

        self.vlc.train_only(attention=True)
        self.opt_mask.zero_grad()
        gen = self.vlc(b["features"], *text)
        nll = {k: smoothed_nll(gen[k], b["ids"], gen["keep"]) for k in ("logits", "hard", "easy")}
        loss_mask = (F.relu(nll["logits"] - nll["hard"] + 0.1).mean()
                     + F.relu(nll["logits"] - nll["easy"] + 0.15).mean() + 1.5 * gen["recon"]
                     + 1.5 * F.mse_loss(gen["att"], tsm_out["att"].detach()))
        loss_mask.backward(retain_graph=True)
        nn.utils.clip_grad_norm_(self.vlc.parameters(), 10)
        self.opt_mask.step()
        for schedule in self.schedules:
            schedule.step()

        self.opt_tsm.zero_grad()
        loss_tsm.backward()
        self.opt_tsm.step()
        self.iteration += 1
        del rec, gen
        return float(loss_tsm.detach() + loss_rec.detach() + loss_mask.detach())
