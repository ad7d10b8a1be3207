"""Dual Prior Interactive Distillation (eq. 19-20 of MLLM4WTAL).

Each iteration (``schedule: alternate``):
  phase 1, KSM side:  L_match = L_KSM + lambda1 D(A_KSM, sg(A_CSR)) + mu1 L_loc   (eq. 19)
  phase 2, CSR side:  L_rec   = L_CSR + lambda2 D(A_CSR, sg(A_KSM))              (eq. 20)
with one optimiser per side, so phase 1 never changes CSR parameters and phase 2 never
changes KSM-side parameters; the teacher attention of each phase is computed without
gradient. ``schedule: joint`` sums both losses in one forward/backward and steps both
optimisers (the stop-gradients still hold).

``distill`` picks D: ``mse`` (the paper), ``mae``, ``kl``; ``none`` (no coupling);
``share`` (CSR reconstructs through A_KSM itself, and its loss also trains the KSM-side
base in phase 2); ``ternary_kd`` (confident-snippet KD + foreground/background contrast,
Ju et al. 2023). ``warmup_iterations`` train the KSM side alone, without distillation.

:func:`loss_names` says which losses a step reports; :meth:`DPID.step` checks its report
against it, so the sweep layer's list of metrics (``sweep.spaces``) cannot drift from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mllm4wtal.config import Config
from mllm4wtal.errors import DivergenceError
from mllm4wtal.model.loc_head import pseudo_labels
from mllm4wtal.model.losses import (
    attention_distill,
    csr_contrast,
    ksm_loss,
    loc_loss,
    masked_word_nll,
    ternary_kd,
)
from mllm4wtal.model.mllm4wtal import MLLM4WTAL


@dataclass
class Batch:
    features: Tensor  # (B, T, D)
    mask: Tensor  # (B, T) bool
    labels: Tensor  # (B, C) multi-hot float
    text_ids: Tensor | None = None  # (B, m) original complete-description ids
    text_mask: Tensor | None = None  # (B, m) present words
    masked: Tensor | None = None  # (B, m) positions masked for reconstruction

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) if t is not None else None for t in (
            self.features, self.mask, self.labels, self.text_ids, self.text_mask,
            self.masked)))


#: every loss name :func:`loss_names` can give; a report's other ``loss/*`` entries are the
#: base model's own regularisers (``loss/norm``, ``loss/guide``, ... of ``model.base``)
LOSS_NAMES = frozenset({
    "loss/match", "loss/mil", "loss/mil_supp", "loss/focal", "loss/diou", "loss/loc_mil",
    "loss/distill_ksm", "loss/rec", "loss/csr", "loss/csr_contrast", "loss/distill_csr"})


def loss_names(cfg: Config, iteration: int) -> set[str]:
    """The DPID losses :meth:`DPID.step` reports at ``iteration`` (0-based) for a model built
    from ``cfg``, base-model regularisers aside: ``loss/match`` with its terms (``loss/mil``,
    ``loss/mil_supp``; ``loss/focal``, ``loss/diou``, ``loss/loc_mil`` with the localization
    head) and, once the CSR side trains (``csr.enabled``, ``iteration`` >=
    ``dpid.warmup_iterations``), ``loss/rec`` with ``loss/csr``, ``loss/csr_contrast``
    (``csr.contrast``) and the distillation terms ``loss/distill_ksm``, ``loss/distill_csr``
    (``dpid.distill`` other than ``none`` and ``share``)."""
    names = {"loss/match", "loss/mil", "loss/mil_supp"}
    if cfg.loc_head.enabled:
        names |= {"loss/focal", "loss/diou", "loss/loc_mil"}
    if cfg.csr.enabled and iteration >= cfg.dpid.warmup_iterations:
        names |= {"loss/rec", "loss/csr"}
        if cfg.csr.contrast:
            names.add("loss/csr_contrast")
        if cfg.dpid.distill not in ("none", "share"):
            names |= {"loss/distill_ksm", "loss/distill_csr"}
    return names


@contextlib.contextmanager
def teacher_mode(module: torch.nn.Module, dropout: bool = False) -> Iterator[None]:
    """A teacher pass: no gradient, and ``module`` in eval mode (no dropout) unless
    ``dropout``; its mode is restored after."""
    was_training = module.training
    module.train(dropout and was_training)
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class DPID:
    """Two optimisers and the per-iteration phases for one MLLM4WTAL model."""

    def __init__(self, model: MLLM4WTAL, cfg: Config) -> None:
        self.model, self.cfg = model, cfg
        tc = cfg.train
        self.opt_ksm = torch.optim.Adam(model.ksm_side_parameters(), lr=tc.lr,
                                        weight_decay=tc.weight_decay)
        self.opt_csr: torch.optim.Optimizer | None = None
        if model.csr is not None:
            params = model.csr_side_parameters()
            if cfg.dpid.distill == "share":  # the shared attention learns from both losses
                params += list(model.base.parameters())
            self.opt_csr = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if tc.bf16 and next(model.parameters()).is_cuda
                         else contextlib.nullcontext())

    # ------------------------------------------------------------------ the two losses

    def match_losses(self, batch: Batch, a_csr: Tensor | None) -> dict[str, Tensor]:
        """L_match (eq. 19), weighted terms; ``a_csr`` is the teacher (or None)."""
        cfg, m = self.cfg, self.model
        out = m.video(batch.features, batch.mask, sample_queries=True)
        k = cfg.ksm.topk
        losses = ksm_loss(out.cas, out.attention, batch.labels, batch.mask, k)
        losses.update(m.base.aux_losses(out.base, out.cas, batch.labels, batch.mask, k))
        if m.loc is not None:
            assert out.loc_logits is not None and out.loc_dist is not None
            probs = torch.softmax(out.cas.float(), dim=-1)[..., : m.num_classes]
            pl = pseudo_labels(out.attention, probs, batch.labels, batch.mask,
                               cfg.loc_head.fg_threshold, cfg.loc_head.bg_threshold)
            for name, value in loc_loss(out.loc_logits.float(), out.loc_dist.float(), pl,
                                        batch.labels, batch.mask, k, cfg.loc_head.focal_alpha,
                                        cfg.loc_head.focal_gamma).items():
                losses[name] = cfg.loss.mu1 * value
        if a_csr is not None:
            losses["distill_ksm"] = cfg.loss.lambda1 * self._distill(
                out.attention, a_csr, out.base.embedding, batch.mask)
        return losses

    def rec_losses(self, batch: Batch, a_ksm: Tensor | None,
                   video: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """L_rec (eq. 20), weighted terms; ``a_ksm`` is the teacher, or under ``share``
        the attention CSR reconstructs through (with gradient). ``video``: CSR's
        (F_complete, A_CSR) of the batch when the caller already computed them."""
        cfg, csr = self.cfg, self.model.csr
        assert csr is not None and batch.text_ids is not None
        assert batch.text_mask is not None and batch.masked is not None
        f_complete, a_csr = (video if video is not None
                             else csr.embed_video(batch.features, batch.mask))
        share = cfg.dpid.distill == "share"
        weight = a_ksm if share and a_ksm is not None else a_csr
        words = self.model.word_vectors[batch.text_ids]

        def nll(w: Tensor) -> Tensor:
            logits = csr.reconstruct(f_complete, w, batch.mask, words, batch.text_mask,
                                     batch.masked)
            return masked_word_nll(logits, batch.text_ids, batch.masked)

        nll_fg = nll(weight)
        losses = {"csr": nll_fg.mean()}
        if cfg.csr.contrast:  # foreground must explain the words better than whole / rest
            whole, rest = nll(torch.ones_like(weight)), nll(1 - weight)
            losses["csr_contrast"] = csr_contrast(nll_fg, whole, rest, cfg.csr.gamma1,
                                                  cfg.csr.gamma2)
        if a_ksm is not None and not share and cfg.dpid.distill != "none":
            losses["distill_csr"] = cfg.loss.lambda2 * self._distill(
                a_csr, a_ksm, f_complete, batch.mask)
        return losses

    def _distill(self, student: Tensor, teacher: Tensor, feats: Tensor, mask: Tensor
                 ) -> Tensor:
        d = self.cfg.dpid
        if d.distill == "ternary_kd":
            return ternary_kd(student, teacher, feats, mask, d.delta_h, d.delta_l, d.tau)
        return attention_distill(student, teacher, mask, d.distill)

    # ------------------------------------------------------------------ one iteration

    def step(self, batch: Batch, iteration: int) -> dict[str, float]:
        """One DPID iteration; returns every weighted term and the two phase totals.

        The forward passes of the alternating schedule, and why each exists:

        1. phase 1 teacher: A_CSR, no gradient: the sg(A_CSR) of eq. 19;
        2. phase 1 student: the video branch and the localization head (L_match);
        3. phase 2 teacher: A_KSM of the KSM side *after* phase 1's step, no gradient: the
           sg(A_KSM) of eq. 20. Phase 1's A_KSM cannot stand in for it: DPID orders the
           KSM-side update before phase 2, so the CSR side learns from the updated prior;
        4. phase 2 student: CSR's embedding, attention and reconstructor (L_rec).

        ``dpid.teacher_dropout`` decides the teachers' mode (:func:`teacher_mode`). The
        equations leave it open: the stop-gradient makes a teacher a constant target, so eval
        mode (no dropout) is the cheaper, noise-free choice, but on the synthetic benchmark
        the dropout-noised teacher distils better (README, 3 seeds), so it is the default.
        The ``joint`` schedule has one objective and one forward of
        each side: its sg(A_CSR) is the CSR forward's own A_CSR, detached, so pass 1 is
        not run; sg(A_KSM) still needs a teacher pass, since L_rec is built first.
        """
        cfg, m = self.cfg, self.model
        m.train()
        warm = iteration < cfg.dpid.warmup_iterations
        couple = m.csr is not None and not warm and cfg.dpid.distill not in ("none", "share")
        train_csr = m.csr is not None and not warm

        if cfg.dpid.schedule == "joint" and train_csr:
            assert m.csr is not None
            with self.autocast:
                video = m.csr.embed_video(batch.features, batch.mask)
                rec = self.rec_losses(batch, self._ksm_teacher(batch), video)
                match = self.match_losses(batch, video[1].detach() if couple else None)
            total = self._total(match, iteration, "match") + self._total(rec, iteration, "rec")
            self._zero()
            total.backward()
            self.opt_ksm.step()
            assert self.opt_csr is not None
            self.opt_csr.step()
            return self._report(match, rec, iteration)

        with self.autocast:  # phase 1: KSM side
            a_csr = None
            if couple:
                assert m.csr is not None
                with teacher_mode(m.csr, cfg.dpid.teacher_dropout):
                    a_csr = m.csr_attention(batch.features, batch.mask)
            match = self.match_losses(batch, a_csr)
        self._zero()
        self._total(match, iteration, "match").backward()
        self.opt_ksm.step()

        rec: dict[str, Tensor] = {}
        if train_csr:  # phase 2: CSR side, teacher from the updated KSM side
            with self.autocast:
                rec = self.rec_losses(batch, self._ksm_teacher(batch))
            self._zero()
            self._total(rec, iteration, "rec").backward()
            assert self.opt_csr is not None
            self.opt_csr.step()
        return self._report(match, rec, iteration)

    def _ksm_teacher(self, batch: Batch) -> Tensor | None:
        """What L_rec takes of the KSM side: the teacher sg(A_KSM), none without
        distillation, or under ``share`` A_KSM itself, with gradient and dropout (it is the
        attention CSR reconstructs through, not a target)."""
        m, distill = self.model, self.cfg.dpid.distill
        if distill == "share":
            return m.base(batch.features, batch.mask).attention
        if distill == "none":
            return None
        with teacher_mode(m.base, self.cfg.dpid.teacher_dropout):
            return m.base(batch.features, batch.mask).attention

    def _zero(self) -> None:
        self.opt_ksm.zero_grad(set_to_none=True)
        if self.opt_csr is not None:
            self.opt_csr.zero_grad(set_to_none=True)

    @staticmethod
    def _total(losses: dict[str, Tensor], iteration: int, phase: str) -> Tensor:
        values = torch.stack([v.float() for v in losses.values()])
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            name = list(losses)[int(bad.nonzero()[0])]
            raise DivergenceError(iteration, name, float(values.detach()[bad][0]))
        return values.sum()

    def _report(self, match: dict[str, Tensor], rec: dict[str, Tensor], iteration: int
                ) -> dict[str, float]:
        out = {f"loss/{k}": float(v.detach()) for k, v in {**match, **rec}.items()}
        out["loss/match"] = sum(float(v.detach()) for v in match.values())
        if rec:
            out["loss/rec"] = sum(float(v.detach()) for v in rec.values())
        promised = loss_names(self.cfg, iteration)
        if set(out) & LOSS_NAMES != promised:
            raise RuntimeError(f"DPID reported {sorted(set(out) & LOSS_NAMES)} at iteration "
                               f"{iteration} but loss_names() says {sorted(promised)}; "
                               "change the two together")
        return out
