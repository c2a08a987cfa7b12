"""A library ``.npz`` read one square at a time, so its squares are never all in memory.

``NpyRows`` reads the rows of one array in an ``.npz`` one at a time (the file is a zip of
``.npy`` members, each decompressed as a stream). On it: ``read_library_index`` (the small
arrays, checked against the ``rgba`` header before any square is read),
``iter_library_cutouts`` (each patch's cut-out, for ``sources``) and ``load_library_subset``
(a ``Library`` of some or all patches, with the peak memory of the result; what runs use).

``load.load_library`` reads the same file whole; ``load_library_subset`` gives the same
arrays and fingerprint. Another streamed reader of library files belongs here.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from clipclop_jax import safe_npy
from clipclop_jax.library.cutouts import ALPHA_EMPTY
from clipclop_jax.library.file_formats import (
    check_library_arrays,
    check_library_format,
    library_records,
)
from clipclop_jax.library.patch_library import (
    Library,
    LibraryError,
    PatchLibrary,
    SourceError,
    square_patch,
)


def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
    read = read or np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(handle)
    if fortran_order:
        raise ValueError("Fortran-ordered arrays are not supported")
    return shape, dtype


class NpyRows:
    """Reads the rows (first axis) of one array of an ``.npz`` file one by one.

    Use as a context manager: ``with NpyRows(path, "rgba") as rows: for row in rows: ...``.
    Attributes ``shape`` and ``dtype`` describe the whole array.
    """

    def __init__(self, path: str | os.PathLike, key: str):
        self._where = f"{os.fspath(path)!r}: {key}"
        self._zip = zipfile.ZipFile(path)
        try:
            self._file = self._zip.open(f"{key}.npy")
            self.shape, self.dtype = _npy_header(self._file)
        except BaseException:
            self._zip.close()
            raise
        if self.dtype.hasobject or not self.shape:
            self.close()
            raise ValueError(f"{key} is not a numeric array")
        self._row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.shape[0]):
            try:
                data = self._file.read(self._row_bytes)
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
                raise SourceError(
                    f"{self._where} is damaged ({error}): rebuild the library."
                ) from None
            if len(data) != self._row_bytes:
                raise SourceError(f"{self._where} is truncated: rebuild the library.")
            yield np.frombuffer(data, self.dtype).reshape(self.shape[1:])

    def close(self) -> None:
        self._file.close()
        self._zip.close()

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_library_index(path: str | os.PathLike) -> tuple[np.ndarray, tuple[str, ...]]:
    """A library ``.npz``'s small arrays: ``sizes`` [P, 2] int32 and the names, checked
    against its ``rgba`` member's header (``file_formats.check_library_arrays``) before any
    square is read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            check_library_format(data, path, SourceError)
            sizes, names = data["sizes"], tuple(str(n) for n in np.atleast_1d(data["names"]))
        with NpyRows(path, "rgba") as rows:
            check_library_arrays(os.fspath(path), rows, sizes, names)
    except LibraryError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = safe_npy.load_error_reason(error)
        raise SourceError(f"{os.fspath(path)!r} cannot be read as a library ({reason}).") from None
    return np.asarray(sizes, np.int32), names


def read_library_records(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A library ``.npz``'s per-patch records: ``names``, ``sources``, ``labels`` ([P] str)
    and ``scores`` ([P] float32, NaN where none); see ``file_formats.library_records``."""
    _, names = read_library_index(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            records = library_records(data, len(names), os.fspath(path))
    except LibraryError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = safe_npy.load_error_reason(error)
        raise SourceError(f"{os.fspath(path)!r} cannot be read as a library ({reason}).") from None
    return {"names": np.asarray(names, str), **records}


def iter_library_cutouts(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, str, float]]:
    """``(name, cut-out, label, score)`` for each patch of a library ``.npz``, one square in
    memory at a time (label "" and score NaN where the library has none)."""
    sizes, names = read_library_index(path)
    records = read_library_records(path)
    with NpyRows(path, "rgba") as rows:
        side = rows.shape[1]
        for name, square, (height, width), label, score in zip(
            names, rows, sizes, records["labels"], records["scores"], strict=True
        ):
            top, left = (side - height) // 2, (side - width) // 2
            cutout = np.array(square[top : top + height, left : left + width])
            yield name, cutout, str(label), float(score)


def load_library_subset(
    path: str | os.PathLike,
    indices: Sequence[int] | None = None,
    *,
    max_patches: int | None = None,
    seed: int = 0,
    lowres_size: int = 64,
    highres_size: int = 256,
    keep_relative_size: bool = False,
) -> Library:
    """Loads some patches of a library ``.npz``, decompressing one square at a time.

    Equal to ``load.load_library(path, ...).subset(indices)`` (same arrays, same
    fingerprint), but peak memory is the result plus one square, not the whole file.

    Args:
      path: a library ``.npz`` (``build_library`` or ``file_formats.save_library``).
      indices: the patches to load, in this order (default: all, or a random sorted subset
        of ``max_patches`` of them).
      max_patches: without ``indices``, load at most this many, chosen with ``seed``.
      lowres_size, highres_size, keep_relative_size: as ``load.load_library``.
    """
    sizes, names = read_library_index(path)
    total = len(names)
    if indices is None:
        indices = np.arange(total)
        if max_patches is not None and max_patches < total:
            chosen = np.random.default_rng(seed).choice(total, max_patches, replace=False)
            indices = np.sort(chosen)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= total:
        raise LibraryError(f"patch indices must be within [0, {total}) and not empty.")
    where = collections.defaultdict(list)
    for position, index in enumerate(indices.tolist()):
        where[index].append(position)
    largest = int(sizes.max()) if total else 1
    arrays = {
        size: (
            np.zeros((indices.size, size, size, 4), np.uint8),
            np.zeros((indices.size, 2), np.int32),
        )
        for size in (lowres_size, highres_size)
    }
    with NpyRows(path, "rgba") as rows:
        side = rows.shape[1]
        for index, square in enumerate(rows):
            if index > indices.max():
                break
            if index not in where:
                continue
            height, width = sizes[index]
            top, left = (side - height) // 2, (side - width) // 2
            cutout = np.asarray(square[top : top + height, left : left + width])
            if cutout.size == 0 or cutout[..., 3].max() <= ALPHA_EMPTY:
                raise LibraryError(f"{os.fspath(path)!r} holds empty patches: rebuild the library.")
            extent = max(height, width) / largest if keep_relative_size else 1.0
            for size, (rgba, patch_sizes) in arrays.items():
                placed, placed_size = square_patch(cutout, size, extent)
                for position in where[index]:
                    rgba[position], patch_sizes[position] = placed, placed_size
    low = PatchLibrary(*arrays[lowres_size])
    high = PatchLibrary(*arrays[highres_size])
    return Library(low, high, tuple(names[i] for i in indices.tolist()), _fingerprint(low, high))


def _fingerprint(low: PatchLibrary, high: PatchLibrary) -> str:
    # The rule of patch_library.Library.fingerprint; a test checks that the two agree.
    digest = hashlib.sha256()
    for array in (*low, *high):
        digest.update(np.ascontiguousarray(array).data)  # no copy of a large array
    return digest.hexdigest()[:32]
