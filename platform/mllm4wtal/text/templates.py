"""The ``template`` backend: label-text descriptions, no MLLM.

Boosting-WTAL builds its descriptions from the label with prompt templates ("a video of the
[CLS]", its Table 7); MLLM4WTAL replaces them by MLLM answers to P_key / P_complete
(eq. 1, 11). This backend stands in for the MLLM: a one-sentence *key* description and a
2-4 sentence *complete* description that walks through the phases of the action. Where
the dataset has a vocabulary for the class (``{"verbs", "objects", "subactions"}``) the
sentences use it, so descriptions differ between classes beyond the class name and the
complete description names the sub-actions CSR should recover.

The wording is chosen per (video, class) by a generator seeded with a sha256 of both, so it
is the same in every process (Python's ``hash`` of a string is salted per process).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from mllm4wtal.text.prompts import humanize

# key descriptions; {g}: gerund of a verb, {s}: its third person, {obj}: an object
KEY_PLAIN = (
    "a video of the {name}.",
    "a video of a person doing {name}.",
    "a video of action {name}.",
    "a person performs {name}.",
)
KEY_VOCAB = (
    "a video of a person {g} the {obj} in {name}.",
    "a person {s} the {obj}, performing {name}.",
    "a video of the {name}: a person {g} the {obj}.",
    "someone is {g} the {obj} during {name}.",
)
KEY_VERB = (
    "a video of a person {g} in {name}.",
    "a person {s} during {name}.",
)
INTRO = (
    "this video shows a person performing {name}.",
    "a video of a person doing {name}.",
    "the video contains the action of {name}.",
)
INTRO_OBJ = (
    "this video shows a person performing {name} with the {obj}.",
    "a person does {name} with the {obj} in this video.",
)
# phases of the action: first, middle (repeatable), last
FIRST = (
    "the action begins with the {sub}, as the person {s} the {obj}.",
    "first comes the {sub}.",
    "it starts with the {sub}.",
)
MIDDLE = (
    "then the person moves into the {sub} and {s} the {obj}.",
    "next comes the {sub}, the core of the {name}.",
    "then follows the {sub}.",
)
LAST = (
    "finally the {sub} ends the {name}.",
    "the action ends with the {sub}.",
    "it finishes with the {sub}.",
)
NO_PHASES = (
    "the person {s} the {obj} from start to finish.",
    "throughout the action the person keeps {g} the {obj}.",
)
NO_PHASES_VERB = (
    "the person keeps {g} from start to finish.",
    "throughout the action the person {s} again and again.",
)
NO_VOCAB_BODY = (
    "the person gets ready, carries out the {name} and then stops.",
    "the {name} starts, goes on for a while and then ends.",
)

_VOWELS = "aeiou"


def stable_seed(*parts: str) -> int:
    """A 64-bit seed from strings, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _single_syllable_cvc(word: str) -> bool:
    # run -> running, grip -> gripping; but deliver -> delivering, clear -> clearing
    if len(word) < 3 or word[-1] in _VOWELS + "wxy" or word[-2] not in _VOWELS:
        return False
    if word[-3] in _VOWELS:
        return False
    return len(re.findall(r"[aeiou]+", word)) == 1


def gerund(verb: str) -> str:
    """'run' -> 'running', 'dive' -> 'diving', 'tie' -> 'tying' (first word of a phrase)."""
    head, _, rest = verb.strip().partition(" ")
    w = head.lower()
    if w.endswith("ie"):
        g = w[:-2] + "ying"
    elif w.endswith("e") and not w.endswith(("ee", "ye", "oe")) and len(w) > 2:
        g = w[:-1] + "ing"
    elif _single_syllable_cvc(w):
        g = w + w[-1] + "ing"
    else:
        g = w + "ing"
    return f"{g} {rest}".strip()


def third_person(verb: str) -> str:
    """'pitch' -> 'pitches', 'carry' -> 'carries', 'dive' -> 'dives' (first word)."""
    head, _, rest = verb.strip().partition(" ")
    w = head.lower()
    if w.endswith(("s", "sh", "ch", "x", "z", "o")):
        s = w + "es"
    elif w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        s = w[:-1] + "ies"
    else:
        s = w + "s"
    return f"{s} {rest}".strip()


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _words(vocab: Mapping[str, Sequence[str]] | None, key: str) -> list[str]:
    return [str(w).strip() for w in (vocab or {}).get(key, []) or [] if str(w).strip()]


def template_descriptions(video: str, cls: str,
                          vocab: Mapping[str, Sequence[str]] | None = None) -> tuple[str, str]:
    """(key, complete) description of class ``cls`` in ``video``; deterministic.

    key: one sentence; complete: an introduction and up to three phase sentences (the first,
    middle and last sub-actions when the vocabulary lists them), 2-4 sentences in all.
    """
    rng = np.random.default_rng(stable_seed(video, cls))
    name = humanize(cls)
    verbs, objs = _words(vocab, "verbs"), _words(vocab, "objects")
    subs = [s.replace("-", " ") for s in _words(vocab, "subactions")]

    def fill(form: str, sub: str = "") -> str:
        verb = _pick(rng, verbs) if verbs else "perform"
        obj = _pick(rng, objs) if objs else name
        return form.format(name=name, g=gerund(verb), s=third_person(verb), obj=obj, sub=sub)

    key = fill(_pick(rng, (KEY_VOCAB if objs else KEY_VERB) if verbs else KEY_PLAIN))

    parts = [fill(_pick(rng, INTRO_OBJ if objs else INTRO))]
    if len(subs) == 1:
        parts.append(fill(_pick(rng, MIDDLE[1:]), subs[0]))
    elif subs:
        first, *middle, last = subs
        plain = not (verbs and objs)  # phase forms naming a verb and an object need both
        parts.append(fill(_pick(rng, FIRST[plain:]), first))
        if middle:  # one middle phase keeps the description at four sentences
            parts.append(fill(_pick(rng, MIDDLE[plain:]), _pick(rng, middle)))
        parts.append(fill(_pick(rng, LAST), last))
    elif verbs:
        parts.append(fill(_pick(rng, NO_PHASES if objs else NO_PHASES_VERB)))
    else:
        parts.append(fill(_pick(rng, NO_VOCAB_BODY)))
    return key, " ".join(parts)
