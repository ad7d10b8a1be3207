"""Base WTAL models CO2-Net and DELU: shapes, padding, hand-computed losses, gradients,
and short training runs through the real loop."""

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
from mllm4wtal.model.co2net import CO2Net, mutual_loss
from mllm4wtal.model.delu import DELU
from mllm4wtal.model.mllm4wtal import BASES
from mllm4wtal.train.checkpoint import load_checkpoint
from mllm4wtal.train.loop import train

NEW = ["co2net", "delu"]
D, RGB, C, H = 16, 8, 4, 16


def make(name: str) -> CO2Net:
    torch.manual_seed(0)
    return BASES[name](D, RGB, C, H, 0.5)


@pytest.mark.parametrize("name", NEW)
def test_forward_shapes_and_ranges(name):
    model = make(name)
    x = torch.randn(3, 11, D)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False
    out = model(x, mask)
    assert out.embedding.shape == (3, 11, H)
    assert out.attention.shape == (3, 11)
    assert out.cas.shape == (3, 11, C + 1)
    for a in (out.attention, out.aux["rgb_attention"], out.aux["flow_attention"]):
        assert a.shape == (3, 11) and bool(((a >= 0) & (a <= 1)).all())
    assert torch.allclose(out.attention, (out.aux["rgb_attention"] + out.aux["flow_attention"]) / 2)
    assert bool((out.embedding[1, 6:] == 0).all())  # padded rows of F_e are zero
    assert all(torch.isfinite(t).all() for t in (out.embedding, out.cas))


@pytest.mark.parametrize("name", sorted(BASES))
def test_embedding_alone_is_forwards_embedding(name):
    """``embedding`` (what inference's localization head reads) skips the attention and
    class head but computes F_e by the same operations: equal bit for bit, padding too."""
    model = make(name).eval()
    x = torch.randn(3, 12, D)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        assert torch.equal(model.embedding(x, mask), model(x, mask).embedding)


@pytest.mark.parametrize("name", [*NEW, "mil"])
def test_padding_changes_nothing(name):
    model = make(name).eval()
    if isinstance(model, DELU):
        model.steps_seen.fill_(1000)  # a curriculum curve that is not flat
    torch.manual_seed(1)
    x = torch.randn(2, 10, D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    labels = torch.tensor([[1.0, 0, 0, 1], [1.0, 0, 1, 0]])  # the pair shares class 0
    assert_padding_changes_nothing(model, x, mask, labels, extra=4)
    if isinstance(model, DELU):
        assert int(model.steps_seen) == 1000  # evaluation does not advance the curriculum


# ---------------------------------------------------------------------------- by hand

# Two videos, T = 3, the second padded after 2 snippets; C = 1 (columns: class, background).
# Video 0's snippets rank by uncertainty as (1, 2, 0), a 3-cycle, so that gathering the
# curve by rank (DELU's code) differs from scattering it.
A = [[0.9, 0.2, 0.6], [0.7, 0.4, 0.5]]
A_RGB = [[0.8, 0.1, 0.7], [0.6, 0.5, 0.9]]
A_FLOW = [[1.0, 0.3, 0.5], [0.8, 0.3, 0.1]]
CAS = [[[0.0, -1.0], [0.5, 1.5], [1.0, 0.0]], [[1.5, 0.5], [-0.5, 1.0], [9.0, -9.0]]]
FEAT = [[[1.0, 0.0], [0.5, 2.0], [0.0, 1.0]], [[2.0, 1.0], [0.0, 1.0], [7.0, 7.0]]]
VALID = [3, 2]


def stub():
    t = torch.tensor
    out = BaseOutput(embedding=t(FEAT), attention=t(A), cas=t(CAS),
                     aux={"rgb_attention": t(A_RGB), "flow_attention": t(A_FLOW)})
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return out, mask


def valid_mean(rows):
    vals = [v for row, n in zip(rows, VALID, strict=True) for v in row[:n]]
    return sum(vals) / len(vals)


def p_bg(logits):
    return 1 / (1 + math.exp(logits[0] - logits[1]))


def supp(b, t):
    lo = min(CAS[b][t])
    return [A[b][t] * (v - lo) + lo for v in CAS[b][t]]


def cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.hypot(*u) * math.hypot(*v))


def guide_by_hand():
    return sum(valid_mean([[abs(1 - p_bg(CAS[b][t]) - a[b][t]) for t in range(3)]
                           for b in range(2)]) for a in (A, A_RGB, A_FLOW)) / 3


