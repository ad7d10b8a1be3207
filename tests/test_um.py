"""The UM base model: shapes, padding, hand-computed losses, gradients, and short training
runs through the real loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from base_checks import all_losses, assert_padding_changes_nothing
from mllm4wtal.config import load_config
from mllm4wtal.data.load import load_from_config
from mllm4wtal.inference.evaluate import ModelEvaluator
from mllm4wtal.model.base import BaseOutput
from mllm4wtal.model.mllm4wtal import BASES, MLLM4WTAL
from mllm4wtal.model.um import UM, softmax_bce
from mllm4wtal.train.loop import train

D, RGB, C, H = 16, 8, 4, 16
UM_TERMS = {"cls", "um", "be", "norm"}


def make(**kw) -> UM:
    torch.manual_seed(0)
    return UM(D, RGB, C, H, 0.5, **kw)


def test_registered_and_reference_defaults():
    assert BASES["um"] is UM
    ref = UM(D, RGB, C, 2048, 0.7)  # the paper's width: the reference values exactly
    assert ref.margin == 100.0 and ref.alpha == pytest.approx(0.0005)
    assert (ref.r_act, ref.r_bkg, ref.beta, ref.cls_weight) == (9, 4, 1.0, 1.0)
    assert ref.select_dropout == 0.7 and ref.norm_weight == 0.8
    assert ref.head[1].bias is None  # bias-free classifier, C + 1 columns
    assert ref.head[1].out_channels == C + 1
    small = make()  # narrower: same per-channel margin, same alpha * margin^2
    assert small.margin == pytest.approx(100 * math.sqrt(H / 2048))
    assert small.alpha * small.margin**2 == pytest.approx(5.0)


def test_forward_shapes_and_ranges():
    model = make(margin=0.5)  # a small margin, so that some snippets saturate
    x = torch.randn(3, 11, D) * 3
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False
    out = model.eval()(x, mask)
    assert out.embedding.shape == (3, 11, H)
    assert out.attention.shape == (3, 11)
    assert out.cas.shape == (3, 11, C + 1)
    a = out.attention
    assert bool(((a >= 0) & (a <= 1)).all()) and bool((a == 1).any())
    expected = (out.embedding.norm(dim=-1) / 0.5).clamp(max=1)
    assert torch.allclose(a, expected)
    assert bool((out.embedding[1, 6:] == 0).all()) and bool((a[1, 6:] == 0).all())
    assert all(torch.isfinite(t).all() for t in (out.embedding, out.cas))
    assert "select_keep" not in out.aux  # no selection dropout at evaluation
    keep = model.train()(torch.randn(8, 200, D), torch.ones(8, 200, dtype=torch.bool)
                         ).aux["select_keep"]
    assert keep.dtype == torch.bool and 0.25 < keep.float().mean().item() < 0.35  # p = 0.7


def test_padding_changes_nothing():
    model = make().eval()
    torch.manual_seed(1)
    x = torch.randn(2, 20, D)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 13:] = False
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1.0, 0, 0]])
    assert UM_TERMS <= assert_padding_changes_nothing(model, x, mask, labels, extra=7).keys()


# ---------------------------------------------------------------------------- by hand

# Two videos, T = 4, the second padded after 3 snippets (garbage there); H = 2, C = 2
# (columns: class 0, class 1, background). r_act = r_bkg = 2: k = 2 in video 0, 1 in video 1.
FEAT = [[[1.0, 0.0], [0.5, 2.0], [0.0, 0.2], [3.0, 1.0]],
        [[2.0, 1.0], [0.0, 1.0], [0.3, 0.1], [9.0, 9.0]]]
CAS = [[[0.2, -1.0, 0.5], [1.5, 0.3, 0.0], [-0.4, 0.8, 1.0], [0.9, 2.0, -1.0]],
       [[0.1, 0.7, 0.2], [-1.2, 0.4, 0.6], [0.5, -0.3, 0.0], [9.0, -9.0, 9.0]]]
LABELS = [[1.0, 1.0], [0.0, 1.0]]
VALID = [4, 3]
MARGIN, ALPHA, BETA, CLS_W, NORM_W = 3.0, 0.5, 2.0, 1.5, 0.8


def hand_model() -> UM:
    return UM(4, 2, 2, 2, 0.5, norm_weight=NORM_W, cls_weight=CLS_W, alpha=ALPHA, beta=BETA,
              margin=MARGIN, r_act=2, r_bkg=2).eval()


def stub(keep=None):
    t = torch.tensor
    emb = t(FEAT)
    att = (emb.norm(dim=-1) / MARGIN).clamp(max=1)
    aux = {} if keep is None else {"select_keep": t(keep, dtype=torch.bool)}
    out = BaseOutput(embedding=emb, attention=att, cas=t(CAS), aux=aux)
    return out, t([[True] * 4, [True, True, True, False]])


def top(scores, k):
    """Indices of the k largest scores (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def bce_of_softmax(logits, target):
    z = sum(math.exp(v) for v in logits)
    p = [math.exp(v) / z for v in logits]
    return [-(t * math.log(q) + (1 - t) * math.log(1 - q)) for q, t in zip(p, target,
                                                                            strict=True)]


def by_hand(keep=None):
    cls, um, be, att = [], [], [], []
    for b in range(2):
        n, k = VALID[b], VALID[b] // 2
        feats, cas = FEAT[b][:n], CAS[b][:n]
        mag = [math.hypot(*f) for f in feats]
        att += [min(1.0, v / MARGIN) for v in mag]
        kp = [1.0] * n if keep is None else [float(v) for v in keep[b][:n]]
        act = top([m * w for m, w in zip(mag, kp, strict=True)], k)
        bkg = top([(max(mag) - m) * w for m, w in zip(mag, kp, strict=True)], k)

        def mean_norm(idx, feats=feats):
            return math.hypot(*(sum(feats[i][d] for i in idx) / len(idx) for d in range(2)))

        um.append((max(0.0, MARGIN - mean_norm(act)) + mean_norm(bkg)) ** 2)
        video = [sum(sorted((s[c] for s in cas), reverse=True)[:k]) / k for c in range(2)]
        y = [v / sum(LABELS[b]) for v in LABELS[b]]
        cls += bce_of_softmax(video, y)
        bkg_scores = [sum(cas[i][c] for i in bkg) / k for c in range(2)]
        be += bce_of_softmax(bkg_scores, [0.5, 0.5])
    return {"cls": CLS_W * sum(cls) / 4, "um": ALPHA * sum(um) / 2, "be": BETA * sum(be) / 4,
            "norm": NORM_W * sum(att) / len(att)}


@pytest.mark.parametrize("keep", [None, [[1, 0, 1, 1], [0, 1, 1, 1]]])
def test_um_terms_by_hand(keep):
    out, mask = stub(keep)
    got = hand_model().aux_losses(out, out.cas, torch.tensor(LABELS), mask, 8)
    want = by_hand(keep)
    assert set(got) == UM_TERMS
    assert want["um"] > 0 and want["be"] > 0 and want["cls"] > 0
    for name, value in want.items():
        assert got[name].item() == pytest.approx(value, rel=1e-5), name


def test_selection_dropout_changes_the_pseudo_snippets():
    # the kept-only ranking picks other action / background snippets on this input
    assert by_hand([[1, 0, 1, 1], [0, 1, 1, 1]])["um"] != pytest.approx(by_hand()["um"])


def test_um_hinge_stops_at_the_margin():
    # action features beyond the margin and background at zero: no uncertainty loss
    emb = torch.tensor([[[5.0, 0.0], [0.0, 0.0], [4.0, 3.0], [0.0, 0.0]]])
    out = BaseOutput(embedding=emb, attention=(emb.norm(dim=-1) / MARGIN).clamp(max=1),
                     cas=torch.zeros(1, 4, 3))
    mask = torch.ones(1, 4, dtype=torch.bool)
    got = hand_model().aux_losses(out, out.cas, torch.tensor([[1.0, 0.0]]), mask, 8)
    assert got["um"].item() == 0.0
    # zero CAS: softmax 1/2 each, BCE of 1/2 against (1, 0) and against (1/2, 1/2)
    assert got["cls"].item() == pytest.approx(CLS_W * math.log(2))
    assert got["be"].item() == pytest.approx(BETA * math.log(2))


def test_softmax_bce_matches_torch_bce():
    logits = torch.tensor([[0.3, -1.2, 2.0], [5.0, 0.0, -3.0]])
    target = torch.tensor([[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    ref = torch.nn.functional.binary_cross_entropy(torch.softmax(logits, -1), target)
    assert softmax_bce(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)
    one = torch.tensor([[0.7]], requires_grad=True)  # one class: p = 1, clamped like BCELoss
    loss = softmax_bce(one, torch.ones(1, 1))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(one.grad).all()


# ---------------------------------------------------------------------------- gradients


def test_gradients_reach_the_embedding():
    model = make().train()
    x = torch.randn(4, 24, D)
    mask = torch.ones(4, 24, dtype=torch.bool)
    mask[2, 15:] = False
    labels = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 1, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    out = model(x, mask)
    losses = all_losses(model, out, labels, mask)
    for name in sorted(UM_TERMS):  # every UM term alone moves the embedding
        (g,) = torch.autograd.grad(losses[name], out.embedding, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
        assert bool((g[2, 15:] == 0).all()), name  # nothing flows into padding
    sum(losses.values()).backward()
    for p in (model.embed.weight, model.embed.bias, model.head[1].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert model.head[1].weight.grad[C].abs().sum() > 0  # the background column learns


def test_model_passes_the_config_sparsity_weight(tiny_overrides):
    cfg = load_config("synthetic", tiny_overrides + [
        "model.base=um", "model.norm_weight=0.3", "ksm.enabled=false", "csr.enabled=false"])
    model = MLLM4WTAL(cfg, 4, 16, 8, None)
    assert isinstance(model.base, UM) and model.base.norm_weight == 0.3


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("ksm", ["true", "false"])
def test_trains_through_the_loop(ksm, tiny_overrides, tmp_path):
    cfg = load_config("synthetic", tiny_overrides + ["model.base=um", f"ksm.enabled={ksm}"])
    data = load_from_config(cfg.data)
    run = tmp_path / "run"
    train(cfg, data, run, evaluate=ModelEvaluator(cfg, data), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        assert {f"loss/{k}" for k in UM_TERMS} <= row.keys()
        losses = {k: v for k, v in row.items() if k.startswith("loss/")}
        assert all(math.isfinite(v) for v in losses.values()), losses
