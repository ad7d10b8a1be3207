"""Masking of complete descriptions for CSR (MLLM4WTAL: "mask 1/3 of the words ... with a
high probability of masking action words").

``ratio`` of the words of a sentence is masked (rounded, at least one), drawn without
replacement with weight ``key_weight`` on key action words (words of the class name and
of its key description that are not stop words) and 1 on the others.
"""

from __future__ import annotations

import numpy as np


def mask_positions(n_words: int, is_key: np.ndarray, ratio: float, key_weight: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of the words to mask in a sentence of ``n_words`` words."""
    if n_words <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n_words, max(1, int(round(ratio * n_words))))
    w = np.where(is_key[:n_words], key_weight, 1.0)
    return np.sort(rng.choice(n_words, size=k, replace=False, p=w / w.sum()))