def coact_by_hand():
    high, low = [], []
    for b in range(2):
        n = VALID[b]
        s = [supp(b, t)[0] for t in range(n)]
        z = sum(math.exp(v) for v in s)
        w = [math.exp(v) / z for v in s]
        high.append([sum(w[t] * FEAT[b][t][d] for t in range(n)) for d in range(2)])
        low.append([sum((1 - w[t]) / (n - 1) * FEAT[b][t][d] for t in range(n))
                    for d in range(2)])
    d1 = 1 - cosine(high[0], high[1])
    d2 = 1 - cosine(high[0], low[1])
    d3 = 1 - cosine(high[1], low[0])
    return 0.5 * max(d1 - d2 + 0.5, 0) + 0.5 * max(d1 - d3 + 0.5, 0)


def test_co2net_terms_by_hand():
    model = CO2Net(4, 2, 1, 8, 0.5).eval()
    out, mask = stub()
    labels = torch.tensor([[1.0], [1.0]])
    got = model.aux_losses(out, out.cas, labels, mask, 8)
    assert set(got) == {"mutual", "norm", "guide", "coact"}

    mutual = valid_mean([[(r - f) ** 2 for r, f in zip(rr, ff, strict=True)]
                         for rr, ff in zip(A_RGB, A_FLOW, strict=True)])
    norm = sum(valid_mean(a) for a in (A, A_RGB, A_FLOW)) / 3
    guide = guide_by_hand()
    coact = coact_by_hand()
    assert coact > 0  # the hinge is active on this input
    assert got["mutual"].item() == pytest.approx(1.0 * mutual, rel=1e-5)
    assert got["norm"].item() == pytest.approx(0.8 * norm, rel=1e-5)
    assert got["guide"].item() == pytest.approx(0.8 * guide, rel=1e-5)
    assert got["coact"].item() == pytest.approx(1.0 * coact, rel=1e-5)

    # no pair shares a class -> no co-activity term
    none = model.aux_losses(out, out.cas, torch.tensor([[1.0], [0.0]]), mask, 8)
    assert none["coact"].item() == 0.0


def test_mutual_learning_stops_each_gradient():
    a = torch.tensor([[0.2, 0.6, 0.9]], requires_grad=True)
    b = torch.tensor([[0.5, 0.1, 0.3]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = mutual_loss(a, b, mask)
    assert loss.item() == pytest.approx((0.3**2 + 0.5**2) / 2)
    loss.backward()
    # each side only receives 0.5 * d/dx (x - sg y)^2 / n = (x - y) / n
    assert torch.allclose(a.grad, torch.tensor([[-0.15, 0.25, 0.0]]))
    assert torch.allclose(b.grad, torch.tensor([[0.15, -0.25, 0.0]]))


def test_delu_edl_and_uncertainty_guide_by_hand():
    model = DELU(4, 2, 1, 8, 0.5).eval()
    model.steps_seen.fill_(1250)  # progress 0.25 of the default 5000 steps
    out, mask = stub()
    labels = torch.tensor([[1.0], [1.0]])
    got = model.aux_losses(out, out.cas, labels, mask, 8)
    assert set(got) == {"mutual", "norm", "guide", "coact", "edl", "uct_guide"}
    assert got["guide"].item() == pytest.approx(0.4 * guide_by_hand(), rel=1e-5)  # THUMOS14
    # one class: S = alpha, so log S - log alpha = 0 (multi-label values: the next test)
    assert got["edl"].item() == pytest.approx(0.0, abs=1e-7)

    # uncertainty-guided guide: curve over each video's own length, gathered by rank
    delta = 1 - 2 * 0.25
    total, count = 0.0, 0
    for b in range(2):
        n = VALID[b]
        curve = [0.7 * math.tanh((2 * (j + 0.5) / n - 1) * delta) + 1 for j in range(n)]
        unc = [1 / sum(math.exp(v) + 1 for v in supp(b, t)) for t in range(n)]
        order = sorted(range(n), key=lambda t, unc=unc: unc[t])
        for j in range(n):
            guide = sum(abs(1 - p_bg(CAS[b][j]) - a[b][j]) for a in (A, A_RGB, A_FLOW)) / 3
            total += curve[order[j]] * guide
            count += 1
    assert got["uct_guide"].item() == pytest.approx(0.4 * total / count, rel=1e-5)


def test_delu_edl_multilabel_by_hand():
    model = DELU(4, 2, 2, 8, 0.5).eval()
    # one video, T = 2: attention picks snippet 1; CAS columns (class 0, class 1, background)
    cas = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -0.5, 0.2]]])
    att = torch.tensor([[0.3, 0.8]])
    out = BaseOutput(embedding=torch.zeros(1, 2, 8), attention=att, cas=cas,
                     aux={"rgb_attention": att, "flow_attention": att})
    mask = torch.ones(1, 2, dtype=torch.bool)
    got = model.aux_losses(out, cas, torch.tensor([[1.0, 1.0]]), mask, 8)["edl"]
    lo = -0.5
    logits = [0.8 * (v - lo) + lo for v in (1.0, -0.5)]  # min-shifted suppression
    alpha = [math.exp(v) + 1 for v in logits]
    s = sum(alpha)
    u = 2 / s
    inv = [1 / a for a in alpha]
    g = [(1 - u) * 2 * i / sum(inv) for i in inv]
    edl = sum(gc * (math.log(s) - math.log(a)) for gc, a in zip(g, alpha, strict=True))
    assert got.item() == pytest.approx(1.3 * edl, rel=1e-5)


