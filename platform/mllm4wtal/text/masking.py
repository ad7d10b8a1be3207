"""Masking of complete descriptions for CSR.

MLLM4WTAL (text before eq. 14, after Boosting-WTAL's VLC): "we randomly mask 1/3 of the
words in the sentence ..., which may lead to a high probability of masking action labeling
text"; the masked words are what the reconstructor predicts (eq. 16-17). Here the share is
``ratio`` of the words (rounded half up, at least one), drawn without replacement, each
key action word (a word of the class name or of the key description that is not a stop
word) ``key_weight`` times as likely as another word. Positions index the words of one
unpadded sentence (``text.bundle`` passes each complete description without ``<start>`` or
padding), so padding is never masked. Deterministic for a given ``numpy.random.Generator``
state.
"""

from __future__ import annotations

import math

import numpy as np


def num_to_mask(n_words: int, ratio: float) -> int:
    """round(ratio * n_words), halves rounded up, clipped to [1, n_words] (0 if no words)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if n_words <= 0:
        return 0
    # floor(x + 0.5), not round(): Python rounds halves to even (round(2.5) == 2)
    return min(n_words, max(1, math.floor(ratio * n_words + 0.5)))


def mask_positions(n_words: int, is_key: np.ndarray, ratio: float, key_weight: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the words to mask in a sentence of ``n_words`` words.

    ``is_key[i]``: word i is a key action word (weight ``key_weight``, others 1).
    """
    if key_weight <= 0:
        raise ValueError(f"key_weight must be positive, got {key_weight}")
    k = num_to_mask(n_words, ratio)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    key = np.asarray(is_key, dtype=bool)[:n_words]
    if key.shape[0] != n_words:
        raise ValueError(f"is_key has {key.shape[0]} entries for {n_words} words")
    w = np.where(key, float(key_weight), 1.0)
    pos = rng.choice(n_words, size=k, replace=False, p=w / w.sum())
    return np.sort(pos).astype(np.int64)
