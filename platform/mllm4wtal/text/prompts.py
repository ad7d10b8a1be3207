"""The MLLM prompts of MLLM4WTAL, verbatim.

``P_KEY`` asks for the key description D_key = Phi_MLLM(P_key, V) (eq. 1), which builds the
KSM class queries (eq. 4-5); ``P_COMPLETE`` asks for the complete description
D_complete = Phi_MLLM(P_complete, V) (eq. 11), which CSR masks and reconstructs (eq. 14-17).
The class name is put into the prompt in plain words ("PoleVault" -> "pole vault").
"""

from __future__ import annotations

import re

P_KEY = ("This video contains the actions of {cls}. "
         "Please describe the action of {cls} with one sentence.")
P_COMPLETE = ("This video contains the actions of {cls}. "
              "Please describe the action of {cls} in detail.")
PROMPTS: dict[str, str] = {"key": P_KEY, "complete": P_COMPLETE}

# camelCase boundaries: "PoleVault" -> "Pole Vault", "BMXRacing" -> "BMX Racing"
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def humanize(cls: str) -> str:
    """A class name in plain lower-case words.

    'CleanAndJerk' -> 'clean and jerk', 'Playing_guitar' -> 'playing guitar',
    'Rock-paper-scissors' -> 'rock paper scissors'.
    """
    words = _CAMEL.sub(" ", re.sub(r"[_\-]+", " ", cls))
    return " ".join(words.lower().split())


def format_prompt(kind: str, cls: str) -> str:
    """The prompt of ``kind`` ('key', eq. 1, or 'complete', eq. 11) for class ``cls``."""
    if kind not in PROMPTS:
        raise ValueError(f"prompt kind must be 'key' or 'complete', got {kind!r}")
    return PROMPTS[kind].format(cls=humanize(cls))
