"""``--resume`` trusts nothing it did not write: HMAC-SHA256 signatures of the files Ray
Tune unpickles when it restores an experiment.

Ray 2.60's ``Tuner.restore`` + ``fit`` unpickle, from the experiment folder: ``tuner.pkl``
(``pickle.loads``); the newest ``experiment_state-*.json`` (``cloudpickle`` blobs inside the
JSON, read twice: ``ExperimentAnalysis`` and ``TuneController.resume``); the newest
``searcher-state-*.pkl``, ``search_gen_state-*.json`` and ``callback-states-*.pkl``
(``cloudpickle.load``, after Tune copies the folder's top-level ``*.json``/``*.pkl`` to its
staging folder); and a trial's ``error.pkl`` when the result grid is built for a trial that
is not TERMINATED. :data:`STATE_PATTERNS` and :data:`TRIAL_PATTERNS` name them all.

Signing. The key lives outside the experiment folder (:func:`key_path`; 0600, created on
a sweep's first start). ``tuner.pkl`` is signed right after ``tune.Tuner`` writes it, from
the bytes the Tuner's own state pickles to, never from what the (maybe shared) storage
holds (:func:`sign_tuner`). The other files are signed by :class:`SigningCallback` in the
moment Tune has written them to its private local staging folder and before it uploads
them to the storage: the signatures (:data:`SIGNATURES`, each file's last
:data:`HISTORY` versions) reach the storage before the files do, so a driver killed at any
moment leaves files whose signature is already there. A file cut short by a crash does
not verify, and is refused like a changed one.

Verifying (:func:`verify`) happens before anything is unpickled: any file the restore
would read (:func:`loaded_files`) whose signature is missing or wrong refuses the resume
with one line. What remains: a file swapped in the seconds between this check and Ray's
read of it (the check cannot hand Ray the bytes it checked).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import cloudpickle
from ray.tune import Callback

from mllm4wtal import files
from mllm4wtal.errors import UserError
from mllm4wtal.ray_session import check_ray_version

logger = logging.getLogger(__name__)

#: the environment variable naming the key file (a cluster whose resuming user differs)
KEY_ENV = "MLLM4WTAL_RESUME_KEY_FILE"
#: the signatures, in the experiment folder (neither .json nor .pkl: Tune leaves it alone)
SIGNATURES = "resume.sig"
TUNER_PKL = "tuner.pkl"
EXPERIMENT_STATE = "experiment_state-*.json"
#: what a restore unpickles from the experiment folder's top level
STATE_PATTERNS = (TUNER_PKL, EXPERIMENT_STATE, "searcher-state-*.pkl", "search_gen_state-*.json",
                  "callback-states-*.pkl", "basic-variant-state-*.json")
#: ... and from each trial's folder
TRIAL_PATTERNS = ("error.pkl",)
#: signatures kept per file: Tune may skip uploads while a slow one runs, so the storage
#: can hold an older version than the last one signed
HISTORY = 32
_FORMAT = 1
_DOMAIN = b"mllm4wtal resume signature v1\0"
_CHUNK = 1 << 20


class TrustError(UserError):
    """``--resume`` refused: a file Ray would unpickle is not signed by this user's key."""


def key_path() -> Path:
    """``$MLLM4WTAL_RESUME_KEY_FILE``, else ``$XDG_CONFIG_HOME/mllm4wtal/resume.key``
    (``~/.config/...`` without ``XDG_CONFIG_HOME``)."""
    named = os.environ.get(KEY_ENV)
    if named:
        return Path(named).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / \
        "mllm4wtal" / "resume.key"


def _open_fix(path: Path) -> str:
    if os.environ.get(KEY_ENV):
        return f"point {KEY_ENV} (now {path}) at the key file the sweep was started with"
    return (f"resume as the user who started the sweep, or set {KEY_ENV} to the key file it "
            "was started with")


