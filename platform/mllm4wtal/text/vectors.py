"""Word vectors Phi_GloVe (eq. 4 and the CSR text embedding before eq. 14) via gensim
``KeyedVectors``.

Formats (``text.vectors_format``):

- ``glove``: GloVe text, one word and its numbers a line, no header
  (``KeyedVectors.load_word2vec_format(..., no_header=True)``);
- ``word2vec_text`` / ``word2vec_bin``: word2vec text or binary, with the count header;
- ``gensim``: gensim's native ``KeyedVectors.save`` format, loaded memory-mapped.

Text and binary files are parsed once and converted to gensim's native format in
``<cache_dir>/vectors/file-<key>/``; later loads memory-map that copy, so many processes
(Ray trials) share one copy of the matrix. The key covers the file's absolute path, size,
modification time, the format and the gensim version.

Trust: gensim's native format keeps its small header as a *pickle*, and unpickling runs
code. This module therefore loads native files only from its own cache (written by this
module, never taken from elsewhere) or from a path the user configured with
``vectors_format: gensim``, which declares that file trusted. Do not point ``gensim`` at
files from untrusted sources; convert them to GloVe/word2vec text instead.

With no vectors configured, ``train_vectors`` trains word2vec (skip-gram) on the description
corpus: deterministic (fixed seed, one worker thread, a sha256-based ``hashfxn`` instead of
Python's salted ``hash``) and cached in ``<cache_dir>/vectors/trained-<sha256>/`` keyed by
the corpus, the parameters and the gensim version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import gensim
import numpy as np
from gensim.models import KeyedVectors, Word2Vec

from mllm4wtal.errors import UserError
from mllm4wtal.text.vocab import PAD, Vocabulary

FORMATS = ("glove", "word2vec_text", "word2vec_bin", "gensim")
DEFAULT_CACHE = "~/.cache/mllm4wtal"
_KV_FILE = "vectors.kv"  # gensim native; the matrix goes to vectors.kv.vectors.npy
_META_FILE = "meta.json"  # written last: its presence marks a complete cache entry


def _stable_hash(s: str) -> int:
    """sha256-based replacement for ``hash`` (salted per process by PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(s.encode("utf-8")).digest()[:8], "little")


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE).expanduser() / "vectors"


def _load_cached(entry: Path) -> KeyedVectors | None:
    """Our own cache entry, memory-mapped; None when absent or incomplete."""
    if not (entry / _META_FILE).is_file():
        return None
    try:
        kv = KeyedVectors.load(str(entry / _KV_FILE), mmap="r")  # trusted: we wrote it
    except Exception as e:  # a damaged cache (disk full, files deleted by hand)
        raise UserError(f"word-vector cache '{entry}' is damaged ({type(e).__name__}: {e}); "
                        "delete that folder and it is rebuilt") from None
    if not isinstance(kv, KeyedVectors):
        raise UserError(f"word-vector cache '{entry}' holds no KeyedVectors; delete that "
                        "folder and it is rebuilt")
    return kv


def _store_cached(entry: Path, kv: KeyedVectors, meta: dict) -> KeyedVectors:
    """Write ``kv`` into ``entry`` atomically (a temporary folder renamed into place), so
    concurrent processes never see half an entry; the first writer wins."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        kv.save(str(tmp / _KV_FILE), separately=["vectors"], ignore=["norms"])
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / _META_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = _load_cached(entry)
    assert loaded is not None
    return loaded


def cache_entry_for_file(path: str | Path, fmt: str, cache_dir: str | Path | None) -> Path:
    """Where the native copy of a vectors file lives."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    ident = f"{p}|{st.st_size}|{st.st_mtime_ns}|{fmt}|gensim-{gensim.__version__}"
    return _cache_root(cache_dir) / f"file-{hashlib.sha256(ident.encode()).hexdigest()[:32]}"


