"""The text layer: prompts, templates, description store, vocabulary, word vectors, masking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gensim.models import KeyedVectors
from hypothesis import given, settings
from hypothesis import strategies as st
from mllm4wtal.data.types import Video, WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.text import vectors
from mllm4wtal.text.masking import mask_positions, num_to_mask
from mllm4wtal.text.prompts import P_COMPLETE, P_KEY, format_prompt, humanize
from mllm4wtal.text.store import (
    DescriptionRecord,
    StoreError,
    append_record,
    build_store,
    descriptions_for,
    read_store,
    repair_store,
)
from mllm4wtal.text.templates import gerund, template_descriptions, third_person
from mllm4wtal.text.vectors import embedding_matrix, load_vectors, train_vectors
from mllm4wtal.text.vocab import MASK, PAD, SPECIALS, START, UNK, Vocabulary, tokenize

CLASSES = ["PoleVault", "CleanAndJerk", "HighJump"]
VOCAB = {
    "PoleVault": {"verbs": ["run", "plant", "vault"], "objects": ["pole", "bar"],
                  "subactions": ["run-up", "vault", "landing"]},
    "CleanAndJerk": {"verbs": ["grip", "lift"], "objects": ["barbell"],
                     "subactions": ["grip", "lift", "drop"]},
}  # HighJump has none: the plain templates


def tiny_dataset(n_train: int = 4) -> WTALDataset:
    """Training videos with one or two labels, and one test video."""
    feats = np.zeros((4, 2), dtype=np.float32)
    labels = [(0,), (1,), (0, 2), (1, 2), (0, 1)]
    videos = [Video(name=f"video_validation_{i:03d}", subset="validation", features=feats,
                    labels=labels[i % len(labels)], segments=(), duration=10.0, fps=25.0)
              for i in range(n_train)]
    videos.append(Video(name="video_test_000", subset="test", features=feats, labels=(0,),
                        segments=(), duration=10.0, fps=25.0))
    return WTALDataset(name="tiny", classes=list(CLASSES), videos=videos,
                       train_subset="validation", test_subset="test", rgb_dim=1,
                       vocabulary=VOCAB)


# ---------------------------------------------------------------- prompts and templates

def test_prompts_verbatim_from_the_paper():
    assert P_KEY == ("This video contains the actions of {cls}. "
                     "Please describe the action of {cls} with one sentence.")
    assert P_COMPLETE == ("This video contains the actions of {cls}. "
                          "Please describe the action of {cls} in detail.")
    assert format_prompt("key", "PoleVault") == (
        "This video contains the actions of pole vault. "
        "Please describe the action of pole vault with one sentence.")
    assert format_prompt("complete", "CleanAndJerk").endswith(
        "Please describe the action of clean and jerk in detail.")
    with pytest.raises(ValueError, match="key"):
        format_prompt("summary", "PoleVault")


@pytest.mark.parametrize("name, words", [
    ("PoleVault", "pole vault"), ("CleanAndJerk", "clean and jerk"),
    ("Playing_guitar", "playing guitar"), ("Rock-paper-scissors", "rock paper scissors"),
    ("BMXRacing", "bmx racing"), ("Long jump", "long jump")])
def test_humanize(name, words):
    assert humanize(name) == words


def test_verb_forms():
    assert [gerund(v) for v in ("run", "grip", "dive", "tie", "deliver", "clear", "see")] == [
        "running", "gripping", "diving", "tying", "delivering", "clearing", "seeing"]
    assert [third_person(v) for v in ("pitch", "carry", "dive", "play", "pick up")] == [
        "pitches", "carries", "dives", "plays", "picks up"]


def _sentences(text: str) -> list[str]:
    return [s for s in text.split(".") if s.strip()]


def test_templates_deterministic_varied_and_use_the_vocabulary():
    d1 = template_descriptions("v1", "PoleVault", VOCAB["PoleVault"])
    assert d1 == template_descriptions("v1", "PoleVault", VOCAB["PoleVault"])
    keys, completes = set(), set()
    for i in range(30):
        key, complete = template_descriptions(f"v{i}", "PoleVault", VOCAB["PoleVault"])
        keys.add(key)
        completes.add(complete)
        assert len(_sentences(key)) == 1
        assert 2 <= len(_sentences(complete)) <= 4
        assert "pole vault" in complete
        # the phases CSR should recover are named in order
        text = complete.replace("-", " ")
        assert text.index("run up") < text.index("landing")
    assert len(keys) > 3 and len(completes) > 3
    words = set(" ".join(keys).replace(".", " ").replace(",", " ").split())
    assert words & {"running", "planting", "vaulting", "runs", "plants", "vaults"}
    key, complete = template_descriptions("v1", "HighJump", None)
    assert "high jump" in key and 2 <= len(_sentences(complete)) <= 4


# ---------------------------------------------------------------- description store

def _record(video: str, cls: str, **extra) -> DescriptionRecord:
    return DescriptionRecord(video=video, cls=cls, key=f"key of {cls} in {video} \u00e9",
                             complete=f"complete of {cls}.\nsecond line", backend="hf",
                             model="/models/x", prompt={"key": format_prompt("key", cls)},
                             extra=extra)


def test_store_round_trip_keeps_extra_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    recs = [_record("a", "PoleVault", frames_hash="abc", seconds=1.5), _record("b", "HighJump")]
    for r in recs:
        append_record(path, r)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2  # newline in text escaped
    back = read_store(path)
    assert back == {r.pair: r for r in recs}
    raw = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert raw["class"] == "PoleVault" and raw["frames_hash"] == "abc"
    assert set(raw) >= {"video", "class", "key", "complete", "backend", "model", "prompt"}
    # a pair described again: the last record wins
    append_record(path, _record("a", "PoleVault", seconds=9.0))
    assert read_store(path)[("a", "PoleVault")].extra == {"seconds": 9.0}


def test_store_errors_name_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = _record("a", "PoleVault").to_json()
    path.write_text(good + "\n" + json.dumps({"video": "b", "class": "HighJump"}) + "\n")
    with pytest.raises(StoreError, match=r"d\.jsonl: line 2: .*key, complete"):
        read_store(path)
    path.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(StoreError, match=r"d\.jsonl: line 2 is not valid JSON"):
        read_store(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(StoreError, match="line 1.*JSON object"):
        read_store(path)
    with pytest.raises(StoreError, match="does not exist"):
        read_store(tmp_path / "nope.jsonl")
    # a record from elsewhere may leave out backend/model/prompt
    path.write_text(json.dumps({"video": "v", "class": "c", "key": "k", "complete": "c"}))
    assert read_store(path)[("v", "c")].backend == "file"


def test_truncated_last_line_is_reported_and_repaired(tmp_path):
    path = tmp_path / "d.jsonl"
    recs = [_record(f"v{i}", "PoleVault") for i in range(3)]
    for r in recs:
        append_record(path, r)
    whole = path.read_bytes()
    # a crash in the middle of the 4th record, cutting a two-byte character in half
    tail = _record("v3", "CleanAndJerk").to_json().encode("utf-8")
    cut = tail[: tail.index("\u00e9".encode()) + 1]
    path.write_bytes(whole + cut)
    with pytest.raises(StoreError, match=r"line 4 \(the last\) is truncated.*repair_store"):
        read_store(path)
    with pytest.raises(StoreError, match="repair_store"):  # never glued to the broken line
        append_record(path, recs[0])
    moved = repair_store(path)
    assert moved == tmp_path / "d.jsonl.corrupt-1"
    assert moved.read_bytes() == cut + b"\n"  # kept for inspection, not dropped
    assert path.read_bytes() == whole
    assert read_store(path) == {r.pair: r for r in recs}
    assert repair_store(path) is None  # nothing left to repair
    # a second crash goes to the next free name
    path.write_bytes(whole + b'{"video": "x", "cla')
    assert repair_store(path) == tmp_path / "d.jsonl.corrupt-2"
    # a bad line elsewhere is not a crash artefact: left for a person
    path.write_bytes(b"{oops\n" + whole)
    with pytest.raises(StoreError, match="line 1 .*by hand"):
        repair_store(path)


def test_template_store_is_complete(tmp_path):
    ds = tiny_dataset(5)
    path = tmp_path / "t.jsonl"
    records = build_store(ds, backend="template", path=path)
    expected = {(v.name, ds.classes[c]) for v in ds.train for c in v.labels}
    assert set(records) == expected and len(records) == 8  # 5 videos, 1-2 labels each
    assert all(r.backend == "template" for r in records.values())
    assert records[("video_validation_002", "HighJump")].prompt["key"] == (
        format_prompt("key", "HighJump"))
    assert read_store(path) == records
    assert build_store(ds) == records  # deterministic
    with pytest.raises(StoreError, match="describe"):
        build_store(ds, backend="hf")


def test_missing_pairs_are_named_or_filled(tmp_path):
    ds = tiny_dataset(5)
    full = build_store(ds)
    partial = {p: r for p, r in full.items() if p[1] != "HighJump"}
    with pytest.raises(StoreError) as err:
        descriptions_for(ds, partial, fallback_to_template=False, source="my.jsonl")
    msg = str(err.value)
    assert "my.jsonl: 2 (video, class) pair(s)" in msg
    assert "('video_validation_002', 'HighJump')" in msg
    assert "('video_validation_003', 'HighJump')" in msg
    assert "fallback_to_template" in msg
    with pytest.raises(StoreError, match=r"8 \(video, class\).* and 3 more"):
        descriptions_for(ds, None, fallback_to_template=False)
    # the store's own records are used; the gaps are filled by templates
    mine = {p: _record(*p) for p in partial}
    got = descriptions_for(ds, mine, fallback_to_template=True)
    assert set(got) == set(full)
    assert all(got[p] is mine[p] for p in mine)
    assert got[("video_validation_002", "HighJump")] == full[("video_validation_002",
                                                              "HighJump")]
    assert descriptions_for(ds, None, fallback_to_template=True) == full


# ---------------------------------------------------------------- vocabulary

def test_vocabulary_specials_limit_unknown_and_json(tmp_path):
    assert (PAD, MASK, START, UNK) == (0, 1, 2, 3)
    sents = [tokenize("A person runs, runs and jumps!"), tokenize("the person lands"),
             tokenize("Caf\u00e9 <pad> person")]
    assert sents[0] == ["a", "person", "runs", "runs", "and", "jumps"]
    assert sents[2] == ["cafe", "pad", "person"]  # accents stripped, brackets dropped
    vocab = Vocabulary.build(sents, max_size=100)
    assert vocab.itos[:4] == list(SPECIALS)
    assert vocab.itos[4] == "person"  # in every sentence
    assert len(set(vocab.itos)) == len(vocab) == 4 + 9
    small = Vocabulary.build(sents, max_size=6)
    assert len(small) == 6 and small.itos[4:] == ["person", "runs"]
    assert small.encode(["person", "jumps", "runs"]) == [4, UNK, 5]
    assert small.encode(["person", "runs", "person"], max_len=2) == [4, 5]
    assert small.decode([START, 4, 5, PAD], skip_pad=True) == ["<start>", "person", "runs"]
    # gensim's Dictionary view has the same ids
    assert small.dictionary.doc2idx(["runs", "zzz"], unknown_word_index=UNK) == [5, UNK]
    # order of the sentences does not matter
    assert Vocabulary.build(sents[::-1], max_size=100) == vocab
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text())["tokens"] == vocab.itos
    assert Vocabulary.load(path) == vocab
    path.write_text("[1, 2")
    with pytest.raises(UserError, match="vocab.json"):
        Vocabulary.load(path)
    with pytest.raises(ValueError):
        Vocabulary.build(sents, max_size=4)
    # a literal special token in the text keeps its fixed id
    lit = Vocabulary.build([["<pad>", "<unk>", "word"]], max_size=10)
    assert lit.itos == [*SPECIALS, "word"]


# ---------------------------------------------------------------- word vectors

GLOVE = {"the": [0.1, 0.2, 0.3, 0.4, 0.5], "pole": [-1.0, 2.5, 3.25, -4.0, 5.0],
         "vault": [1e-3, 0.0, -0.5, 7.0, 8.0], "caf\u00e9": [1.0, 1.0, 1.0, 1.0, 1.0]}


def _write_glove(path: Path) -> None:
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in GLOVE.items()),
                    encoding="utf-8")


def test_glove_loaded_once_then_memory_mapped(tmp_path, monkeypatch):
    src = tmp_path / "glove.5d.txt"
    _write_glove(src)
    cache = tmp_path / "cache"
    kv = load_vectors(src, "glove", cache)
    assert kv.index_to_key == list(GLOVE) and kv.vector_size == 5
    for w, v in GLOVE.items():
        np.testing.assert_array_equal(kv[w], np.asarray(v, dtype=np.float32))
    entries = list((cache / "vectors").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()

    def no_parsing(*a, **k):
        raise AssertionError("the text file was parsed again")

    monkeypatch.setattr(KeyedVectors, "load_word2vec_format", no_parsing)
    again = load_vectors(src, "glove", cache)
    assert isinstance(again.vectors, np.memmap)
    np.testing.assert_array_equal(again.vectors, kv.vectors)
    assert again.index_to_key == kv.index_to_key


def test_word2vec_text_and_trusted_native_formats(tmp_path):
    src = tmp_path / "w2v.txt"
    src.write_text(f"{len(GLOVE)} 5\n" + "".join(
        f"{w} {' '.join(map(str, v))}\n" for w, v in GLOVE.items()), encoding="utf-8")
    kv = load_vectors(src, "word2vec_text", tmp_path / "cache")
    np.testing.assert_array_equal(kv["pole"], np.asarray(GLOVE["pole"], dtype=np.float32))
    native = tmp_path / "mine.kv"
    kv.save(str(native), separately=["vectors"])
    back = load_vectors(native, "gensim")
    assert isinstance(back.vectors, np.memmap) and back.index_to_key == kv.index_to_key
    with pytest.raises(UserError, match="could not be read as word2vec_text"):
        load_vectors(tmp_path / "cache" / "vectors" / next(
            iter(os.listdir(tmp_path / "cache" / "vectors"))) / "meta.json", "word2vec_text",
            tmp_path / "cache")
    with pytest.raises(UserError, match="does not exist"):
        load_vectors(tmp_path / "none.txt", "glove", tmp_path / "cache")
    with pytest.raises(UserError, match="vectors_format"):
        load_vectors(src, "fasttext", tmp_path / "cache")


CORPUS = [tokenize(s) for s in (
    "a person runs with the pole and plants it", "the athlete vaults over the bar",
    "a person lifts the barbell over the head", "the lifter grips the barbell and jerks it",
    "an athlete runs and jumps over the bar", "the jumper lands on the mat")] * 3

_TRAIN_SNIPPET = """
import json, sys
from mllm4wtal.text.vectors import train_vectors
from mllm4wtal.text.templates import template_descriptions
corpus, cache = json.loads(sys.argv[1]), sys.argv[2]
kv = train_vectors(corpus, 8, cache, seed=3, epochs=5)
print(json.dumps({"words": kv.index_to_key, "vectors": kv.vectors.tolist(),
                  "template": template_descriptions("v7", "PoleVault", None)}))
