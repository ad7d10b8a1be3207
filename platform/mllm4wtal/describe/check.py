"""``mllm4wtal describe --check``: the quality of a description store for a dataset.

Coverage of the training (video, class) pairs, empty and truncated answers, answers that
mention neither the class nor an action verb (words compared by their Porter stems, gensim's
``PorterStemmer``: 'vaults' and 'vaulting' name the class PoleVault), and length statistics.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gensim.parsing.porter import PorterStemmer

from mllm4wtal.data.types import WTALDataset
from mllm4wtal.text.prompts import humanize
from mllm4wtal.text.store import Pair, StoreError, needed_pairs, read_store, tail_is_corrupt
from mllm4wtal.text.templates import gerund, third_person
from mllm4wtal.text.vocab import is_stopword, tokenize

SHOWN = 5  # pairs listed in a line before "and N more"

# common action verbs (base forms); any form of them (by stem) makes the check's "action
# verb" test, together with the dataset's own per-class verbs
ACTION_VERBS = frozenset("""
accelerate aim approach arch balance bat bend block bounce bowl box brush carry catch chase
chop clap clean climb close crawl crouch cut dance deliver dig dive dodge drag draw dribble
drink drive drop dunk eat extend fall fight flip fly fold follow grab grip hammer hang hit
hold hop hurl jog jump jerk kick kneel knock land lean leap lift lower lunge mix move open
paddle paint pass pedal perform pick pitch place plant play pole pour press pull punch push
putt race raise reach release ride roll rotate row run sail saw score serve shake shoot
shovel skate ski skip slam slide smash spike spin sprint squat stand step stir stretch
strike surf swim swing tackle take tap throw tie toss touch turn twist vault wait walk wash
wave whip wipe wrap write yank rise sit stop start begin end finish launch fire kneel hurdle
bowl flick shuffle juggle
""".split())
_TERMINAL = (".", "!", "?", '"', "'", ")", "]", "\u201d", "\u2019", "\u3002")


def _word_stats(counts: Sequence[int]) -> dict[str, float]:
    if not counts:
        return {}
    a = np.asarray(counts, dtype=np.float64)
    return {"min": int(a.min()), "p5": float(np.percentile(a, 5)),
            "median": float(np.median(a)), "mean": round(float(a.mean()), 2),
            "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def _raw_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def check_store(path: str | os.PathLike[str], dataset: WTALDataset) -> dict[str, Any]:
    """Quality of a description store for ``dataset`` (a JSON-able report; see
    ``format_check``). ``report["ok"]``: every pair present and no empty answer."""
    p = Path(path).expanduser()
    if tail_is_corrupt(p):
        raise StoreError(f"{p}: the last line is cut off (a crash while it was written); "
                         "`mllm4wtal describe` with the same --out moves it aside and "
                         "describes its pair again")
    store = read_store(p)
    needed = needed_pairs(dataset)
    need_set = set(needed)
    missing = [pair for pair in needed if pair not in store]
    extra = sorted(pair for pair in store if pair not in need_set)
    lines = _raw_lines(p)

    stemmer = PorterStemmer()

    def stems(tokens: Iterable[str]) -> set[str]:
        return {stemmer.stem(t) for t in tokens}

    def verb_stems(verbs: Iterable[str]) -> set[str]:  # "tie over": tie ties tying tied ...
        heads = [v.split()[0].lower() for v in verbs if v.strip()]
        return stems(f for h in heads for f in (h, gerund(h), third_person(h), h + "ed",
                                                h + "d"))

    class_words = {c: stems(t for t in tokenize(humanize(c)) if not is_stopword(t))
                   for c in dataset.classes}
    generic = verb_stems(ACTION_VERBS)
    empty: dict[str, list[Pair]] = {"key": [], "complete": []}
    truncated: dict[str, list[Pair]] = {"key": [], "complete": []}
    unrelated: dict[str, list[Pair]] = {"key": [], "complete": []}
    no_class: dict[str, list[Pair]] = {"key": [], "complete": []}
    words: dict[str, list[int]] = {"key": [], "complete": []}
    seconds: list[float] = []
    sources: Counter[tuple[str, str]] = Counter()
    for pair in needed:
        rec = store.get(pair)
        if rec is None:
            continue
        sources[(rec.backend, rec.model)] += 1
        if isinstance(rec.extra.get("seconds"), int | float):
            seconds.append(float(rec.extra["seconds"]))
        finish = rec.extra.get("finish") if isinstance(rec.extra.get("finish"), dict) else {}
        verbs = generic | verb_stems(dataset.vocabulary.get(rec.cls, {}).get("verbs", []))
        cwords = class_words.get(rec.cls) or stems(tokenize(humanize(rec.cls)))
        for kind in ("key", "complete"):
            text = getattr(rec, kind).strip()
            toks = tokenize(text)
            words[kind].append(len(toks))
            if not text:
                empty[kind].append(pair)
                continue
            how = str(finish.get(kind, ""))
            if how == "length" or (how != "stop" and not text.endswith(_TERMINAL)):
                truncated[kind].append(pair)
            said = stems(toks)
            names_class = bool(said & cwords)
            if not names_class:
                no_class[kind].append(pair)
            if not names_class and not (said & verbs):
                unrelated[kind].append(pair)

    def pairs(xs: Sequence[Pair]) -> list[list[str]]:
        return [list(x) for x in xs]

    report: dict[str, Any] = {
        "store": str(p), "dataset": dataset.name, "records": len(store), "lines": lines,
        "needed": len(needed), "present": len(needed) - len(missing),
        "missing": pairs(missing), "other_pairs": pairs(extra),
        "sources": [{"backend": b, "model": m, "pairs": n} for (b, m), n in
                    sources.most_common()],
        "empty": {k: pairs(v) for k, v in empty.items()},
        "truncated": {k: pairs(v) for k, v in truncated.items()},
        "no_class_word": {k: pairs(v) for k, v in no_class.items()},
        "unrelated": {k: pairs(v) for k, v in unrelated.items()},
        "words": {k: _word_stats(v) for k, v in words.items()},
        "seconds": ({"total": round(sum(seconds), 2),
                     "mean_per_pair": round(statistics.fmean(seconds), 4)} if seconds else {}),
    }
    report["ok"] = not missing and not empty["key"] and not empty["complete"]
    return report


def shown(names: Sequence[str]) -> str:
    """The first ``SHOWN`` of ``names``, then how many more: 'a, b, c, d, e and 7 more'."""
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _shown(pairs: Sequence[Sequence[str]]) -> str:
    return f": {shown([f'({v}, {c})' for v, c in pairs])}" if pairs else ""


def format_check(report: Mapping[str, Any]) -> str:
    """The report of ``check_store`` as lines for a person."""
    r = report
    dup = r["lines"] - r["records"]
    out = [f"store {r['store']}: {r['records']} record(s)"
           + (f" ({dup} earlier version(s) of re-described pairs)" if dup > 0 else ""),
           f"dataset {r['dataset']}: {r['needed']} training (video, class) pairs"]
    for s in r["sources"]:
        out.append(f"  backend {s['backend']}" + (f", model {s['model']}" if s["model"] else "")
                   + f": {s['pairs']} pair(s)")
    miss = r["missing"]
    out.append(f"coverage: {r['present']} of {r['needed']} pairs"
               + (f"; {len(miss)} missing{_shown(miss)}" if miss else " (complete)"))
    if r["other_pairs"]:
        out.append(f"records of pairs this dataset does not train on (ignored): "
                   f"{len(r['other_pairs'])}{_shown(r['other_pairs'])}")
    for title, key in (("empty answers", "empty"),
                       ("truncated answers (token limit, or cut mid-sentence)", "truncated"),
                       ("answers naming neither the class nor an action verb", "unrelated"),
                       ("answers that never name the class", "no_class_word")):
        k, c = r[key]["key"], r[key]["complete"]
        line = f"{title}: key {len(k)}, complete {len(c)}"
        if k or c:
            line += _shown([*k, *c])
        out.append(line)
    for kind in ("key", "complete"):
        st = r["words"].get(kind) or {}
        if st:
            out.append(f"{kind} length in words: min {st['min']}, median {st['median']:g}, "
                       f"mean {st['mean']:g}, p95 {st['p95']:g}, max {st['max']}")
    if r["seconds"]:
        out.append(f"time: {r['seconds']['mean_per_pair']:.3f} s per pair, "
                   f"{r['seconds']['total'] / 60:.1f} min in all")
    if r["ok"]:
        out.append("verdict: usable for training (text.backend=file text.store=...)")
    elif miss:
        out.append("verdict: training refuses this store (missing pairs) unless "
                   "text.fallback_to_template=true; describe the missing pairs by rerunning "
                   "`mllm4wtal describe` with this --out")
    else:
        out.append("verdict: empty answers; delete those lines and rerun `mllm4wtal "
                   "describe`, or re-describe them")
    return "\n".join(out)
