"""The description store: JSONL, one record per (video, class).

A record holds the MLLM answers to the two prompts of MLLM4WTAL for one labelled class of
one training video: ``key`` (D_key, eq. 1) and ``complete`` (D_complete, eq. 11), plus
``video``, ``class``, ``backend``, ``model`` and ``prompt``. Any other field (e.g.
``frames_hash``, ``seconds``) is kept as it is. When a pair occurs more than once, the
last record wins, so re-describing a pair is an append.

Records are appended one line at a time (one write, flush, fsync), so a crash loses at most
the line being written. A truncated last line is reported with the way out
(``repair_store`` moves it to ``<path>.corrupt-<n>`` and keeps the good lines); it is never
dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm4wtal.data.types import WTALDataset
from mllm4wtal.errors import UserError
from mllm4wtal.text.prompts import format_prompt
from mllm4wtal.text.templates import template_descriptions

FIELDS = ("video", "class", "key", "complete", "backend", "model", "prompt")
REQUIRED = FIELDS[:4]
# records of descriptions produced elsewhere (backend `file`) may omit these
OPTIONAL_DEFAULTS: dict[str, Any] = {"backend": "file", "model": "", "prompt": {}}
BACKENDS = ("template",)  # built here; `file` and `hf` stores are written by `describe`
_SHOWN = 5
_FIX_LINE = "fix or delete that record (`mllm4wtal describe` writes a deleted pair anew)"

Pair = tuple[str, str]


class StoreError(UserError):
    """A description store that cannot be used as it is; the message says what to do."""


def _prompts(cls: str) -> dict[str, str]:
    return {"key": format_prompt("key", cls), "complete": format_prompt("complete", cls)}


@dataclass
class DescriptionRecord:
    """The descriptions of one labelled class of one video (``cls``: JSON field "class")."""

    video: str
    cls: str
    key: str
    complete: str
    backend: str = "template"
    model: str = ""
    prompt: dict[str, str] | str = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> Pair:
        return (self.video, self.cls)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"video": self.video, "class": self.cls, "key": self.key,
                             "complete": self.complete, "backend": self.backend,
                             "model": self.model, "prompt": self.prompt}
        clash = set(d) & set(self.extra)
        if clash:
            raise ValueError(f"extra fields {sorted(clash)} shadow record fields")
        return {**d, **self.extra}

    def to_json(self) -> str:
        """One line of JSON (no newline inside: ``json.dumps`` escapes them)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "record") -> DescriptionRecord:
        """Validate and convert; ``where`` (e.g. "store.jsonl, line 3") prefixes errors."""
        if not isinstance(d, Mapping):
            raise StoreError(f"{where}: a record is a JSON object, got {type(d).__name__}; "
                             f"{_FIX_LINE}")
        d = {**OPTIONAL_DEFAULTS, **d}
        missing = [k for k in FIELDS if k not in d]
        if missing:
            raise StoreError(f"{where}: record lacks field(s) {', '.join(missing)}; "
                             f"{_FIX_LINE}")
        bad = [k for k in ("video", "class", "key", "complete", "backend", "model")
               if not isinstance(d[k], str)]
        if bad:
            raise StoreError(f"{where}: field(s) {', '.join(bad)} must be strings; {_FIX_LINE}")
        if not isinstance(d["prompt"], str | dict):
            raise StoreError(f"{where}: field prompt must be a string or an object; "
                             f"{_FIX_LINE}")
        empty = [k for k in ("video", "class") if not d[k].strip()]
        if empty:
            raise StoreError(f"{where}: field(s) {', '.join(empty)} are empty; {_FIX_LINE}")
        return cls(video=d["video"], cls=d["class"], key=d["key"], complete=d["complete"],
                   backend=d["backend"], model=d["model"], prompt=d["prompt"],
                   extra={k: v for k, v in d.items() if k not in FIELDS})


def _repair_hint(p: Path) -> str:
    return (f"run `python -c \"from mllm4wtal.text.store import repair_store; "
            f"repair_store({str(p)!r})\"` to move it to {p.name}.corrupt-<n> and keep the other "
            "lines (then describe the lost pair again)")


def _lines(p: Path) -> list[bytes]:
    """The file's lines (bytes; a last line without newline included)."""
    data = p.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _parse(line: bytes) -> Any:
    # bytes, not text: a crash can cut a multi-byte character in half
    return json.loads(line.decode("utf-8"))


def read_store(path: str | Path) -> dict[Pair, DescriptionRecord]:
    """All records of a JSONL store, by (video, class); the last record of a pair wins.

    Errors name the file and the line: a line that is not JSON, not an object or lacks a
    field. A bad *last* line is reported as truncated, with how to repair it.
    """
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"description store '{p}' is a directory; text.store names the JSONL "
                         "file `mllm4wtal describe` wrote")
    if not p.is_file():
        raise StoreError(f"description store '{p}' does not exist; write one with "
                         "`mllm4wtal describe`, or use text.backend=template")
    try:
        lines = _lines(p)
    except OSError as e:
        raise StoreError(f"description store '{p}' cannot be read ({e.strerror}); check its "
                         "permissions") from None
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    out: dict[Pair, DescriptionRecord] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = _parse(line)
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
            if i == last:
                raise StoreError(f"{p}: line {i + 1} (the last) is truncated or corrupt, "
                                 f"likely a crash while it was written; "
                                 f"{_repair_hint(p)}") from None
            raise StoreError(f"{p}: line {i + 1} is not valid JSON "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); fix "
                             "or delete that line") from None
        rec = DescriptionRecord.from_dict(d, where=f"{p}: line {i + 1}")
        out[rec.pair] = rec
    return out


