"""The write policy, in one place: every file or folder a command writes goes through here.

- An existing target is refused unless ``force`` (the commands' ``--force``); an empty
  folder counts as free.
- Content is written under a temporary name in the target's own folder and renamed into
  place (``os.replace``), so a crash leaves the old target or none, never a half-written
  one. A folder that already exists (``force``) gets the new entries one by one; other
  files in it are kept.
- An ``OSError`` (permission, read-only filesystem, name too long, disk full) becomes one
  :class:`WriteError` line naming the path and, for a full disk, the free space.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mllm4wtal.errors import UserError

#: suffix of a file being written; ``last.pt.tmp`` keeps torch's archive name ``last.pt``
TMP_SUFFIX = ".tmp"
_NAME_MAX, _PATH_MAX = 255, 4096  # when the filesystem cannot be asked
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(UserError):
    """A file or folder cannot be written: not writable, name too long, disk full."""


def short_path(path: str | os.PathLike[str], limit: int = 240) -> str:
    """A path for a one-line message: very long ones cut in the middle."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not os.path.exists(p) and p != p.parent:  # False, not an error, for a long name
        p = p.parent
    return p


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(path: str | os.PathLike[str]) -> str:
    """``'1.2 MiB free of 30.0 MiB'`` on the filesystem holding ``path``."""
    try:
        usage = shutil.disk_usage(_existing_ancestor(Path(path)))
    except OSError:
        return "free space unknown"
    return f"{_human(usage.free)} free of {_human(usage.total)}"


def _limits(path: Path) -> tuple[int, int]:
    where = _existing_ancestor(path)
    try:
        return os.pathconf(where, "PC_NAME_MAX"), os.pathconf(where, "PC_PATH_MAX")
    except (OSError, ValueError):
        return _NAME_MAX, _PATH_MAX


def _hint(what: str, option: str) -> str:
    """``what`` to do, and the option that sets the location, if any."""
    return f"{what} ({option})" if option else what


def check_name(path: str | os.PathLike[str], fix: str = "") -> None:
    """Refuse a path whose folder or file name, or whole length, the filesystem rejects;
    ``fix`` names the option that sets it."""
    p = Path(path)
    name_max, path_max = _limits(p)
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise WriteError(f"cannot write {short_path(p)}: the name '{short_path(part, 40)}' is "
                             f"{len(os.fsencode(part))} characters, over the filesystem's limit "
                             f"of {name_max}; {_hint('use a shorter name', fix)}")
    if len(os.fsencode(str(p.absolute()))) >= path_max:
        raise WriteError(f"cannot write {short_path(p)}: the path is over the filesystem's "
                         f"limit of {path_max} characters; {_hint('use a shorter path', fix)}")


def os_error(path: str | os.PathLike[str], err: OSError, fix: str = "") -> WriteError:
    """The one line for an ``OSError`` met while writing ``path``; ``fix`` names the option
    that sets the location."""
    p, code = short_path(path), err.errno
    if code in _DENIED:
        why = "read-only filesystem" if code == errno.EROFS else "permission denied"
        return WriteError(f"cannot write {p}: not writable ({why}); "
                          f"{_hint('choose a writable location', fix)}")
    if code in _FULL:
        return WriteError(f"cannot write {p}: no space left on the device ({free_space(path)}); "
                          f"{_hint('free some space or choose another location', fix)}")
    if code == errno.ENAMETOOLONG:
        name_max, _ = _limits(Path(path))
        return WriteError(f"cannot write {p}: a name in it is longer than the filesystem's "
                          f"limit of {name_max} characters; {_hint('use a shorter name', fix)}")
    if code in (errno.EEXIST, errno.ENOTDIR):
        return WriteError(f"cannot write {p}: a file is in the way where a folder is needed; "
                          f"{_hint('choose another path', fix)}")
    return WriteError(f"cannot write {p}: {err.strerror or err}; "
                      f"{_hint('choose another location', fix)}")


