"""Shared fixtures: a tiny synthetic benchmark and a tiny full-model config (CPU, seconds)."""

from __future__ import annotations

import pytest
from mllm4wtal.config import load_config
from mllm4wtal.data.load import load_from_config

TINY = [
    "data.synthetic.num_classes=4", "data.synthetic.train_videos=16",
    "data.synthetic.test_videos=8", "data.synthetic.rgb_dim=8", "data.synthetic.flow_dim=8",
    "data.synthetic.min_len=40", "data.synthetic.max_len=64",
    "data.synthetic.max_instance_len=12", "data.synthetic.context_len=3",
    "data.feature_dim=16", "data.rgb_dim=8", "data.max_seqlen=48", "data.batch_size=4",
    "data.n_similar=1", "model.hidden_dim=16", "ksm.dim=16", "ksm.n_ctx=2", "ksm.heads=2",
    "csr.dim=16", "csr.heads=2", "text.vector_dim=8", "text.max_complete_len=24",
    "train.iterations=4", "train.eval_interval=2", "train.device=cpu",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY + [f"text.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config("synthetic", tiny_overrides)


@pytest.fixture
def tiny_data(tiny_cfg):
    return load_from_config(tiny_cfg.data)


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray (2 CPUs) for the tests of a module, started as the commands start
    theirs (private, on 127.0.0.1, its own token)."""
    import ray
    from mllm4wtal.ray_session import start_ray

    start_ray(num_cpus=2)
    yield
    ray.shutdown()