def load_key(create: bool = False) -> bytes:
    """The signing key; with ``create`` a missing one is made (32 random bytes, 0600, in a
    0700 folder). A key other users could write (or anyone read) is refused."""
    path = key_path()
    if create and not path.exists():
        _create_key(path)
    try:
        st = path.stat()
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise TrustError(f"no resume key at {path}: the sweep was signed with a key this "
                         f"user does not have; {_open_fix(path)}") from None
    except OSError as e:
        raise TrustError(f"cannot read the resume key {path}: {e.strerror}; "
                         f"{_open_fix(path)}") from None
    if st.st_mode & 0o026:
        raise TrustError(f"the resume key {path} can be written by other users or read by "
                         f"anyone (mode {st.st_mode & 0o777:o}); `chmod 600 {path}`")
    if len(key) < 32:
        raise TrustError(f"the resume key {path} is too short ({len(key)} bytes, 32 or more "
                         "needed); delete it to get a new one (sweeps signed with it can then "
                         "no longer be resumed)")
    return key


def _create_key(path: Path) -> None:
    with files.writing(path, KEY_ENV):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # whole or absent; a concurrent start keeps the first key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()


def key_problem() -> str | None:
    """What stops a new sweep from signing (for ``--check``); None when the key is fine or
    can be created. Creates nothing."""
    path = key_path()
    try:
        if path.exists():
            load_key()
        else:
            files.check_writable(path, KEY_ENV)
    except UserError as e:
        return str(e)
    return None


def key_id(key: bytes) -> str:
    """A public name of the key: which key signed a sweep, without revealing it."""
    return hmac.new(key, b"mllm4wtal key id", hashlib.sha256).hexdigest()[:16]


def signature(key: bytes, rel: str, chunks: Any) -> str:
    """HMAC-SHA256 of a file's relative path and content (``chunks``: bytes pieces)."""
    mac = hmac.new(key, _DOMAIN + rel.encode() + b"\0", hashlib.sha256)
    for chunk in chunks:
        mac.update(chunk)
    return mac.hexdigest()


def _read_chunks(path: Path) -> Any:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def state_file(rel: str) -> bool:
    """Whether a restore may unpickle the file at ``rel`` (relative to the experiment)."""
    parts = rel.split("/")
    patterns = STATE_PATTERNS if len(parts) == 1 else TRIAL_PATTERNS if len(parts) == 2 \
        else ()
    return any(fnmatch.fnmatchcase(parts[-1], p) for p in patterns)


class Store:
    """An experiment folder on the local disk or remote storage (a pyarrow filesystem)."""

    def __init__(self, experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.where = experiment_dir.rstrip("/")
        if filesystem is not None:
            self.fs, self.root = filesystem, self.where.split("://", 1)[-1]
        elif "://" in experiment_dir:
            self.fs, self.root = pafs.FileSystem.from_uri(self.where)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.where).resolve())

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def show(self, rel: str) -> str:
        return f"{self.where}/{rel}"

    def state_files(self) -> list[str]:
        """The files a restore may unpickle, relative to the experiment folder."""
        top = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        out = [i.base_name for i in top if i.type == pafs.FileType.File
               and state_file(i.base_name)]
        dirs = [i.base_name for i in top if i.type == pafs.FileType.Directory]
        inner = [f"{d}/{p}" for d in dirs for p in TRIAL_PATTERNS]
        for info in self.fs.get_file_info([self.path(rel) for rel in inner]) if inner else []:
            if info.type == pafs.FileType.File:
                out.append(info.path[len(self.root) + 1:])
        return sorted(out)

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as fh:
            return fh.read()

    def write(self, rel: str, data: bytes) -> None:
        """``data`` at ``rel``, whole or not at all."""
        if self.local:
            target = Path(self.path(rel))
            with files.replacing(target, force=True, fix="--storage") as tmp:
                tmp.write_bytes(data)
            return
        with self.fs.open_output_stream(self.path(rel)) as fh:  # an object PUT is whole
            fh.write(data)

    def manifest(self) -> dict[str, Any] | None:
        """The signatures file as written, or None when absent or not ours."""
        try:
            doc = json.loads(self.read(SIGNATURES))
        except (FileNotFoundError, ValueError):
            return None
        ok = isinstance(doc, dict) and doc.get("format") == _FORMAT and \
            isinstance(doc.get("key_id"), str) and isinstance(doc.get("files"), dict)
        return doc if ok else None


