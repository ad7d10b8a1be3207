"""Word vectors through gensim ``KeyedVectors``.

Formats: ``glove`` (text, no header), ``word2vec_text``, ``word2vec_bin`` and ``gensim``
(``KeyedVectors.save`` files; they contain a pickle, so only load files you made). Text and
binary files are parsed once and cached as ``vectors.npy`` + ``words.json`` (no pickle),
memory-mapped on later loads. With no file configured, word2vec is trained on the
description corpus, deterministically (seeded, one worker, a stable hash for the per-word
initialisation instead of Python's salted ``hash``), and cached by a sha256 of the corpus
and the parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors, Word2Vec

from mllm4wtal.errors import UserError
from mllm4wtal.text.vocab import PAD, Vocabulary

FORMATS = ("glove", "word2vec_text", "word2vec_bin", "gensim")


class Vectors:
    """Words and their vectors (a memory-mapped matrix once cached)."""

    def __init__(self, words: list[str], matrix: np.ndarray) -> None:
        self.words, self.matrix = words, matrix
        self.index = {w: i for i, w in enumerate(words)}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def get(self, word: str) -> np.ndarray | None:
        i = self.index.get(word)
        return None if i is None else np.asarray(self.matrix[i])


def _cache_dir(cache: str | Path, key: str) -> Path:
    d = Path(cache).expanduser() / "vectors" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save(d: Path, words: list[str], matrix: np.ndarray) -> None:
    np.save(d / "vectors.npy", matrix.astype(np.float32))
    (d / "words.json").write_text(json.dumps(words))


def _load_cached(d: Path) -> Vectors | None:
    if (d / "vectors.npy").is_file() and (d / "words.json").is_file():
        return Vectors(json.loads((d / "words.json").read_text()),
                       np.load(d / "vectors.npy", mmap_mode="r", allow_pickle=False))
    return None


def load_vectors(path: str | Path, fmt: str, cache: str | Path) -> Vectors:
    """Load a vectors file (converted and cached once, memory-mapped afterwards)."""
    p = Path(path).expanduser()
    if fmt not in FORMATS:
        raise UserError(f"text.vectors_format = {fmt!r}; use one of {', '.join(FORMATS)}")
    if not p.is_file():
        raise UserError(f"text.vectors = '{p}' does not exist")
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{fmt}".encode())
    d = _cache_dir(cache, "file-" + key.hexdigest()[:24])
    cached = _load_cached(d)
    if cached is not None:
        return cached
    try:
        if fmt == "gensim":
            kv = KeyedVectors.load(str(p), mmap="r")
        else:
            kv = KeyedVectors.load_word2vec_format(str(p), binary=fmt == "word2vec_bin",
                                                   no_header=fmt == "glove")
    except Exception as e:  # gensim raises many types for a malformed file
        raise UserError(f"text.vectors = '{p}' could not be read as {fmt} "
                        f"({type(e).__name__}: {e})") from None
    _save(d, list(kv.index_to_key), np.asarray(kv.vectors))
    return _load_cached(d)  # type: ignore[return-value]


def _stable_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


def train_vectors(sentences: list[list[str]], dim: int, cache: str | Path, seed: int = 0,
                  epochs: int = 30) -> Vectors:
    """word2vec (skip-gram) on the corpus; same corpus and parameters -> same vectors."""
    h = hashlib.sha256(json.dumps([sentences, dim, seed, epochs]).encode()).hexdigest()[:24]
    d = _cache_dir(cache, "trained-" + h)
    cached = _load_cached(d)
    if cached is not None:
        return cached
    model = Word2Vec(sentences=sentences, vector_size=dim, window=5, min_count=1, sg=1,
                     workers=1, seed=seed, epochs=epochs, hashfxn=_stable_hash)
    kv = model.wv
    _save(d, list(kv.index_to_key), np.asarray(kv.vectors))
    return _load_cached(d)  # type: ignore[return-value]


def oov_vector(word: str, dim: int) -> np.ndarray:
    """A deterministic vector for a word the vectors lack (seeded by its sha256)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(word.encode()).digest()[:8],
                                               "little"))
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v) * np.sqrt(dim) * 0.1).astype(np.float32)


def embedding_matrix(vocab: Vocabulary, vectors: Vectors) -> np.ndarray:
    """(V, dim) float32: the word's vector, a deterministic OOV vector, zeros for <pad>."""
    out = np.zeros((len(vocab), vectors.dim), dtype=np.float32)
    for i, w in enumerate(vocab.itos):
        if i == PAD:
            continue
        v = vectors.get(w)
        out[i] = v if v is not None else oov_vector(w, vectors.dim)
    return out
