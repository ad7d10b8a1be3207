"""Complete Semantic Reconstruction (eq. 11-17) and its phase of DPID (eq. 20).

(a) which words are masked and that L_CSR is the NLL of exactly those words;
(b) the A_CSR-weighted attention of the encoder (eq. 14) and decoder (eq. 15) against
    values written out from the equations on tiny tensors;
(c) phase 2 of DPID sends gradient to the CSR side only, with A_KSM as a fixed teacher.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mllm4wtal.config import with_overrides
from mllm4wtal.data.types import Video
from mllm4wtal.model.csr import (
    CSR,
    DecoderLayer,
    EncoderLayer,
    WeightedMHA,
    weighted_attention,
)
from mllm4wtal.model.losses import masked_word_nll
from mllm4wtal.text import bundle as bundle_module
from mllm4wtal.text.bundle import Sentence, TextBundle
from mllm4wtal.text.masking import num_to_mask
from mllm4wtal.text.tensors import TextTensors
from mllm4wtal.text.vocab import MASK, PAD, SPECIALS, START, Vocabulary
from train_helpers import setup

# ---------------------------------------------------------------- helpers


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def set_linear(lin: torch.nn.Linear, weight: torch.Tensor) -> None:
    """y = x @ weight.T, no bias."""
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.zero_()


W_Q = torch.eye(4)
W_K = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, -1.0]])
W_V = torch.tensor([[0.5, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                    [1.0, 0.0, 0.0, 2.0], [0.0, -1.0, 0.0, 1.0]])
W_O = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])


def known_mha(mha: WeightedMHA) -> None:
    for lin, w in ((mha.q, W_Q), (mha.k, W_K), (mha.v, W_V), (mha.o, W_O)):
        set_linear(lin, w)


def eq14_15(queries: torch.Tensor, keys: torch.Tensor, a: torch.Tensor,
            valid: torch.Tensor) -> torch.Tensor:
    """delta(Q W_q (K W_k)^T / sqrt(d_h) * A) K W_v, then the output projection; one
    video (no batch axis), one head, d_h = 4; invalid keys get no attention."""
    scores = (queries @ W_Q.T) @ (keys @ W_K.T).T / math.sqrt(4) * a[None, :]
    scores = scores.masked_fill(~valid[None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ (keys @ W_V.T) @ W_O.T


def tiny_bundle(sentences: dict[str, list[Sentence]]) -> TextBundle:
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(12)])
    tensors = TextTensors(word_vectors=torch.zeros(len(vocab), 2),
                          key_ids=torch.zeros(1, 1, 1, dtype=torch.long),
                          key_count=torch.ones(1, dtype=torch.long),
                          handcraft_ids=torch.zeros(1, dtype=torch.long))
    return TextBundle(vocab=vocab, tensors=tensors, complete=sentences)


def video(name: str) -> Video:
    return Video(name=name, subset="validation", features=np.zeros((4, 2), np.float32),
                 labels=(0,), segments=(), duration=1.0, fps=25.0)


# ---------------------------------------------------------------- (a) masking and L_CSR

SENTENCES = {
    "v0": [Sentence(ids=np.array([4, 5, 6, 7, 8, 9]),
                    is_key=np.array([False, True, False, False, False, True]))],
    "v1": [Sentence(ids=np.array([10, 11, 12]), is_key=np.array([True, False, False])),
           Sentence(ids=np.array([13, 14, 15, 4, 5, 6, 7, 8, 9]),
                    is_key=np.array([False] * 8 + [True]))],
    "v2": [Sentence(ids=np.array([15]), is_key=np.array([False]))],
}


def test_masked_sentences_mask_exactly_the_drawn_positions(monkeypatch):
    drawn: list[np.ndarray] = []
    real = bundle_module.mask_positions

    def spy(n_words, is_key, ratio, key_weight, rng):
        pos = real(n_words, is_key, ratio, key_weight, rng)
        drawn.append(pos)
        return pos

    monkeypatch.setattr(bundle_module, "mask_positions", spy)
    bundle = tiny_bundle(SENTENCES)
    videos = [video("v0"), video("v1"), video("v2"), video("v1")]
    for seed in range(20):
        drawn.clear()
        ids, present, masked = bundle.masked_sentences(videos, 1 / 3, 3.0,
                                                       np.random.default_rng(seed))
        assert ids.shape == present.shape == masked.shape and len(drawn) == len(videos)
        for row, v in enumerate(videos):
            n = int(present[row].sum())
            sentence = next(s for s in bundle.complete[v.name] if len(s.ids) == n)
            assert ids[row, :n].tolist() == sentence.ids.tolist()
            assert (ids[row, n:] == PAD).all() and not present[row, n:].any()
            assert masked[row].nonzero().flatten().tolist() == drawn[row].tolist()
            assert len(drawn[row]) == num_to_mask(n, 1 / 3)  # the mask ratio
            assert not masked[row, n:].any()  # padding is never masked
        assert (masked & ~present).sum() == 0


def test_masked_sentences_prefer_key_words_and_are_deterministic():
    bundle = tiny_bundle({"v0": SENTENCES["v0"]})
    videos = [video("v0")]
    rng = np.random.default_rng(3)
    counts = torch.zeros(6)
    for _ in range(2000):
        counts += bundle.masked_sentences(videos, 1 / 3, 3.0, rng)[2][0].float()
    rate = counts / 2000  # 2 of 6 masked: a key word ~0.55, another ~0.22
    key = torch.from_numpy(SENTENCES["v0"][0].is_key)
    assert rate[key].min() > 0.45 and rate[~key].max() < 0.32

    bundle = tiny_bundle(SENTENCES)
    videos = [video("v1")] * 3 + [video("v0")]
    a = bundle.masked_sentences(videos, 1 / 3, 3.0, np.random.default_rng(11))
    b = bundle.masked_sentences(videos, 1 / 3, 3.0, np.random.default_rng(11))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    other = [bundle.masked_sentences(videos, 1 / 3, 3.0, np.random.default_rng(s))
             for s in range(12, 20)]
    assert any(not torch.equal(o[2], a[2]) for o in other)
    assert any(not torch.equal(o[0], a[0]) for o in other)  # which description, too


def test_training_batch_masks_words_never_specials(tiny_cfg, tiny_data):
    _, _, batch = setup(tiny_cfg, tiny_data)
    ids, present, masked = batch.text_ids, batch.text_mask, batch.masked
    assert (masked & ~present).sum() == 0
    for row in range(ids.shape[0]):
        n = int(present[row].sum())
        assert present[row, :n].all()  # words first, then padding
        assert int(masked[row].sum()) == num_to_mask(n, tiny_cfg.csr.mask_ratio)
    assert not torch.isin(ids[masked], torch.tensor([PAD, MASK, START])).any()


def test_masked_word_nll_by_hand():
    p = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]],
                      [[0.4, 0.3, 0.2, 0.1], [0.05, 0.05, 0.8, 0.1], [0.5, 0.5, 0.0, 0.0]],
                      [[0.1, 0.1, 0.1, 0.7], [0.2, 0.2, 0.3, 0.3], [0.6, 0.2, 0.1, 0.1]]])
    logits = torch.log(p.clamp_min(1e-12)) + 2.0  # a shift changes no probability
    targets = torch.tensor([[3, 1, 0], [0, 2, 2], [3, 3, 3]])
    masked = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    got = masked_word_nll(logits, targets, masked)
    want = [(-math.log(0.4) - math.log(0.7)) / 2, -math.log(0.8), 0.0]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    # only the masked words count: their logits get gradient, the others none
    logits.requires_grad_(True)
    masked_word_nll(logits, targets, masked).sum().backward()
    assert logits.grad[~masked].abs().sum() == 0
    assert (logits.grad[masked].abs().sum(-1) > 0).all()
    # row 1's unmasked target has probability 0: it must not turn the loss infinite
    assert math.isfinite(got[1].item())


def test_rec_loss_is_the_nll_of_the_batch_masked_words(tiny_cfg, tiny_data):
    model, dpid, batch = setup(tiny_cfg, tiny_data)
    seen: list[torch.Tensor] = []
    handle = model.csr.vocab_head.register_forward_hook(lambda m, i, out: seen.append(out))
    losses = dpid.rec_losses(batch, None)
    handle.remove()
    assert list(losses) == ["csr"] and len(seen) == 1
    logits = seen[0].detach().double()
    per_row = []
    for b in range(logits.shape[0]):
        terms = []
        for j in batch.masked[b].nonzero().flatten().tolist():
            z = logits[b, j]
            log_p = z[batch.text_ids[b, j]] - torch.logsumexp(z, dim=0)
            terms.append(-log_p.item())
        per_row.append(sum(terms) / len(terms))
    assert losses["csr"].item() == pytest.approx(sum(per_row) / len(per_row), rel=1e-5)


def test_masked_words_are_hidden_from_the_reconstructor():
    torch.manual_seed(0)
    csr = CSR(feature_dim=6, word_dim=5, vocab_size=9, dim=8, reconstructor="transformer",
              layers=1, heads=2, max_len=6).eval()
    f_complete, a = csr.embed_video(torch.randn(1, 5, 6))
    video_mask = torch.ones(1, 5, dtype=torch.bool)
    words = torch.randn(1, 4, 5)
    text_mask = torch.ones(1, 4, dtype=torch.bool)
    masked = torch.tensor([[False, True, False, False]])
    base = csr.reconstruct(f_complete, a, video_mask, words, text_mask, masked)
    hidden, shown = words.clone(), words.clone()
    hidden[0, 1] += 5.0  # the masked word
    shown[0, 2] += 5.0  # a visible word
    assert torch.equal(csr.reconstruct(f_complete, a, video_mask, hidden, text_mask, masked),
                       base)
    assert not torch.allclose(
        csr.reconstruct(f_complete, a, video_mask, shown, text_mask, masked), base)


# ---------------------------------------------------------------- (b) A-weighted attention


def test_weighted_attention_by_hand():
    """T=3 keys, d=4, two queries; scores scaled by A over the keys; key 2 is padding."""
    q = [[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, -1.0]]
    k = [[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 3.0]]
    v = [[1.0, 0.0], [0.0, 2.0], [100.0, 100.0]]
    a = [0.5, 1.0, 0.25]
    for valid in ([True, True, True], [True, True, False]):
        got = weighted_attention(torch.tensor([q]), torch.tensor([k]), torch.tensor([v]),
                                 torch.tensor([a]), torch.tensor([valid]))
        for i, qi in enumerate(q):
            s = [sum(x * y for x, y in zip(qi, kj, strict=True)) / 2.0 * aj
                 for kj, aj in zip(k, a, strict=True)]
            e = [math.exp(x) if ok else 0.0 for x, ok in zip(s, valid, strict=True)]
            want = [sum(ej / sum(e) * vj[c] for ej, vj in zip(e, v, strict=True))
                    for c in range(2)]
            assert got[0, i].tolist() == pytest.approx(want, rel=1e-6)
    # A = 0 does not remove a key: its score becomes 0, not -inf (eq. 14 multiplies)
    zero = weighted_attention(torch.tensor([q]), torch.tensor([k]), torch.tensor([v]),
                              torch.tensor([[0.0, 0.0, 0.0]]), torch.ones(1, 3, dtype=bool))
    assert zero[0, 0].tolist() == pytest.approx([101 / 3, 102 / 3])


def test_weighted_mha_splits_heads():
    """Two heads over d=4, identity projections: head h attends with dims 2h, 2h+1."""
    mha = WeightedMHA(4, 2)
    for lin in (mha.q, mha.k, mha.v, mha.o):
        set_linear(lin, torch.eye(4))
    g = torch.Generator().manual_seed(1)
    x, mem = torch.randn(2, 2, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    a = torch.tensor([[0.2, 0.9, 0.5], [1.0, 0.0, 0.7]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    got = mha(x, mem, a, valid)
    for b in range(2):
        for h in range(2):
            qh, kh = x[b][:, 2 * h: 2 * h + 2], mem[b][:, 2 * h: 2 * h + 2]
            s = (qh @ kh.T / math.sqrt(2) * a[b]).masked_fill(~valid[b], float("-inf"))
            want = torch.softmax(s, -1) @ kh
            torch.testing.assert_close(got[b][:, 2 * h: 2 * h + 2], want)


def test_encoder_self_attention_is_eq14():
    layer = EncoderLayer(4, 1, dropout=0.0).eval()
    known_mha(layer.attn)
    g = torch.Generator().manual_seed(2)
    f = torch.randn(1, 3, 4, generator=g)
    a = torch.tensor([[0.9, 0.2, 0.6]])
    for valid in (torch.tensor([True, True, True]), torch.tensor([True, True, False])):
        got = layer(f, a, valid[None])
        y = layer_norm(f[0], layer.n1)
        x1 = f[0] + eq14_15(y, y, a[0], valid)
        want = x1 + layer.ffn(layer_norm(x1, layer.n2))
        torch.testing.assert_close(got[0], want)
    # a padded snippet changes nothing at the valid ones
    moved = f.clone()
    moved[0, 2] += 10.0
    torch.testing.assert_close(layer(moved, a, valid[None])[0, :2], got[0, :2])


def test_decoder_cross_attention_is_eq15():
    layer = DecoderLayer(4, 1, dropout=0.0).eval()
    known_mha(layer.cross)
    g = torch.Generator().manual_seed(3)
    text, f_fg = torch.randn(1, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)
    text_valid = torch.tensor([True, True, False])  # the last word is padding
    a = torch.tensor([[0.3, 1.0, 0.8]])
    sa = layer.self_attn
    w_q, w_k, w_v = sa.in_proj_weight.detach().chunk(3)
    b_q, b_k, b_v = sa.in_proj_bias.detach().chunk(3)
    for mem_valid in (torch.tensor([True, True, True]), torch.tensor([True, False, True])):
        got = layer(text, text_valid[None], f_fg, a, mem_valid[None])
        y = layer_norm(text[0], layer.n1)
        s = ((y @ w_q.T + b_q) @ (y @ w_k.T + b_k).T / 2.0).masked_fill(
            ~text_valid[None], float("-inf"))
        self_out = torch.softmax(s, -1) @ (y @ w_v.T + b_v) @ sa.out_proj.weight.T
        x1 = text[0] + self_out + sa.out_proj.bias
        x2 = x1 + eq14_15(layer_norm(x1, layer.n2), f_fg[0], a[0], mem_valid)
        want = x2 + layer.ffn(layer_norm(x2, layer.n3))
        torch.testing.assert_close(got[0], want)
    # neither padded words nor padded snippets reach the valid words
    moved_text, moved_mem = text.clone(), f_fg.clone()
    moved_text[0, 2] += 10.0
    moved_mem[0, 1] += 10.0
    torch.testing.assert_close(
        layer(moved_text, text_valid[None], moved_mem, a, mem_valid[None])[0, :2], got[0, :2])


@pytest.mark.parametrize("kind", ["transformer", "gru", "lstm"])
def test_reconstruct_weights_every_video_attention_by_a(kind):
    """CSR.reconstruct hands A_CSR and the video padding mask to the encoder self-attention
    and to the decoder cross-attention, whose memory is the encoder's output F_fg."""
    torch.manual_seed(0)
    csr = CSR(feature_dim=6, word_dim=5, vocab_size=9, dim=8, reconstructor=kind, layers=2,
              heads=2, max_len=6).eval()
    calls: list[tuple[str, tuple]] = []
    outputs: dict[str, torch.Tensor] = {}
    for name, mod in csr.named_modules():
        if isinstance(mod, WeightedMHA):
            mod.register_forward_pre_hook(lambda m, args, name=name: calls.append((name, args)))
    if kind == "transformer":
        csr.enc[-1].register_forward_hook(lambda m, i, out: outputs.update(f_fg=out))
    else:
        csr.enc_rnn.register_forward_hook(lambda m, i, out: outputs.update(rnn=out))
    f_complete, a = csr.embed_video(torch.randn(2, 5, 6))
    video_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    text_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    masked = torch.tensor([[False, True, False, False], [True, False, False, False]])
    logits = csr.reconstruct(f_complete, a, video_mask, torch.randn(2, 4, 5), text_mask,
                             masked)
    assert logits.shape == (2, 4, 9)
    names = [n for n, _ in calls]
    if kind == "transformer":
        assert names == ["enc.0.attn", "enc.1.attn", "dec.0.cross", "dec.1.cross"]
        assert torch.equal(calls[0][1][0], calls[0][1][1])  # self-attention
        for _, args in calls[2:]:
            assert torch.equal(args[1], outputs["f_fg"])  # cross-attention to F_fg
    else:
        assert names == ["cross"]
    for _, args in calls:
        assert torch.equal(args[2], a) and torch.equal(args[3], video_mask)
    # padded snippets (features and A) change no logit
    moved_f, moved_a = f_complete.clone(), a.clone()
    moved_f[1, 3:] += 10.0
    moved_a[1, 3:] = 1.0 - moved_a[1, 3:]
    torch.testing.assert_close(
        csr.reconstruct(moved_f, moved_a, video_mask, torch.zeros(2, 4, 5), text_mask, masked),
        csr.reconstruct(f_complete, a, video_mask, torch.zeros(2, 4, 5), text_mask, masked))
    # and A itself matters at the valid snippets
    flipped = a.clone()
    flipped[0, :] = 1.0 - flipped[0, :]
    assert not torch.allclose(
        csr.reconstruct(f_complete, flipped, video_mask, torch.zeros(2, 4, 5), text_mask,
                        masked)[0],
        csr.reconstruct(f_complete, a, video_mask, torch.zeros(2, 4, 5), text_mask,
                        masked)[0])