"""


def test_trained_vectors_deterministic_and_cached(tmp_path, monkeypatch):
    a = train_vectors(CORPUS, 8, tmp_path / "c1", seed=3, epochs=5)
    b = train_vectors(CORPUS, 8, tmp_path / "c2", seed=3, epochs=5)
    assert a.index_to_key == b.index_to_key and set(a.index_to_key) == {
        w for s in CORPUS for w in s}
    np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    other_seed = train_vectors(CORPUS, 8, tmp_path / "c1", seed=4, epochs=5)
    assert not np.array_equal(np.asarray(a.vectors), np.asarray(other_seed.vectors))

    # another interpreter with another string-hash salt trains the same vectors
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _TRAIN_SNIPPET, json.dumps(CORPUS),
                          str(tmp_path / "c3")], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout)
    assert got["words"] == a.index_to_key
    np.testing.assert_array_equal(np.asarray(got["vectors"], dtype=np.float32),
                                  np.asarray(a.vectors))
    assert tuple(got["template"]) == template_descriptions("v7", "PoleVault", None)

    # cache hit: no training the second time, memory-mapped
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(vectors, "Word2Vec", no_training)
    c = train_vectors(CORPUS, 8, tmp_path / "c1", seed=3, epochs=5)
    assert isinstance(c.vectors, np.memmap)
    np.testing.assert_array_equal(np.asarray(c.vectors), np.asarray(a.vectors))
    with pytest.raises(UserError, match="no text"):
        train_vectors([[], []], 8, tmp_path / "c1")


def test_embedding_matrix(tmp_path):
    src = tmp_path / "g.txt"
    _write_glove(src)
    kv = load_vectors(src, "glove", tmp_path / "cache")
    vocab = Vocabulary.build([["the", "pole", "vault", "zebra"], ["the", "yak"]], 100)
    m = embedding_matrix(vocab, kv, dim=5, seed=0)
    assert m.shape == (len(vocab), 5) and m.dtype == np.float32
    assert not m[PAD].any()
    # found words: the file's vectors, mean direction removed, unit RMS per component
    found = np.stack([np.asarray(GLOVE[w], np.float32) for w in ("the", "pole", "vault")])
    found -= found.mean(0)
    found /= np.sqrt((found ** 2).mean())
    for row, w in enumerate(("the", "pole", "vault")):
        np.testing.assert_allclose(m[vocab.stoi[w]], found[row], rtol=1e-5, atol=1e-6)
    oov = [vocab.stoi["zebra"], vocab.stoi["yak"], MASK, START, UNK]
    assert all(np.abs(m[i]).sum() > 0 for i in oov)
    assert len({m[i].tobytes() for i in oov}) == len(oov)  # distinct
    # an OOV word's vector depends on the word (and seed), not on the rest of the vocabulary
    other = Vocabulary.build([["zebra", "pole", "the", "vault"]], 100)
    m2 = embedding_matrix(other, kv, seed=0)
    np.testing.assert_array_equal(m2[other.stoi["zebra"]], m[vocab.stoi["zebra"]])
    assert not np.array_equal(embedding_matrix(vocab, kv, seed=1)[UNK], m[UNK])
    with pytest.raises(UserError, match="vector_dim=5"):
        embedding_matrix(vocab, kv, dim=300)


# ---------------------------------------------------------------- masking

def test_num_to_mask_rounds_half_up_and_checks_the_ratio():
    assert [num_to_mask(n, 1 / 3) for n in (1, 2, 3, 4, 5, 6, 7, 30)] == [
        1, 1, 1, 1, 2, 2, 2, 10]
    assert num_to_mask(3, 0.5) == 2  # halves round up (round(1.5) == 2, round(2.5) == 2)
    assert num_to_mask(5, 0.5) == 3
    assert num_to_mask(4, 0.0) == 1 and num_to_mask(0, 0.5) == 0
    assert num_to_mask(1, 0.1) == 1  # at least one word of a sentence is masked
    with pytest.raises(ValueError, match=r"mask ratio must be in \[0, 1\], got 1.5"):
        num_to_mask(3, 1.5)


def test_mask_positions_count_order_and_errors():
    rng = np.random.default_rng(0)
    is_key = np.array([True, False, False, True, False, False, False, False])
    for _ in range(200):
        pos = mask_positions(8, is_key, 1 / 3, 3.0, rng)
        assert pos.dtype == np.int64 and len(pos) == num_to_mask(8, 1 / 3) == 3
        assert pos.tolist() == sorted(set(pos.tolist())) and 0 <= pos.min() and pos.max() < 8
    assert mask_positions(0, np.zeros(0, bool), 0.5, 3.0, rng).size == 0
    assert mask_positions(1, np.zeros(1, bool), 0.1, 3.0, rng).tolist() == [0]
    assert mask_positions(4, np.zeros(4, bool), 1.0, 3.0, rng).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="key_weight must be positive, got 0"):
        mask_positions(4, np.zeros(4, bool), 0.5, 0, rng)
    with pytest.raises(ValueError, match="is_key has 3 entries for 4 words"):
        mask_positions(4, np.zeros(3, bool), 0.5, 3.0, rng)


def test_key_words_masked_more_often_and_deterministic():
    is_key = np.zeros(12, dtype=bool)
    is_key[[0, 11]] = True
    counts = np.zeros(12)
    rng = np.random.default_rng(1)
    draws = 3000
    for _ in range(draws):
        counts[mask_positions(12, is_key, 1 / 3, 3.0, rng)] += 1
    rate = counts / draws
    favoured, plain = rate[is_key], rate[~is_key]
    # 4 of 12 masked; with weight 3 a key word is picked with rate ~0.6, others ~0.28
    assert favoured.min() > 0.5 and plain.max() < 0.36
    assert favoured.min() > 1.5 * plain.max()
    counts[:] = 0  # weight 1: no preference
    for _ in range(draws):
        counts[mask_positions(12, is_key, 1 / 3, 1.0, rng)] += 1
    assert np.abs(counts / draws - 4 / 12).max() < 0.05
    a = mask_positions(12, is_key, 1 / 3, 3.0, np.random.default_rng(7))
    b = mask_positions(12, is_key, 1 / 3, 3.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    others = {tuple(mask_positions(12, is_key, 1 / 3, 3.0, np.random.default_rng(s)))
              for s in range(8, 20)}
    assert len(others) > 1  # the draw depends on the generator state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=40), st.floats(0.0, 1.0),
       st.floats(1.0, 10.0), st.integers(0, 2**32 - 1))
def test_masking_properties(is_key, ratio, key_weight, seed):
    n = len(is_key)
    pos = mask_positions(n, np.array(is_key, dtype=bool), ratio, key_weight,
                         np.random.default_rng(seed))
    assert len(pos) == num_to_mask(n, ratio) and len(set(pos.tolist())) == len(pos)
    assert pos.tolist() == sorted(pos.tolist()) and all(0 <= i < n for i in pos.tolist())
    again = mask_positions(n, np.array(is_key, dtype=bool), ratio, key_weight,
                           np.random.default_rng(seed))
    np.testing.assert_array_equal(pos, again)


def test_bundle_key_words_are_class_and_key_words_without_stop_words(tiny_cfg):
    """What training masks preferentially: the words of the class name and of the key
    description, never a stop word ("and" of CleanAndJerk)."""
    from mllm4wtal.text.bundle import build_text_bundle
    from mllm4wtal.text.store import build_store
    from mllm4wtal.text.vocab import is_stopword

    ds = tiny_dataset(5)
    bundle = build_text_bundle(tiny_cfg, ds)
    records = build_store(ds)
    assert set(bundle.complete) == {v.name for v in ds.train}
    n_key = 0
    for (video, cls), rec in sorted(records.items()):
        sentences = bundle.complete[video]
        labels = [c for (v, c) in sorted(records) if v == video]
        s = sentences[labels.index(cls)]
        words = bundle.vocab.decode(s.ids)
        assert len(words) == len(s.is_key) and not {PAD, START, MASK} & set(s.ids.tolist())
        allowed = {t for t in tokenize(humanize(cls)) + tokenize(rec.key) if not is_stopword(t)}
        for word, key in zip(words, s.is_key.tolist(), strict=True):
            assert key == (word in allowed), (video, cls, word)
            n_key += key
        if cls == "CleanAndJerk":
            assert "and" in words and "jerk" in words
            assert not s.is_key[words.index("and")] and s.is_key[words.index("jerk")]
    assert n_key > 0
