"""Read any ``.npy`` file without executing code from it.

Published WTAL annotation and feature files are numpy *object* arrays, i.e. pickles, and
numpy's own pickle loading would run whatever callable such a pickle names. Here the
pickle part is read by an :class:`pickle.Unpickler` whose ``find_class`` admits only the few
numpy globals needed to rebuild arrays; anything else raises :class:`UnsafeFileError`
before it is called.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .validate import DataError

__all__ = ["UnsafeFileError", "RestrictedUnpickler", "load_npy", "ALLOWED_GLOBALS"]


class UnsafeFileError(DataError):
    """A pickled ``.npy`` names a global outside the numpy array allow-list."""


def _numpy_core(submodule: str) -> Any:
    """The numpy core submodule under its 2.x name, falling back to the 1.x name."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    # only the codec numpy's pickles use: other codec names would trigger codec-module imports
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r} in _codecs.encode")
    return text.encode("latin1")


def _core_attr(submodule: str, name: str) -> Any:
    return getattr(_numpy_core(submodule), name)


# (module, name) -> resolver. Both numpy 1.x (numpy.core) and 2.x (numpy._core) spellings map
# to the installed numpy's object, so files saved by either load under either, without the
# DeprecationWarning importing ``numpy.core`` raises on numpy 2.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # protocol 2 pickles of bytes from Python 3 go through _codecs.encode(str, "latin1")
    ("_codecs", "encode"): lambda: _encode_latin1,
}
for _core in ("numpy.core", "numpy._core"):
    for _sub in ("multiarray", "_multiarray_umath"):
        for _name in ("_reconstruct", "scalar"):
            _ALLOWED[(f"{_core}.{_sub}", _name)] = (
                lambda _n=_name: _core_attr("multiarray", _n)
            )
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = lambda: _core_attr("numeric", "_frombuffer")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-rebuilding globals."""

    def __init__(self, file: io.BufferedIOBase, *, source: str = "<stream>") -> None:
        # latin1: Python 2 pickles (most published WTAL files) store array buffers as str
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise UnsafeFileError(
                f"{self._source}: refused to unpickle global '{module}.{name}' (only numpy "
                "array globals are allowed). Fix: re-save the file as plain (non-object) "
                "numpy arrays, or convert the dataset to the packed format "
                "(mllm4wtal.data.pack)."
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(
            f"{self._source}: refused a persistent id in the pickle. Fix: re-save the file as "
            "plain numpy arrays or use the packed format."
        )


_MAGIC = b"\x93NUMPY"


def _read_header(fh: io.BufferedIOBase, path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header (versions 1-3) without numpy's private helpers."""
    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != _MAGIC:
        raise DataError(f"{path}: not a .npy file (bad magic). Fix: write it with np.save.")
    major = magic[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", fh.read(2))
    elif major in (2, 3):
        (hlen,) = struct.unpack("<I", fh.read(4))
    else:
        raise DataError(f"{path}: unsupported .npy format version {major}.")
    raw = fh.read(hlen)
    try:
        header = ast.literal_eval(raw.decode("utf8" if major == 3 else "latin1"))
        shape = tuple(int(s) for s in header["shape"])
        fortran = bool(header["fortran_order"])
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception as exc:  # malformed header: report, do not guess
        raise DataError(f"{path}: unreadable .npy header ({exc}). Fix: re-save it.") from exc
    return shape, fortran, dtype


def load_npy(path: str | os.PathLike[str], *, mmap_mode: str | None = None) -> np.ndarray:
    """Load a ``.npy`` file; object arrays go through :class:`RestrictedUnpickler`.

    Plain arrays are loaded by numpy with pickling disabled (optionally memory-mapped).
    ``|S`` byte strings are returned as they are; decode with :func:`decode_strings`.

    Raises:
        DataError: the file is missing or is not a readable .npy file.
        UnsafeFileError: an object array's pickle names a non-numpy global.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found. Fix: check the path / dataset root.")
    with open(p, "rb") as fh:
        shape, _fortran, dtype = _read_header(fh, str(p))
        if not dtype.hasobject:
            fh.close()
            return np.load(p, mmap_mode=mmap_mode, allow_pickle=False)  # type: ignore[no-any-return]
        try:
            obj = RestrictedUnpickler(fh, source=str(p)).load()
        except UnsafeFileError:
            raise
        except Exception as exc:  # truncated / corrupt pickle
            raise DataError(
                f"{p}: could not read the object array ({type(exc).__name__}: {exc}). "
                "Fix: re-save the file, or use the packed format."
            ) from exc
    if not isinstance(obj, np.ndarray):
        raise UnsafeFileError(
            f"{p}: pickle payload is a {type(obj).__name__}, not a numpy array. "
            "Fix: re-save it with np.save."
        )
    if obj.shape != shape:
        raise DataError(f"{p}: header shape {shape} != stored array shape {obj.shape}.")
    return obj


def decode_strings(arr: np.ndarray) -> list[str]:
    """Turn a 1-D array of bytes (``|S``), str or object items into a list of ``str``."""
    out: list[str] = []
    for item in np.asarray(arr).reshape(-1):
        if isinstance(item, bytes | np.bytes_):
            out.append(bytes(item).decode("utf-8"))
        else:
            out.append(str(item))
    return out
