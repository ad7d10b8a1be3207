"""Tokenisation, stop words and the vocabulary, with gensim."""

from __future__ import annotations

import json
from pathlib import Path

from gensim.corpora import Dictionary
from gensim.parsing.preprocessing import STOPWORDS
from gensim.utils import simple_preprocess

SPECIALS = ("<pad>", "<mask>", "<start>", "<unk>")
PAD, MASK, START, UNK = range(4)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (gensim ``simple_preprocess``, accents stripped)."""
    return simple_preprocess(text, deacc=True, min_len=1, max_len=30)


def is_stopword(token: str) -> bool:
    return token in STOPWORDS


class Vocabulary:
    """Token <-> id, the special tokens at fixed ids 0..3, then by corpus frequency."""

    def __init__(self, tokens: list[str]) -> None:
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: list[list[str]], max_size: int) -> Vocabulary:
        d = Dictionary(sentences)
        d.filter_extremes(no_below=1, no_above=1.0, keep_n=max(0, max_size - len(SPECIALS)))
        # frequency order, ties by token: independent of corpus order and of hash seeds
        words = sorted(d.token2id, key=lambda t: (-d.cfs[d.token2id[t]], t))
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str], max_len: int) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens[:max_len]]

    def decode(self, ids: list[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.itos))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text()))