def tail_is_corrupt(path: str | Path) -> bool:
    """Whether the last non-empty line of a store is not valid JSON (a crash mid-write)."""
    p = Path(path)
    if not p.is_file():
        return False
    lines = [ln for ln in _lines(p) if ln.strip()]
    if not lines:
        return False
    try:
        _parse(lines[-1])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


def repair_store(path: str | Path) -> Path | None:
    """Move a corrupt last line to ``<path>.corrupt-<n>`` and keep the good lines.

    Returns the path of the file the bad line went to, or None when the last line was good
    (a missing final newline is added). A bad line elsewhere is not a crash artefact and is
    left for a person to look at: StoreError.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"description store '{p}' does not exist")
    lines = _lines(p)
    while lines and not lines[-1].strip():
        lines.pop()
    bad_tail: bytes | None = None
    if lines:
        try:
            _parse(lines[-1])
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad_tail = lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            _parse(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StoreError(f"{p}: line {i + 1} is not valid JSON and is not the last line; "
                             "repair_store only handles a truncated last line: fix or delete "
                             "that line by hand") from None
    moved: Path | None = None
    if bad_tail is not None:
        n = 1
        while p.with_name(f"{p.name}.corrupt-{n}").exists():
            n += 1
        moved = p.with_name(f"{p.name}.corrupt-{n}")
        with open(moved, "xb") as fh:  # "x": never overwrite an earlier repair
            fh.write(bad_tail + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    _write_atomic(p, b"".join(ln + b"\n" for ln in lines))
    return moved


def _write_atomic(p: Path, data: bytes) -> None:
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def append_record(path: str | Path, record: DescriptionRecord) -> None:
    """Append one record as one line: a single write, then flush and fsync.

    Refuses to append after a truncated last line (the new record would be glued to it):
    StoreError naming ``repair_store``. One writer per store at a time.
    """
    p = Path(path)
    line = (record.to_json() + "\n").encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "ab") as fh:
        if fh.tell() > 0:
            with open(p, "rb") as rd:
                rd.seek(-1, os.SEEK_END)
                ends_with_newline = rd.read(1) == b"\n"
            if not ends_with_newline:
                raise StoreError(f"{p}: the last line has no end (a crash while it was "
                                 f"written?); {_repair_hint(p)}")
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def needed_pairs(dataset: WTALDataset) -> list[Pair]:
    """(video, class) of every labelled class of every training video, in dataset order."""
    return [(v.name, dataset.classes[c]) for v in dataset.train for c in v.labels]


def template_record(dataset: WTALDataset, video: str, cls: str) -> DescriptionRecord:
    """The template-backend record of one pair (see ``templates``)."""
    key, complete = template_descriptions(video, cls, dataset.vocabulary.get(cls))
    return DescriptionRecord(video=video, cls=cls, key=key, complete=complete,
                             backend="template", model="", prompt=_prompts(cls))


def build_store(dataset: WTALDataset, backend: str = "template",
                path: str | Path | None = None) -> dict[Pair, DescriptionRecord]:
    """One record per (training video, labelled class); written to ``path`` if given.

    Only the ``template`` backend runs here; MLLM backends write their stores through
    ``mllm4wtal describe`` with ``append_record``.
    """
    if backend not in BACKENDS:
        raise StoreError(f"build_store makes {', '.join(BACKENDS)} stores, not {backend!r}; "
                         "MLLM descriptions are written by `mllm4wtal describe`")
    records = {pair: template_record(dataset, *pair) for pair in needed_pairs(dataset)}
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(p, "".join(r.to_json() + "\n" for r in records.values()).encode())
    return records


def descriptions_for(dataset: WTALDataset,
                     store: Mapping[Pair, DescriptionRecord] | None,
                     fallback_to_template: bool, source: str | Path = "description store"
                     ) -> dict[Pair, DescriptionRecord]:
    """The record of every needed (video, class) pair.

    ``store`` None means no store: every pair comes from the template (with
    ``fallback_to_template``) or is missing. Missing pairs are an error naming the first few
    and their count, unless ``fallback_to_template``, which fills them with templates.
    Records of other pairs (test videos, unknown classes) are ignored.
    """
    have = store or {}
    out: dict[Pair, DescriptionRecord] = {}
    missing: list[Pair] = []
    for pair in needed_pairs(dataset):
        if pair in have:
            out[pair] = have[pair]
        elif fallback_to_template:
            out[pair] = template_record(dataset, *pair)
        else:
            missing.append(pair)
    if missing:
        shown = ", ".join(f"({v!r}, {c!r})" for v, c in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise StoreError(f"{source}: {len(missing)} (video, class) pair(s) of the training "
                         f"set have no description: {shown}{more}; describe them "
                         "(`mllm4wtal describe`) or set text.fallback_to_template=true")
    return out
