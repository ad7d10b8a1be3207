"""Backends of ``mllm4wtal describe``: where the key and complete descriptions come from.

- ``template``: no model; the label-text sentences of ``mllm4wtal.text.templates``.
- ``hf``: a Hugging Face video-language model in a local directory (``transformers``).
- ``openai``: an OpenAI-compatible chat-completions server that accepts images (vLLM,
  SGLang, ...); frames are sent as base64 JPEG images.
- ``package.module:Class``: a backend of your own (a subclass of :class:`Backend` whose
  constructor takes ``(spec, vocabulary)``).

A backend is built from a :class:`BackendSpec` (plain data: it travels to Ray actors) in the
process that runs it, once: one model per process or actor. The ``hf`` and ``openai``
extras (``transformers``, ``av``) are imported only when such a backend is built.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mllm4wtal.describe.backends.frames import Frames
from mllm4wtal.errors import UserError
from mllm4wtal.text.prompts import format_prompt

KINDS = ("key", "complete")
BUILTIN: dict[str, str] = {
    "template": "mllm4wtal.describe.backends.template:TemplateBackend",
    "hf": "mllm4wtal.describe.backends.hf:HFBackend",
    "openai": "mllm4wtal.describe.backends.openai:OpenAIBackend",
}


class FatalBackendError(UserError):
    """An error every further video would repeat (wrong key, model or URL): the job stops
    instead of noting the video as failed and going on."""


@dataclass(frozen=True)
class BackendSpec:
    """Which backend, which model, and its options (all picklable)."""

    name: str
    model: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value


@dataclass
class Query:
    """One prompt about one video, to be answered by the model."""

    video: str
    cls: str
    kind: str  # "key" (P_key, eq. 1) or "complete" (P_complete, eq. 11)
    prompt: str
    frames: Frames | None


@dataclass
class Answer:
    text: str
    finish: str = ""  # "stop", "length" (cut at the token limit) or "" (unknown)
    tokens: int | None = None  # tokens generated, where known


@dataclass
class PairAnswer:
    """The two answers about one labelled class of one video."""

    cls: str
    key: Answer
    complete: Answer
    prompt: dict[str, str]


class Backend(ABC):
    """Answers P_key and P_complete about a video's frames.

    Subclasses implement :meth:`answer` (a batch of queries -> one answer each, same order)
    or, if they need no frames, override :meth:`describe`. ``model`` is what records name.
    """

    name: ClassVar[str] = ""
    needs_frames: ClassVar[bool] = True
    # whether answer() may run in several threads at once (a remote server: yes; a model
    # on a GPU: no, one generate at a time while the next video is decoded)
    thread_safe: ClassVar[bool] = False

    def __init__(self, spec: BackendSpec, vocabulary: Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        self.model = spec.model
        self.vocabulary = dict(vocabulary or {})
        self.batch_size = int(spec.option("batch_size", 8))
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")

    @abstractmethod
    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        """One answer per query, in order."""

    def describe(self, video: str, classes: Sequence[str],
                 frames: Frames | None) -> list[PairAnswer]:
        """Key and complete descriptions of each class of ``video``, batched."""
        queries = [Query(video, c, kind, format_prompt(kind, c), frames)
                   for c in classes for kind in KINDS]
        answers: list[Answer] = []
        for i in range(0, len(queries), self.batch_size):
            batch = queries[i:i + self.batch_size]
            got = self.answer(batch)
            if len(got) != len(batch):
                raise RuntimeError(f"backend {self.name!r} gave {len(got)} answers to "
                                   f"{len(batch)} queries")
            answers.extend(got)
        out = []
        for j, c in enumerate(classes):
            q_key, q_complete = queries[2 * j], queries[2 * j + 1]
            out.append(PairAnswer(cls=c, key=answers[2 * j], complete=answers[2 * j + 1],
                                  prompt={"key": q_key.prompt, "complete": q_complete.prompt}))
        return out

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release the model / connections (optional)."""


def backend_class(name: str) -> type[Backend]:
    """The class of a built-in backend name or of a ``package.module:Class`` path."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise UserError(f"unknown backend {name!r}; choose {', '.join(BUILTIN)} or give "
                        "package.module:Class of your own Backend subclass")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        if name in BUILTIN:
            raise UserError(f"backend {name!r} needs the optional dependencies: "
                            f"pip install 'mllm4wtal[mllm]' ({e})") from None
        raise UserError(f"backend {name!r}: cannot import {attr} from {module} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UserError(f"backend {name!r} is not a subclass of "
                        "mllm4wtal.describe.backends.Backend")
    return cls


def make_backend(spec: BackendSpec, vocabulary: Mapping[str, Any] | None = None) -> Backend:
    """Build (load) the backend ``spec`` names; errors a user can fix are UserError."""
    return backend_class(spec.name)(spec, vocabulary)


__all__ = ["Answer", "Backend", "BackendSpec", "BUILTIN", "FatalBackendError", "KINDS",
           "PairAnswer", "Query",
           "backend_class", "make_backend"]
