"""A model, its DPID and one seeded training batch, as the training loop builds them."""

from __future__ import annotations

import numpy as np
from mllm4wtal.data.batching import TrainBatchSampler
from mllm4wtal.text.bundle import build_text_bundle
from mllm4wtal.train.dpid import DPID
from mllm4wtal.train.loop import build_model, make_batch, seed_everything


def setup(cfg, data):
    """(model, dpid, batch) for ``cfg`` on ``data``, everything seeded with 0."""
    seed_everything(0)
    text = build_text_bundle(cfg, data)
    model = build_model(cfg, data, text)
    dpid = DPID(model, cfg)
    sampler = TrainBatchSampler.from_dataset(data, batch_size=cfg.data.batch_size,
                                             max_seqlen=cfg.data.max_seqlen, n_similar=1, seed=0)
    batch = make_batch(cfg, data, sampler, text, np.random.default_rng(0))
    return model, dpid, batch