class Signer:
    """The signatures of one experiment, kept in memory and written whole to the storage."""

    def __init__(self, store: Store, key: bytes | None = None) -> None:
        self.store = store
        self.key = key if key is not None else load_key(create=True)
        self.key_id = key_id(self.key)
        old = store.manifest()
        self.files: dict[str, list[str]] = {}
        if old is not None and old["key_id"] == self.key_id:
            self.files = {k: [s for s in v if isinstance(s, str)][:HISTORY]
                          for k, v in old["files"].items() if isinstance(v, list)}
        self._seen: dict[str, tuple[int, int]] = {}  # rel -> (mtime_ns, size) signed

    def add(self, rel: str, sig: str) -> bool:
        """Record ``sig`` as the newest version of ``rel``; whether anything changed."""
        history = self.files.setdefault(rel, [])
        if history and history[0] == sig:
            return False
        self.files[rel] = [sig, *(s for s in history if s != sig)][:HISTORY]
        return True

    def sign_local(self, folder: Path, rels: list[str]) -> bool:
        """Sign the files ``rels`` of ``folder`` (a private local copy of the experiment:
        Tune's staging folder) that changed since they were last signed."""
        changed = False
        for rel in rels:
            p = folder / rel
            try:
                st = p.stat()
                seen = (st.st_mtime_ns, st.st_size)
                if self._seen.get(rel) == seen:
                    continue
                sig = signature(self.key, rel, _read_chunks(p))
            except FileNotFoundError:  # replaced under us: the next snapshot signs it
                continue
            self._seen[rel] = seen
            changed |= self.add(rel, sig)
        return changed

    def save(self) -> None:
        doc = {"format": _FORMAT, "key_id": self.key_id, "files": self.files}
        self.store.write(SIGNATURES, json.dumps(doc, indent=0, sort_keys=True).encode())


def sign_tuner(tuner: Any, experiment_dir: str, filesystem: pafs.FileSystem | None = None
               ) -> None:
    """Sign the ``tuner.pkl`` a new ``tune.Tuner`` just wrote, from the bytes its state
    pickles to (what Ray wrote): content someone put there meanwhile is not what gets
    signed, it is replaced by those bytes."""
    check_ray_version()  # the Tuner's private ``_local_tuner`` and its pickled form
    signer = Signer(Store(experiment_dir, filesystem))
    local = getattr(tuner, "_local_tuner", None)
    stored = signer.store.read(TUNER_PKL)
    ours = cloudpickle.dumps(local.__getstate__()) if local is not None else stored
    signer.add(TUNER_PKL, signature(signer.key, TUNER_PKL, [ours]))
    signer.save()  # the signature first, then (rarely) the file: never a window unsigned
    if ours != stored:
        logger.warning("%s changed between Ray writing it and its signature; rewritten",
                       signer.store.show(TUNER_PKL))
        signer.store.write(TUNER_PKL, ours)