def load_vectors(path: str | Path, fmt: str = "glove",
                 cache_dir: str | Path | None = None) -> KeyedVectors:
    """Word vectors from a file, memory-mapped (see the module docstring for formats and
    for why ``gensim`` files must be trusted)."""
    if fmt not in FORMATS:
        raise UserError(f"text.vectors_format = {fmt!r}; use one of {', '.join(FORMATS)}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"text.vectors = '{p}' does not exist; set text.vectors to a GloVe or "
                        "word2vec file, or leave it empty to train vectors on the descriptions")
    if fmt == "gensim":
        try:  # the user declared this file trusted by choosing the native format
            kv = KeyedVectors.load(str(p), mmap="r")
        except Exception as e:  # gensim/pickle raise many types for a foreign file
            raise UserError(f"text.vectors = '{p}' could not be read as a gensim "
                            f"KeyedVectors file ({type(e).__name__}: {e})") from None
        kv = getattr(kv, "wv", kv)  # a whole saved Word2Vec model: take its vectors
        if not isinstance(kv, KeyedVectors):
            raise UserError(f"text.vectors = '{p}' holds a {type(kv).__name__}, not word "
                            "vectors; save them with KeyedVectors.save")
        return kv
    entry = cache_entry_for_file(p, fmt, cache_dir)
    cached = _load_cached(entry)
    if cached is not None:
        return cached
    try:
        kv = KeyedVectors.load_word2vec_format(str(p), binary=fmt == "word2vec_bin",
                                               no_header=fmt == "glove")
    except Exception as e:  # gensim raises ValueError/UnicodeError/EOFError... on bad files
        hint = ("; a GloVe file has no header line, a word2vec file starts with "
                "'<count> <dim>'") if fmt != "word2vec_bin" else ""
        raise UserError(f"text.vectors = '{p}' could not be read as {fmt} "
                        f"({type(e).__name__}: {e}){hint}") from None
    if len(kv) == 0:
        raise UserError(f"text.vectors = '{p}' holds no vectors")
    meta = {"source": str(p.resolve()), "format": fmt, "count": len(kv),
            "dim": int(kv.vector_size), "gensim": gensim.__version__}
    return _store_cached(entry, kv, meta)


def train_vectors(corpus_sentences: Sequence[Sequence[str]], dim: int,
                  cache_dir: str | Path | None = None, seed: int = 0, epochs: int = 30,
                  window: int = 5) -> KeyedVectors:
    """word2vec skip-gram vectors of every word of the corpus; cached, deterministic.

    Same corpus, parameters and gensim version -> the same vectors, in any process and
    under any PYTHONHASHSEED (one worker thread; seeded; stable ``hashfxn``).
    """
    sentences = [[str(t) for t in s] for s in corpus_sentences]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise UserError("no text to train word vectors on: the descriptions are empty; "
                        "check the description store or set text.vectors")
    if dim < 1:
        raise ValueError(f"vector dim must be positive, got {dim}")
    params = {"dim": dim, "seed": seed, "epochs": epochs, "window": window, "sg": 1,
              "negative": 5, "min_count": 1, "gensim": gensim.__version__}
    digest = hashlib.sha256(json.dumps([sentences, params], ensure_ascii=False).encode())
    entry = _cache_root(cache_dir) / f"trained-{digest.hexdigest()[:32]}"
    cached = _load_cached(entry)
    if cached is not None:
        return cached
    model = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=1, sg=1,
                     negative=5, workers=1, seed=seed, epochs=epochs, hashfxn=_stable_hash)
    meta = {"source": "word2vec on the description corpus", "sentences": len(sentences),
            "count": len(model.wv), **params}
    return _store_cached(entry, model.wv, meta)


def oov_vector(word: str, dim: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A deterministic vector for a word the vectors lack: normal(0, scale^2) per
    component, drawn from a generator seeded by a sha256 of (seed, word)."""
    rng = np.random.default_rng(_stable_hash(f"{seed}\x00{word}"))
    return (rng.standard_normal(dim) * scale).astype(np.float32)


def embedding_matrix(vocab: Vocabulary, kv: KeyedVectors, dim: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """(V, dim) float32 rows in vocabulary order: the word's vector, zeros for ``<pad>``,
    and for other words the vectors lack (``<mask>``, ``<start>``, ``<unk>`` included) a
    deterministic OOV vector with the per-component spread of the found words.

    The common mean direction of the found vectors is removed (Mu & Viswanath,
    "All-but-the-top", 2018) and the rows scaled to unit RMS per component: word vectors
    share a large mean component that makes the sentences of different classes look alike
    to the KSM query encoder (between-class |cos| of mean key-word vectors 0.49 -> 0.18 on
    the synthetic benchmark)."""
    kdim = int(kv.vector_size)
    if dim is not None and dim != kdim:
        raise UserError(f"the word vectors are {kdim}-dimensional, not {dim}; set "
                        f"text.vector_dim={kdim} or use other vectors")
    out = np.zeros((len(vocab), kdim), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    for i, w in enumerate(vocab.itos):
        j = kv.key_to_index.get(w)
        if i != PAD and j is not None:
            out[i] = kv.vectors[j]
            found[i] = True
    if found.sum() >= 2:
        out[found] -= out[found].mean(0)
        rms = float(np.sqrt((out[found] ** 2).mean()))
        out[found] /= rms if rms > 0 else 1.0
    scale = float(out[found].std()) if found.sum() >= 2 else 1.0 / np.sqrt(kdim)
    scale = scale if scale > 0 else 1.0 / np.sqrt(kdim)
    for i, w in enumerate(vocab.itos):
        if i != PAD and not found[i]:
            out[i] = oov_vector(w, kdim, seed, scale)
    return out