def test_delu_counts_training_steps_only():
    model = make("delu")
    x, mask = torch.randn(2, 9, D), torch.ones(2, 9, dtype=torch.bool)
    labels = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    for training in (True, True, True, False):
        model.train(training)
        out = model(x, mask)
        model.aux_losses(out, out.cas, labels, mask, 8)
    assert int(model.steps_seen) == 3
    assert "steps_seen" in model.state_dict()  # checkpoints resume the curriculum


@pytest.mark.parametrize("name", NEW)
def test_gradients_reach_both_modality_branches(name):
    model = make(name).train()
    x = torch.randn(4, 12, D)
    mask = torch.ones(4, 12, dtype=torch.bool)
    labels = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 1, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]])
    out = model(x, mask)
    sum(all_losses(model, out, labels, mask).values()).backward()
    for branch in (model.rgb, model.flow):
        for part in (branch.global_ctx, branch.local_ctx, branch.attention):
            grads = [p.grad for p in part.parameters()]
            assert all(g is not None for g in grads)
            assert sum(float(g.abs().sum()) for g in grads) > 0


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("ksm", ["true", "false"])
@pytest.mark.parametrize("name", NEW)
def test_trains_through_the_loop(name, ksm, tiny_overrides, tmp_path):
    cfg = load_config("synthetic", tiny_overrides + [f"model.base={name}", f"ksm.enabled={ksm}"])
    data = load_from_config(cfg.data)
    run = tmp_path / "run"
    train(cfg, data, run, evaluate=ModelEvaluator(cfg, data), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows
    expected = {"loss/mutual", "loss/norm", "loss/guide", "loss/coact"}
    if name == "delu":
        expected |= {"loss/edl", "loss/uct_guide"}
    for row in rows:
        assert expected <= row.keys()
        losses = {k: v for k, v in row.items() if k.startswith("loss/")}
        assert all(math.isfinite(v) for v in losses.values()), losses
    if name == "delu":
        state = load_checkpoint(run / "last.pt")["model"]
        assert int(state["base.steps_seen"]) == cfg.train.iterations


@pytest.mark.parametrize("base", ["mil", "co2net", "delu", "um"])
def test_the_full_model_does_not_see_its_batch(base, tiny_cfg, tiny_data):
    """A video's KSM class activation, attention, localization head and A_CSR are the same
    alone and padded in a batch with a longer video: evaluation does not depend on which
    videos share a batch, nor on their order."""
    from mllm4wtal.config import with_overrides
    from mllm4wtal.data.batching import pad_batch
    from mllm4wtal.text.bundle import build_text_bundle
    from mllm4wtal.train.loop import build_model

    cfg = with_overrides(tiny_cfg, {"model.base": base})
    model = build_model(cfg, tiny_data, build_text_bundle(cfg, tiny_data)).eval()
    short, long = sorted(tiny_data.test, key=lambda v: v.num_snippets)[:: len(tiny_data.test) - 1]
    assert short.num_snippets < long.num_snippets
    n = short.num_snippets
    alone, padded = pad_batch([short.features]), pad_batch([short.features, long.features])
    with torch.no_grad():
        a, p = model.video(*alone), model.video(*padded)
        for field in ("cas", "attention", "loc_logits", "loc_dist"):
            torch.testing.assert_close(getattr(p, field)[0, :n], getattr(a, field)[0, :n],
                                       rtol=1e-5, atol=1e-5, msg=field)
        torch.testing.assert_close(model.csr_attention(*padded)[0, :n],
                                   model.csr_attention(*alone)[0, :n], rtol=1e-5, atol=1e-5)
