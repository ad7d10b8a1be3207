"""DPID training: phase isolation, stop-gradients, exact resume, switches, divergence."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mllm4wtal.config import with_overrides
from mllm4wtal.errors import DivergenceError
from mllm4wtal.inference.evaluate import ModelEvaluator
from mllm4wtal.train.checkpoint import load_checkpoint
from mllm4wtal.train.dpid import DPID
from mllm4wtal.train.loop import train
from train_helpers import setup


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True)]


def _train(cfg, data, run_dir, **kw):
    return train(cfg, data, run_dir, evaluate=ModelEvaluator(cfg, data), progress=False, **kw)


def test_phase1_leaves_csr_untouched_and_phase2_leaves_ksm_untouched(tiny_cfg, tiny_data):
    model, dpid, batch = setup(tiny_cfg, tiny_data)
    ksm_p, csr_p = model.ksm_side_parameters(), model.csr_side_parameters()
    ids = {id(p) for p in ksm_p}
    assert not any(id(p) in ids for p in csr_p)  # the two sides are disjoint

    k0, c0 = snapshot(ksm_p), snapshot(csr_p)
    a_csr = model.csr_attention(batch.features, batch.mask).detach()
    losses = dpid.match_losses(batch, a_csr)
    dpid._zero()
    dpid._total(losses, 0, "match").backward()
    assert all(p.grad is None for p in csr_p)  # sg(A_CSR): no gradient reaches CSR
    dpid.opt_ksm.step()
    assert any(changed(k0, ksm_p)) and not any(changed(c0, csr_p))

    k1, c1 = snapshot(ksm_p), snapshot(csr_p)
    rec = dpid.rec_losses(batch, dpid._ksm_teacher(batch))
    dpid._zero()
    dpid._total(rec, 0, "rec").backward()
    assert all(p.grad is None for p in ksm_p)  # sg(A_KSM)
    dpid.opt_csr.step()
    assert any(changed(c1, csr_p)) and not any(changed(k1, ksm_p))


def test_full_step_reports_every_term(tiny_cfg, tiny_data):
    model, dpid, batch = setup(tiny_cfg, tiny_data)
    out = dpid.step(batch, 0)
    for term in ("mil", "mil_supp", "focal", "diou", "loc_mil", "distill_ksm", "csr",
                 "distill_csr", "match", "rec"):
        assert math.isfinite(out[f"loss/{term}"]), term
    # eq. 19 weights: lambda1 * MSE and mu1 * L_loc
    cfg2 = with_overrides(tiny_cfg, {"loss.lambda1": 0.0})
    m2, d2, b2 = setup(cfg2, tiny_data)
    assert d2.step(b2, 0)["loss/distill_ksm"] == 0.0


def test_train_2n_equals_n_plus_resume_plus_n(tiny_cfg, tiny_data, tmp_path):
    full = _train(tiny_cfg, tiny_data, tmp_path / "full")
    half_cfg = with_overrides(tiny_cfg, {"train.iterations": 2})
    _train(half_cfg, tiny_data, tmp_path / "half")
    resumed = _train(tiny_cfg, tiny_data, tmp_path / "half", resume=tmp_path / "half/last.pt")
    a = load_checkpoint(tmp_path / "full/last.pt")["model"]
    b = load_checkpoint(tmp_path / "half/last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.last_metrics == resumed.last_metrics
    lines = (tmp_path / "half/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [2.0, 4.0]


def test_resume_refuses_a_different_config(tiny_cfg, tiny_data, tmp_path):
    _train(tiny_cfg, tiny_data, tmp_path / "r")
    other = with_overrides(tiny_cfg, {"loss.lambda1": 0.5})
    with pytest.raises(ValueError, match="loss.lambda1"):
        _train(other, tiny_data, tmp_path / "r", resume=tmp_path / "r/last.pt")


@pytest.mark.parametrize("switch", [
    {"ksm.enabled": False}, {"csr.enabled": False}, {"loc_head.enabled": False,
                                                     "inference.source": "cas"},
    {"ksm.enabled": False, "csr.enabled": False}, {"model.base": "mil"},
    {"ksm.prompt": "handcraft"}, {"ksm.prompt": "learnable"}, {"csr.reconstructor": "gru"},
    {"csr.reconstructor": "lstm"},
    {"csr.contrast": True}, {"dpid.distill": "kl"}, {"dpid.distill": "mae"},
    {"dpid.distill": "share"}, {"dpid.distill": "none"}, {"dpid.distill": "ternary_kd"},
    {"dpid.schedule": "joint"}, {"dpid.schedule": "joint", "dpid.distill": "none"},
    {"dpid.schedule": "joint", "dpid.distill": "share"}, {"dpid.warmup_iterations": 1},
    {"inference.source": "cas"},
])
def test_every_switch_trains(switch, tiny_cfg, tiny_data, tmp_path):
    cfg = with_overrides(tiny_cfg, switch)
    result = _train(cfg, tiny_data, tmp_path / "run")
    losses = {k: v for k, v in result.last_metrics.items() if k.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert 0.0 <= result.best_metric <= 1.0


def test_divergence_names_iteration_and_term_and_keeps_checkpoint(tiny_cfg, tiny_data,
                                                                  tmp_path, monkeypatch):
    original = DPID.match_losses

    def poisoned(self, batch, a_csr):
        losses = original(self, batch, a_csr)
        if self.poison:
            losses["focal"] = losses["focal"] * float("nan")
        return losses

    monkeypatch.setattr(DPID, "match_losses", poisoned)
    monkeypatch.setattr(DPID, "poison", False, raising=False)
    orig_step = DPID.step

    def step(self, batch, iteration):
        self.poison = iteration == 2
        return orig_step(self, batch, iteration)

    monkeypatch.setattr(DPID, "step", step)
    with pytest.raises(DivergenceError, match=r"iteration 2: loss term 'focal'.*last\.pt"):
        _train(tiny_cfg, tiny_data, tmp_path / "d")
    assert load_checkpoint(tmp_path / "d/last.pt")["iteration"] == 2


@pytest.mark.parametrize("dropout", [True, False])
def test_teachers_run_without_gradient_in_the_configured_mode(dropout, tiny_cfg, tiny_data):
    """Each teacher pass (phase 1's A_CSR, phase 2's A_KSM) runs without gradient, in train
    mode with ``dpid.teacher_dropout`` and in eval mode without; the step leaves every
    module in train mode."""
    cfg = with_overrides(tiny_cfg, {"dpid.teacher_dropout": dropout})
    model, dpid, batch = setup(cfg, tiny_data)
    seen: list[tuple[str, bool]] = []
    for name, module in (("csr", model.csr.attn), ("base", model.base)):
        module.register_forward_hook(
            lambda m, i, o, name=name: seen.append((name, m.training))
            if not torch.is_grad_enabled() else None)
    dpid.step(batch, 0)
    assert sorted(seen) == [("base", dropout), ("csr", dropout)]
    assert all(m.training for m in model.modules())


def test_csr_attention_has_dropout_in_train_mode(tiny_cfg, tiny_data):
    """What makes the teachers' eval mode a real choice: in train mode two passes differ."""
    model, _, batch = setup(tiny_cfg, tiny_data)
    with torch.no_grad():
        assert not torch.equal(model.csr_attention(batch.features),
                               model.csr_attention(batch.features))


def test_train_takes_a_prebuilt_text_bundle(tiny_cfg, tiny_data, tmp_path):
    """A bundle built once (as a sweep's driver does) trains exactly like one built inside;
    a bundle of another text config is refused."""
    from mllm4wtal.text.bundle import build_text_bundle

    inside = _train(tiny_cfg, tiny_data, tmp_path / "a")
    given = _train(tiny_cfg, tiny_data, tmp_path / "b", text=build_text_bundle(tiny_cfg, tiny_data))
    assert given.last_metrics == inside.last_metrics
    other = with_overrides(tiny_cfg, {"text.vector_dim": tiny_cfg.text.vector_dim + 2})
    with pytest.raises(ValueError, match="another text config"):
        _train(tiny_cfg, tiny_data, tmp_path / "c", text=build_text_bundle(other, tiny_data))