class SigningCallback(Callback):
    """Signs the files Tune's experiment snapshot writes, each time it writes them.

    Tune calls the callbacks' ``get_state`` after it has written ``experiment_state-*``
    and the searcher's files to its local staging folder, and before it uploads that
    folder to the storage: the signatures are computed there, from Tune's own bytes, and
    written to the storage first. Returns None: no callback state file of its own. Only the
    files of this driver's session are signed (older ones, copied down from the storage
    on a resume, keep the signatures they had). Holds no key in its pickled form (it lives
    in ``tuner.pkl``)."""

    def __init__(self) -> None:
        self._trials: list | None = None
        self._signer: Signer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials  # Tune's own list: the trials added later in the step too

    def get_state(self) -> dict | None:
        if self._trials:
            self.sign(self._trials[0].storage)
        return None

    def sign(self, storage: Any) -> None:
        """Sign this session's files in ``storage``'s staging folder (a Ray
        ``StorageContext``) and write the signatures to its experiment folder."""
        staging = Path(storage.experiment_driver_staging_path)
        if self._signer is None:
            self._signer = Signer(Store(storage.experiment_fs_path, storage.storage_filesystem))
        if self._signer.sign_local(staging, session_files(staging)):
            self._signer.save()


def session_files(staging: Path) -> list[str]:
    """The files of Tune's staging folder to sign: the top-level state files of the newest
    session (their names end in the session's timestamp) and the trials' error files."""
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return []
    top = [e.name for e in entries if e.is_file() and state_file(e.name)]
    states = [n for n in top if fnmatch.fnmatchcase(n, EXPERIMENT_STATE)]
    session = max(states)[len("experiment_state-"):-len(".json")] if states else None
    out = [n for n in top if session is not None and n.rsplit(".", 1)[0].endswith(session)]
    out += [f"{e.name}/{p}" for e in entries if e.is_dir() for p in TRIAL_PATTERNS
            if os.path.isfile(os.path.join(e.path, p))]
    return out


def loaded_files(present: list[str]) -> list[str]:
    """Of the state files ``present``, those a restore reads: ``tuner.pkl``, the newest
    (greatest name, as Ray picks) of each other top-level pattern, every trial's error file.
    An older session's file is never read, so one cut short by a crash does no harm."""
    top = [rel for rel in present if "/" not in rel]
    newest = [max(names) for p in STATE_PATTERNS[1:]
              if (names := [rel for rel in top if fnmatch.fnmatchcase(rel, p)])]
    return sorted({*newest, *(r for r in present if "/" in r or r == TUNER_PKL)})


def verify(experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> bool:
    """Check every file a restore of ``experiment_dir`` would unpickle against its
    signature; :class:`TrustError` names the first that fails. Returns whether there is
    Tune state to restore (False: the sweep stopped before Tune saved any, so it starts
    afresh and nothing is unpickled)."""
    store = Store(experiment_dir, filesystem)
    present = store.state_files()
    if not any(fnmatch.fnmatchcase(rel, EXPERIMENT_STATE) for rel in present) or \
            TUNER_PKL not in present:
        return False
    key = load_key()
    doc = store.manifest()
    refuse = ("--resume unpickles it, so nothing was resumed: start the sweep again "
              "under another name (key `name:`) or storage (--storage)")
    if doc is None:
        raise TrustError(f"{store.show(SIGNATURES)} is missing or unreadable, so Ray's state "
                         f"in {store.where} ({TUNER_PKL}, ...) cannot be shown to be the one "
                         f"mllm4wtal wrote; {refuse}")
    if doc["key_id"] != key_id(key):
        raise TrustError(f"{store.show(SIGNATURES)}: the sweep was signed with another key "
                         f"(id {doc['key_id']}) than {key_path()} (id {key_id(key)}); "
                         f"{_open_fix(key_path())}")
    for rel in loaded_files(present):
        allowed = doc["files"].get(rel)
        sig = signature(key, rel, [store.read(rel)])
        if not isinstance(allowed, list) or sig not in allowed:
            raise TrustError(f"{store.show(rel)} is not the file mllm4wtal wrote (changed or "
                             f"added by someone else, or cut short by a crash); {refuse}")
    return True


__all__ = ["HISTORY", "KEY_ENV", "SIGNATURES", "STATE_PATTERNS", "TRIAL_PATTERNS",
           "Signer", "SigningCallback", "Store", "TrustError", "key_id", "key_path",
           "key_problem", "load_key", "loaded_files", "sign_tuner", "signature", "state_file",
           "verify"]