# ---------------------------------------------------------------- (c) DPID phase 2 (eq. 20)


def phase2_gradients(cfg, data, monkeypatch):
    """Run one DPID step; return the model, the teacher A_KSM handed to L_rec, the report."""
    model, dpid, batch = setup(cfg, data)
    teachers: list[torch.Tensor | None] = []
    real = dpid.rec_losses

    def spy(b, a_ksm):
        teachers.append(a_ksm)
        return real(b, a_ksm)

    monkeypatch.setattr(dpid, "rec_losses", spy)
    report = dpid.step(batch, 0)  # phase 1, then phase 2: the gradients left are phase 2's
    assert len(teachers) == 1
    return model, dpid, batch, teachers[0], report


def no_grad(p: torch.nn.Parameter) -> bool:
    return p.grad is None or not bool(p.grad.any())


def test_phase2_gradient_reaches_only_the_csr_side(tiny_cfg, tiny_data, monkeypatch):
    model, dpid, batch, a_ksm, report = phase2_gradients(tiny_cfg, tiny_data, monkeypatch)
    assert "loss/distill_csr" in report and report["loss/distill_csr"] > 0  # coupled
    # sg(A_KSM): a fixed teacher
    assert a_ksm is not None and not a_ksm.requires_grad and a_ksm.grad_fn is None
    assert a_ksm.shape == batch.mask.shape
    # the KSM side (video branch, KSM text encoder, localization head): no gradient
    for part in (model.base, model.ksm, model.loc):
        for name, p in part.named_parameters():
            assert no_grad(p), name
    # the CSR side: its embedding, attention, reconstructor and vocabulary head all learn
    for name in ("fc", "attn", "word_fc", "enc", "dec", "vocab_head"):
        grads = [p.grad for p in getattr(model.csr, name).parameters()]
        assert all(g is not None for g in grads) and any(g.any() for g in grads), name
    # and only the CSR side is in phase 2's optimiser
    opt_ids = {id(p) for group in dpid.opt_csr.param_groups for p in group["params"]}
    assert opt_ids == {id(p) for p in model.csr.parameters()}