@contextmanager
def writing(path: str | os.PathLike[str], fix: str = "", *temporaries: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a :class:`WriteError`. Errors
    that name another file (an input being read) pass through unchanged."""
    target = Path(path)
    try:
        yield
    except OSError as e:
        if e.filename is not None and not _ours(Path(os.fsdecode(e.filename)),
                                                 (target, *temporaries)):
            raise
        raise os_error(target, e, fix) from None


def _ours(name: Path, targets: tuple[Path, ...]) -> bool:
    """``name`` is a target, lies inside one, or is a folder it would be created in."""
    a = name.absolute()
    return any(a == t or t in a.parents or a in t.parents
               for t in (p.absolute() for p in targets))


def probe(folder: str | os.PathLike[str], fix: str = "",
          target: str | os.PathLike[str] | None = None, size: int = 4096) -> None:
    """Write and remove a small file in ``folder``: a write that will fail fails here, at
    the door, before any work. The message names ``target`` (default: the folder)."""
    with writing(target if target is not None else folder, fix, Path(folder)):
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.unlink(name)


def ensure_dir(path: str | os.PathLike[str], fix: str = "", check: bool = True) -> Path:
    """Create ``path`` (and its parents); with ``check`` prove it writable."""
    p = Path(path)
    check_name(p, fix)
    with writing(p, fix):
        p.mkdir(parents=True, exist_ok=True)
    if check:
        probe(p, fix=fix)
    return p


def is_taken(path: str | os.PathLike[str]) -> bool:
    """A file, or a folder with something in it."""
    p = Path(path)
    if p.is_dir():
        try:
            return any(p.iterdir())
        except OSError:  # a folder we cannot even list is not ours to fill
            return True
    return p.exists() or p.is_symlink()


def refuse_existing(path: str | os.PathLike[str], force: bool, flag: str = "--force") -> None:
    """Refuse to overwrite ``path`` unless ``force``."""
    p = Path(path)
    if force or not is_taken(p):
        return
    what = "exists and is not empty" if p.is_dir() else "exists"
    raise UserError(f"{short_path(p)} already {what}; pass {flag} to overwrite it, or choose "
                    "another path (nothing was written)")


def check_writable(path: str | os.PathLike[str], fix: str = "") -> Path:
    """The door of a command that will write ``path`` (a file or folder, existing or not):
    its name fits the filesystem and the folder it will be created in takes a file. Creates
    nothing."""
    p = Path(path)
    check_name(p, fix)
    where = _existing_ancestor(p)
    if not where.is_dir():
        if where != p.absolute():
            raise WriteError(f"cannot write {short_path(p)}: {short_path(where)} is a file, not a "
                             f"folder; {_hint('choose another path', fix)}")
        where = where.parent  # the file itself, to be replaced: its folder takes the new one
    probe(where, fix=fix, target=p)
    return p


def check_target(path: str | os.PathLike[str], force: bool, fix: str = "",
                 folder: bool = False) -> Path:
    """:func:`check_writable`, and ``path`` refused when taken (unless ``force``)."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{short_path(p)} is a file; pass a folder path")
    if not folder and p.is_dir():
        raise UserError(f"{short_path(p)} is a folder; pass a file path")
    refuse_existing(p, force)
    return check_writable(p, fix)


@contextmanager
def replacing(path: str | os.PathLike[str], *, force: bool = False, fix: str = ""
              ) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block succeeds it is renamed onto
    ``path``. On an error the temporary is removed and ``path`` is left as it was."""
    target = Path(path)
    refuse_existing(target, force)
    ensure_dir(target.parent, fix, check=False)
    tmp = target.with_name(target.name + TMP_SUFFIX)
    try:
        with writing(target, fix, tmp):
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str, *, force: bool = False,
               fix: str = "") -> Path:
    """``path`` holds ``text`` (UTF-8), written whole or not at all."""
    with replacing(path, force=force, fix=fix) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def appending(path: str | os.PathLike[str], fix: str = "") -> Iterator[Path]:
    """A block that appends to ``path`` (a log such as ``metrics.jsonl``), its OS errors
    turned into one line."""
    with writing(path, fix):
        yield Path(path)


@contextmanager
def replacing_dir(path: str | os.PathLike[str], *, force: bool = False, fix: str = ""
                  ) -> Iterator[Path]:
    """Yield an empty temporary folder; once the block succeeds it becomes ``path``.

    A new ``path`` appears by one rename. An existing one (``force``, or empty) receives
    the new entries one by one, each replacing its namesake; other entries are kept. On
    an error the temporary folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{short_path(target)} is a file; pass a folder path")
    refuse_existing(target, force)
    existed = target.is_dir()
    home = target if existed else target.parent
    check_name(target, fix)
    ensure_dir(home, fix, check=False)
    with writing(target, fix, home):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.", suffix=TMP_SUFFIX,
                                    dir=home))
    try:
        with writing(target, fix, tmp):
            yield tmp
            if existed:
                for entry in sorted(tmp.iterdir()):
                    _place(entry, target / entry.name)
                tmp.rmdir()
            else:
                os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _place(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; a folder (or a folder in the way) is swapped aside first."""
    if not (src.is_dir() or dst.is_dir()) or not (dst.exists() or dst.is_symlink()):
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name[:40]}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(src, dst)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
