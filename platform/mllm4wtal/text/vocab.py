"""Tokenisation, stop words and the vocabulary, with gensim.

Tokens come from ``gensim.utils.simple_preprocess`` (lower case, accents stripped); stop
words are gensim's ``STOPWORDS``. The vocabulary is the CSR output space (eq. 16-17) and
the index of the word-vector matrix (eq. 4): special tokens at fixed ids
``<pad>``=0, ``<mask>``=1, ``<start>``=2, ``<unk>``=3, then the corpus words, most frequent
first, cut to a size limit with gensim's ``Dictionary``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gensim.corpora import Dictionary
from gensim.parsing.preprocessing import STOPWORDS
from gensim.utils import simple_preprocess

from mllm4wtal.errors import UserError

SPECIALS: tuple[str, ...] = ("<pad>", "<mask>", "<start>", "<unk>")
PAD, MASK, START, UNK = range(4)
_FORMAT = "mllm4wtal-vocabulary"


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (gensim ``simple_preprocess``, accents stripped; one-letter
    words such as "a" kept so that sentences stay readable after decoding)."""
    return simple_preprocess(text, deacc=True, min_len=1, max_len=30)


def is_stopword(token: str) -> bool:
    return token in STOPWORDS


class Vocabulary:
    """Token <-> id: the special tokens at ids 0..3, then the kept words.

    ``dictionary`` is the gensim ``Dictionary`` with exactly this mapping (ids included), for
    code that wants gensim's API (``doc2bow``, ``doc2idx``).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary lists every token once")
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.dictionary = Dictionary()
        self.dictionary.token2id = dict(self.stoi)  # the public mapping gensim reads from

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_size: int) -> Vocabulary:
        """At most ``max_size`` tokens (specials included) from tokenised sentences.

        Words are ranked by the number of sentences they occur in, then by total count, then
        alphabetically, so the vocabulary does not depend on the order of the sentences
        (``Dictionary.filter_extremes(keep_n=...)`` breaks ties by first occurrence). The
        specials are put in front rather than patched in with
        ``Dictionary.patch_with_special_tokens``, which would move the words holding ids 0-3
        to the end and fails on dictionaries with fewer words than specials.
        """
        if max_size < len(SPECIALS) + 1:
            raise ValueError(f"vocabulary size must be at least {len(SPECIALS) + 1}, "
                             f"got {max_size}")
        d = Dictionary(list(s) for s in sentences)
        for tok in SPECIALS:  # a literal "<pad>" in a text must not get a second id
            if tok in d.token2id:
                d.filter_tokens(bad_ids=[d.token2id[tok]])
        ranked = sorted(d.token2id, key=lambda t: (-d.dfs[d.token2id[t]],
                                                   -d.cfs[d.token2id[t]], t))
        keep = ranked[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + keep)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    __hash__ = None  # type: ignore[assignment]  # mutable container semantics

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """Ids of the first ``max_len`` tokens; unknown words -> ``<unk>``."""
        toks = tokens if max_len is None else tokens[:max_len]
        return [self.stoi.get(t, UNK) for t in toks]

    def decode(self, ids: Iterable[int], skip_pad: bool = False) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise IndexError(f"token id {i} outside the vocabulary of {len(self.itos)}")
            if not (skip_pad and i == PAD):
                out.append(self.itos[i])
        return out

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "version": 1, "tokens": self.itos},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, source: str = "vocabulary") -> Vocabulary:
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            return cls([str(t) for t in d["tokens"]])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{source}: cannot read the vocabulary ({e}); "
                            "it is written by Vocabulary.save") from None

    def save(self, path: str | Path) -> None:
        """Write JSON (no pickle), atomically."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"vocabulary file '{p}' does not exist")
        return cls.from_json(p.read_text(encoding="utf-8"), source=str(p))