def test_phase2_shared_attention_does_train_the_video_branch(tiny_cfg, tiny_data,
                                                             monkeypatch):
    """Under ``dpid.distill=share`` CSR reconstructs through A_KSM itself, so phase 2 does
    reach the video branch (the check above is not vacuous), but never KSM or the loc head."""
    cfg = with_overrides(tiny_cfg, {"dpid.distill": "share"})
    model, _, _, a_ksm, report = phase2_gradients(cfg, tiny_data, monkeypatch)
    assert a_ksm is not None and a_ksm.requires_grad and "loss/distill_csr" not in report
    assert any(not no_grad(p) for p in model.base.parameters())
    for part in (model.ksm, model.loc):
        for name, p in part.named_parameters():
            assert no_grad(p), name


def _scores_formula(q, k, v, weight, key_mask):
    """The A-weighted attention as first written: the (m, T) scores materialised."""
    heads = (None,) * (q.dim() - 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores * weight[(slice(None), *heads, None, slice(None))]
    scores = scores.masked_fill(~key_mask[(slice(None), *heads, None, slice(None))],
                                float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize(("lead", "m", "t", "d"), [((3,), 5, 7, 4), ((2, 3), 4, 9, 8)])
def test_weighted_attention_equals_the_score_formula(lead, m, t, d):
    """Folding A into the keys and running scaled_dot_product_attention gives the numbers
    (and gradients) of the materialised formula, one head or several, padded keys."""
    g = torch.Generator().manual_seed(m * t)
    b = lead[0]
    q = torch.randn(*lead, m, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*lead, t, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(*lead, t, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(b, t, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    key_mask = torch.arange(t)[None, :] < lengths[:, None]
    got = weighted_attention(q, k, v, weight, key_mask)
    want = _scores_formula(q, k, v, weight, key_mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * up).sum(), (q, k, v, weight))
    want_grads = torch.autograd.grad((want * up).sum(), (q, k, v, weight))
    for a, e in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
