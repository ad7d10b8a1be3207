"""The MLLM4WTAL model: a base WTAL video branch, KSM, CSR and the localization head.

Two parameter sides, trained in turn by DPID (``train/dpid.py``):
- the KSM side: base model (embedding, attention A_KSM, conv class head), KSM text
  encoder and the localization head;
- the CSR side: CSR's own video embedding, attention A_CSR and reconstructor.

Text enters as buffers: the word-vector matrix (V, d) and, per class, the token ids of its
key descriptions (C, K, L); one of them is drawn per class and iteration in training, the
first (the class's canonical description) at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mllm4wtal.config import Config
from mllm4wtal.model.base import BaseOutput, BaseWTAL, MILBaseline
from mllm4wtal.model.co2net import CO2Net
from mllm4wtal.model.csr import CSR
from mllm4wtal.model.delu import DELU
from mllm4wtal.model.ksm import KSM
from mllm4wtal.model.loc_head import LocHead
from mllm4wtal.model.um import UM
from mllm4wtal.text.tensors import PAD_ID, TextTensors

BASES: dict[str, type[BaseWTAL]] = {"mil": MILBaseline, "co2net": CO2Net, "delu": DELU,
                                     "um": UM}

@dataclass
class VideoOutput:
    base: BaseOutput
    cas: Tensor  # (B, T, C+1): KSM's M, or the base's conv head when KSM is off
    attention: Tensor  # (B, T) A_KSM
    loc_logits: Tensor | None
    loc_dist: Tensor | None


class MLLM4WTAL(nn.Module):
    def __init__(self, cfg: Config, num_classes: int, feature_dim: int, rgb_dim: int,
                 text: TextTensors | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        hidden = cfg.model.hidden_dim
        # DELU anneals its uncertainty weighting over the run
        schedule = {"total_steps": cfg.train.iterations} if cfg.model.base == "delu" else {}
        self.base = BASES[cfg.model.base](feature_dim, rgb_dim, num_classes, hidden,
                                          cfg.model.dropout,
                                          norm_weight=cfg.model.norm_weight, **schedule)
        needs_text = cfg.ksm.enabled or cfg.csr.enabled
        if needs_text and text is None:
            raise ValueError("KSM and CSR need text tensors (descriptions and word vectors)")
        if needs_text:
            assert text is not None
            self.register_buffer("word_vectors", text.word_vectors.float())
            self.register_buffer("key_ids", text.key_ids.long())
            self.register_buffer("key_count", text.key_count.long())
            word_dim = text.word_vectors.shape[1]
        self.ksm: KSM | None = None
        self.csr: CSR | None = None
        self.loc: LocHead | None = None
        if cfg.ksm.enabled:
            assert text is not None
            handcraft = text.word_vectors[text.handcraft_ids].float()
            self.ksm = KSM(word_dim, hidden, cfg.ksm.dim, cfg.ksm.n_ctx, cfg.ksm.layers,
                           cfg.ksm.heads, cfg.ksm.prompt, num_classes, handcraft)
        if cfg.csr.enabled:
            assert text is not None
            self.csr = CSR(feature_dim, word_dim, text.word_vectors.shape[0], cfg.csr.dim,
                           cfg.csr.reconstructor, cfg.csr.layers, cfg.csr.heads,
                           max_len=cfg.text.max_complete_len)
        if cfg.loc_head.enabled:
            self.loc = LocHead(hidden, num_classes)

    # ------------------------------------------------------------------ parameter sides

    def ksm_side_parameters(self) -> list[nn.Parameter]:
        mods: list[nn.Module] = [self.base]
        mods += [m for m in (self.ksm, self.loc) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def csr_side_parameters(self) -> list[nn.Parameter]:
        return list(self.csr.parameters()) if self.csr is not None else []

    # ------------------------------------------------------------------ forward pieces

    def class_queries(self, sample: bool) -> Tensor:
        """F_query (C+1, H): one key description per class, drawn at random when
        ``sample`` (training), else each class's first (canonical) description."""
        assert self.ksm is not None
        c = self.key_ids.shape[0]
        if sample:
            pick = (torch.rand(c, device=self.key_ids.device) * self.key_count).long()
        else:
            pick = torch.zeros(c, dtype=torch.long, device=self.key_ids.device)
        ids = self.key_ids[torch.arange(c, device=pick.device), pick]  # (C, L)
        return self.ksm.queries(self.word_vectors[ids], ids != PAD_ID)

    def video(self, features: Tensor, mask: Tensor, sample_queries: bool = False
              ) -> VideoOutput:
        """The KSM side: base branch, class activation (KSM or conv head), loc head."""
        out = self.base(features, mask)
        if self.ksm is not None:
            cas = self.ksm.match(out.embedding, self.class_queries(sample_queries))
        else:
            cas = out.cas
        loc_logits = loc_dist = None
        if self.loc is not None:
            loc_logits, loc_dist = self.loc(out.embedding, mask)
        return VideoOutput(base=out, cas=cas, attention=out.attention, loc_logits=loc_logits,
                           loc_dist=loc_dist)

    def localize(self, features: Tensor, mask: Tensor) -> Tensor:
        """Snippet class logits (B, T, C) of the localization head: the inference path of
        eq. 18, the video branch and the head only (no KSM, no CSR, no text)."""
        assert self.loc is not None
        return self.loc(self.base.embedding(features, mask), mask)[0]

    def csr_attention(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        assert self.csr is not None
        return self.csr.embed_video(features, mask)[1]
