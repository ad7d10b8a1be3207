"""The description store: JSONL, one record per (video, class).

Fields: video, class, key, complete, backend, model, prompt (extra fields are kept).
Records are appended one line at a time (write + flush + fsync), so a crash loses at most
the line being written; a truncated last line is reported, and ``repair_store`` moves it
aside instead of dropping it silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm4wtal.data.types import WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.text.prompts import P_COMPLETE, P_KEY
from mllm4wtal.text.templates import template_descriptions

REQUIRED = ("video", "class", "key", "complete")


class StoreError(UserError):
    """A description store that cannot be used as it is."""


@dataclass
class DescriptionRecord:
    video: str
    cls: str
    key: str
    complete: str
    backend: str = "template"
    model: str = ""
    prompt: dict[str, str] = field(default_factory=lambda: {"key": P_KEY,
                                                            "complete": P_COMPLETE})
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["class"] = d.pop("cls")
        extra = d.pop("extra")
        return json.dumps({**d, **extra}, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DescriptionRecord:
        known = {"video", "class", "key", "complete", "backend", "model", "prompt"}
        return cls(video=str(d["video"]), cls=str(d["class"]), key=str(d["key"]),
                   complete=str(d["complete"]), backend=str(d.get("backend", "")),
                   model=str(d.get("model", "")), prompt=d.get("prompt", {}),
                   extra={k: v for k, v in d.items() if k not in known})


def read_store(path: str | Path) -> dict[tuple[str, str], DescriptionRecord]:
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"description store '{p}' does not exist; build one with "
                         "`mllm4wtal describe` or use --set text.backend=template")
    out: dict[tuple[str, str], DescriptionRecord] = {}
    lines = p.read_text(encoding="utf-8").split("\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                raise StoreError(f"{p}: line {i + 1} is truncated (a crash mid-write?); run "
                                 "mllm4wtal.text.store.repair_store on it to move that line "
                                 "aside and keep the others") from None
            raise StoreError(f"{p}: line {i + 1} is not valid JSON") from None
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise StoreError(f"{p}: line {i + 1} lacks {', '.join(missing)}")
        rec = DescriptionRecord.from_dict(d)
        out[(rec.video, rec.cls)] = rec
    return out


def repair_store(path: str | Path) -> int:
    """Move a truncated last line to ``<path>.corrupt-<n>``; returns lines moved (0 or 1)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    try:
        json.loads(lines[-1])
        return 0
    except json.JSONDecodeError:
        n = 1
        while p.with_name(f"{p.name}.corrupt-{n}").exists():
            n += 1
        p.with_name(f"{p.name}.corrupt-{n}").write_text(lines[-1] + "\n", encoding="utf-8")
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in lines[:-1]), encoding="utf-8")
        os.replace(tmp, p)
        return 1


def append_record(path: str | Path, record: DescriptionRecord) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(record.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def needed_pairs(dataset: WTALDataset) -> list[tuple[str, str]]:
    """(video, class) of every labelled class of every training video."""
    return [(v.name, dataset.classes[c]) for v in dataset.train for c in v.labels]


def template_record(dataset: WTALDataset, video: str, cls: str) -> DescriptionRecord:
    key, complete = template_descriptions(video, cls, dataset.vocabulary.get(cls))
    return DescriptionRecord(video=video, cls=cls, key=key, complete=complete,
                             backend="template", model="")


def build_store(dataset: WTALDataset, path: str | Path | None = None
                ) -> dict[tuple[str, str], DescriptionRecord]:
    """Template descriptions for every needed pair; written to ``path`` if given."""
    records = {pair: template_record(dataset, *pair) for pair in needed_pairs(dataset)}
    if path is not None:
        Path(path).write_text("".join(r.to_json() + "\n" for r in records.values()),
                              encoding="utf-8")
    return records


def descriptions_for(dataset: WTALDataset, store: dict[tuple[str, str], DescriptionRecord],
                     fallback_to_template: bool, source: str = "store"
                     ) -> dict[tuple[str, str], DescriptionRecord]:
    """The record of every needed pair; missing pairs are an error unless the template may
    fill them."""
    out, missing = {}, []
    for pair in needed_pairs(dataset):
        if pair in store:
            out[pair] = store[pair]
        elif fallback_to_template:
            out[pair] = template_record(dataset, *pair)
        else:
            missing.append(pair)
    if missing:
        shown = ", ".join(f"({v}, {c})" for v, c in missing[:5])
        raise StoreError(f"{source}: {len(missing)} (video, class) pairs have no description, "
                         f"e.g. {shown}; complete the store or set "
                         "text.fallback_to_template=true")
    return out
