"""The ``template`` backend: no model, no video; the label-text sentences of
:mod:`mllm4wtal.text.templates` (what training uses when no store is configured).

A store it writes holds exactly the records of ``build_store`` (same key and complete
sentences, same prompts), plus the fields every ``describe`` record has.
"""

from __future__ import annotations

from collections.abc import Sequence

from mllm4wtal.describe.backends import Answer, Backend, PairAnswer, Query
from mllm4wtal.describe.backends.frames import Frames
from mllm4wtal.text.prompts import format_prompt
from mllm4wtal.text.templates import template_descriptions


class TemplateBackend(Backend):
    name = "template"
    needs_frames = False
    thread_safe = True

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        out = []
        for q in queries:
            key, complete = template_descriptions(q.video, q.cls, self.vocabulary.get(q.cls))
            out.append(Answer(key if q.kind == "key" else complete, finish="stop"))
        return out

    def describe(self, video: str, classes: Sequence[str],
                 frames: Frames | None) -> list[PairAnswer]:
        out = []
        for c in classes:
            key, complete = template_descriptions(video, c, self.vocabulary.get(c))
            out.append(PairAnswer(cls=c, key=Answer(key, "stop"), complete=Answer(complete, "stop"),
                                  prompt={k: format_prompt(k, c) for k in ("key", "complete")}))
        return out
