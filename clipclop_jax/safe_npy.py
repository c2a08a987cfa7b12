"""Reading ``.npy`` files without running code: pickles may build numpy arrays and nothing else.

An object array in a ``.npy`` file is a pickle, and unpickling can call any function (a
patch file whose element reduces to ``os.system`` runs a command as it loads). The original
Arnheim 3 patch files are such object arrays of uint8 patches, so they cannot simply be
refused. ``load_npy`` reads the header with ``numpy.lib.format`` and, for an object array,
unpickles with ``_ArrayUnpickler``, whose ``find_class`` admits only the names a pickled
ndarray needs (``ALLOWED``) and refuses any other with ``RefusedPickleError``, before it is
called. Everything else the project reads (library ``.npz``, checkpoints, ``params.npz``)
is loaded with ``allow_pickle=False``; ``load_error_reason`` rewords numpy's errors for
those, whose advice ("load with allow_pickle=True") would be unsafe to follow.

To admit another harmless constructor, add its (module, name) to ``ALLOWED``.
"""

from __future__ import annotations

import codecs
import os
import pickle
from typing import Any

import numpy as np


class RefusedPickleError(ValueError):
    """A file's pickle asks for something other than numpy arrays; it was not loaded."""


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Protocol-2 pickles of arrays store their bytes as latin-1 text plus a call to
    # _codecs.encode; only that use is admitted, not arbitrary codecs.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is admitted only for latin-1 text")
    return text.encode("latin1", errors)


_NUMPY_CORE = ("numpy.core", "numpy._core")
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in _NUMPY_CORE:
    # Spelled numpy.core.* by numpy 1 and numpy._core.* by numpy 2; both build arrays only.
    # The functions are taken from what numpy's own pickling calls, wherever they live.
    ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = np.ndarray.__reduce__(np.zeros(0))[0]
    ALLOWED[(f"{_core}.multiarray", "scalar")] = np.int64(0).__reduce__()[0]
    ALLOWED[(f"{_core}.numeric", "_frombuffer")] = np.zeros(1).__reduce_ex__(5)[0]


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # latin1: arrays pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise RefusedPickleError(
                f"{self._path!r} holds a pickled {module}.{name}, which clipclop-jax never "
                "loads (a pickle can run any code): only numpy arrays are read from .npy files."
            )
        return found

    def persistent_load(self, pid):
        raise RefusedPickleError(f"{self._path!r} holds a pickle with external references.")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Reads one ``.npy`` array; an object array's pickle may hold only numpy arrays.

    Args:
      path: the file.

    Returns:
      The array (for an object array, its elements are ndarrays or numpy scalars).

    Raises:
      RefusedPickleError: the pickle names anything but a numpy array, dtype or scalar.
      ValueError: the file is not a readable ``.npy`` (a one-line reason naming it).
      OSError: it cannot be opened.
    """
    name = os.fspath(path)
    with open(name, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:  # 2.0 and 3.0 headers differ only in the text's encoding
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, EOFError, SyntaxError) as error:
            raise _unreadable(name, error) from None
        if not dtype.hasobject:
            handle.seek(0)
            try:
                return np.load(handle, allow_pickle=False)
            except (ValueError, EOFError) as error:
                raise _unreadable(name, error) from None
        try:
            array = _ArrayUnpickler(handle, name).load()
        except RefusedPickleError:
            raise
        except Exception as error:  # a torn or hand-made pickle fails in many ways
            raise ValueError(
                f"{name!r} is not a readable .npy object array ({_first_line(error)})."
            ) from None
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise ValueError(f"{name!r} is not a readable .npy file (its pickle is not its array).")
    return array


def load_error_reason(error: BaseException) -> str:
    """One line saying why ``np.load(..., allow_pickle=False)`` failed, without numpy's advice
    to allow pickles."""
    text = _first_line(error)
    if "allow_pickle" in text:
        return "it holds a pickled object array, which clipclop-jax never loads"
    return text


def _unreadable(name: str, error: BaseException) -> ValueError:
    return ValueError(f"{name!r} is not a readable .npy file ({_first_line(error)}).")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
