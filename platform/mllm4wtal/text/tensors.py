"""What the model takes from the text layer: word vectors and token ids, as tensors."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mllm4wtal.text.vocab import PAD as PAD_ID

# KSM's hand-crafted prompt context (``ksm.prompt=handcraft``, Li et al. 2023 table 4)
HANDCRAFT_PROMPT = "a video of a person"


@dataclass
class TextTensors:
    """Built by ``text.bundle``; stored in the model's state so a checkpoint is
    self-contained."""

    word_vectors: Tensor  # (V, d) float32, row PAD_ID is zero
    key_ids: Tensor  # (C, K, L) long, PAD_ID-padded key descriptions per class
    key_count: Tensor  # (C,) long, number of key descriptions per class
    handcraft_ids: Tensor  # (P,) long, the hand-written prompt's token ids


__all__ = ["HANDCRAFT_PROMPT", "PAD_ID", "TextTensors"]
