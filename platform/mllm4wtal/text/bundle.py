"""From the descriptions of a dataset to what training needs: the vocabulary, the word
vector matrix, per class the token ids of its key descriptions (KSM queries), per
training video the token ids of its complete descriptions (CSR) and which words are key
action words (for masking)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch

from mllm4wtal.config import Config
from mllm4wtal.data.types import Video, WTALDataset
from mllm4wtal.text.masking import mask_positions
from mllm4wtal.text.prompts import humanize
from mllm4wtal.text.store import StoreError, build_store, descriptions_for, read_store
from mllm4wtal.text.tensors import HANDCRAFT_PROMPT, TextTensors
from mllm4wtal.text.vectors import embedding_matrix, load_vectors, train_vectors
from mllm4wtal.text.vocab import PAD, Vocabulary, is_stopword, tokenize


@dataclass
class Sentence:
    ids: np.ndarray  # (n,) token ids
    is_key: np.ndarray  # (n,) bool: key action word


@dataclass
class TextBundle:
    vocab: Vocabulary
    tensors: TextTensors
    complete: dict[str, list[Sentence]]  # training video -> one per labelled class
    key: str = ""  # bundle_key of the config it was built for

    def masked_sentences(self, videos: list[Video], ratio: float, key_weight: float,
                         rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """One complete description per video (a labelled class drawn at random), with
        ``ratio`` of its words masked: (ids, present, masked), each (B, m)."""
        chosen = []
        for v in videos:
            options = self.complete[v.name]
            chosen.append(options[int(rng.integers(len(options)))])
        m = max(len(s.ids) for s in chosen)
        ids = torch.full((len(videos), m), PAD, dtype=torch.long)
        masked = torch.zeros(len(videos), m, dtype=torch.bool)
        for row, s in enumerate(chosen):
            ids[row, : len(s.ids)] = torch.tensor(s.ids)  # may be read-only (object store)
            pos = mask_positions(len(s.ids), s.is_key, ratio, key_weight, rng)
            masked[row, torch.from_numpy(pos)] = True
        return ids, ids != PAD, masked


def bundle_key(cfg: Config) -> str:
    """What a bundle depends on besides the dataset: the ``text`` section and the seed the
    word vectors are trained with. Configs with equal keys share one bundle (a sweep builds
    it once in its driver for all trials)."""
    return json.dumps({"text": dataclasses.asdict(cfg.text), "seed": cfg.train.seed},
                      sort_keys=True)


def build_text_bundle(cfg: Config, dataset: WTALDataset) -> TextBundle:
    tc = cfg.text
    if tc.backend == "file":
        if not tc.store.strip():
            raise StoreError("text.backend = 'file' needs text.store, the JSONL description "
                             "store `mllm4wtal describe` writes: pass --set "
                             "text.store=<descriptions.jsonl>, or use text.backend=template")
        records = descriptions_for(dataset, read_store(tc.store), tc.fallback_to_template,
                                   source=tc.store)
    else:
        records = build_store(dataset)

    key_tok = {pair: tokenize(r.key) for pair, r in records.items()}
    # T_key keeps the informative words only: stop words are shared by every class
    key_content = {pair: [t for t in toks if not is_stopword(t)] or toks
                   for pair, toks in key_tok.items()}
    comp_tok = {pair: tokenize(r.complete) for pair, r in records.items()}
    class_tok = {c: tokenize(humanize(c)) for c in dataset.classes}
    corpus = list(key_tok.values()) + list(comp_tok.values()) + list(class_tok.values())
    corpus.append(tokenize(HANDCRAFT_PROMPT))
    vocab = Vocabulary.build(corpus, tc.vocab_size)
    if tc.vectors:
        vectors = load_vectors(tc.vectors, tc.vectors_format, tc.cache_dir)
    else:
        vectors = train_vectors(corpus, tc.vector_dim, tc.cache_dir, seed=cfg.train.seed)
    matrix = embedding_matrix(vocab, vectors)

    # KSM: per class, key descriptions in video order; the first is the canonical one
    per_class: dict[str, list[list[int]]] = {c: [] for c in dataset.classes}
    for (video, cls) in sorted(records):
        per_class[cls].append(vocab.encode(key_content[(video, cls)], tc.max_key_len) or [PAD])
    for c in dataset.classes:  # a class without training videos: its name alone
        if not per_class[c]:
            per_class[c].append(vocab.encode(class_tok[c], tc.max_key_len))
    k_max = max(len(v) for v in per_class.values())
    key_ids = torch.full((len(dataset.classes), k_max, tc.max_key_len), PAD, dtype=torch.long)
    for ci, c in enumerate(dataset.classes):
        for j, ids in enumerate(per_class[c]):
            key_ids[ci, j, : len(ids)] = torch.tensor(ids)
    key_count = torch.tensor([len(per_class[c]) for c in dataset.classes])

    # CSR: complete descriptions; key words = class-name and key-description words
    complete: dict[str, list[Sentence]] = {}
    for (video, cls), toks in sorted(comp_tok.items()):
        toks = toks[: tc.max_complete_len] or tokenize(humanize(cls))
        keys = {t for t in class_tok[cls] + key_tok[(video, cls)] if not is_stopword(t)}
        complete.setdefault(video, []).append(Sentence(
            ids=np.array(vocab.encode(toks, tc.max_complete_len), dtype=np.int64),
            is_key=np.array([t in keys for t in toks], dtype=bool)))

    tensors = TextTensors(
        word_vectors=torch.from_numpy(matrix), key_ids=key_ids, key_count=key_count,
        handcraft_ids=torch.tensor(vocab.encode(tokenize(HANDCRAFT_PROMPT), 16)))
    return TextBundle(vocab=vocab, tensors=tensors, complete=complete, key=bundle_key(cfg))
