"""The two patch-library file formats, read, written and checked before any patch is used.

* A library ``.npz`` (``LIBRARY_FORMAT``; docs/libraries.md): ``save_library`` writes one,
  ``npz_cutouts`` reads one whole; ``check_library_format`` and ``check_library_arrays`` are
  the checks every reader of such a file (or of a library cache) applies first.
* An original Arnheim 3 ``.npy`` patch file: ``read_original_patches`` unpickles it safely,
  ``original_patch_rgba`` checks and converts one patch, ``npy_cutouts`` reads them all.

A new check of library arrays goes in ``check_library_arrays``, so that every loader
(``load``, ``npz_reader``) applies it; a new file format is a new ``*_cutouts`` reader here,
named in ``load.load_library``.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Sequence

import numpy as np

from clipclop_jax import io, safe_npy
from clipclop_jax.library.cutouts import ALPHA_EMPTY, black_is_transparent, crop_to_alpha
from clipclop_jax.library.patch_library import (
    Library,
    LibraryError,
    PatchLibrary,
    cutouts_from_library,
)

LIBRARY_FORMAT = "clipclop-jax-library/1"
# Optional per-patch arrays (``build_library`` writes them; libraries without them still
# load, with these defaults): the source image, the class a segmentation model gave, and
# its score (NaN: none).
RECORD_DEFAULTS = {"sources": "", "labels": "", "scores": float("nan")}


def save_library(path: str | os.PathLike, library: Library) -> None:
    """Writes a library ``.npz`` (its high-resolution squares are the source) atomically."""
    io.save_npz_atomic(
        path,
        format=np.asarray(LIBRARY_FORMAT),
        rgba=np.asarray(library.high.rgba, np.uint8),
        sizes=np.asarray(library.high.sizes, np.int32),
        names=np.asarray(library.names),
    )


def check_library_format(data, path, error: type[ValueError] = LibraryError) -> None:
    """Raises ``error`` unless the opened ``np.load`` archive ``data`` is a library .npz."""
    if "format" not in data or str(data["format"]) != LIBRARY_FORMAT:
        raise error(
            f"{os.fspath(path)!r} is not a clipclop-jax library .npz: build one with "
            "`clipclop patches build`."
        )


def check_library_arrays(source: str, rgba, sizes, names: Sequence | None = None) -> None:
    """Raises ``LibraryError`` unless these arrays make a library, before any patch is used.

    Every loader calls it on what it read (a library ``.npz``, its streamed ``rgba`` member,
    a cache file), so a damaged or hand-made file fails with one line naming it and the fix
    instead of a crash deep in resampling.

    Args:
      source: the file, for the message.
      rgba: anything with ``shape`` and ``dtype`` (an array, or ``NpyRows``): must be uint8
        [P, S, S, 4] with P >= 1 and S >= 4 (a float array, finite or not, is refused).
      sizes: [P, 2] integer (height, width), each within [1, S].
      names: P names, if the file has them.
    """
    where = f"patch library {source!r}"
    fix = "rebuild it with `clipclop patches build`"
    shape, dtype = tuple(rgba.shape), np.dtype(rgba.dtype)
    if len(shape) != 4 or shape[3] != 4 or shape[1] != shape[2] or shape[1] < 4:
        raise LibraryError(
            f"{where}: rgba has shape {list(shape)}, not [patches, S, S, 4] squares with S >= 4: "
            f"{fix}."
        )
    if dtype != np.uint8:
        raise LibraryError(f"{where}: rgba is {dtype}, not uint8 RGBA in 0-255: {fix}.")
    count, side = shape[0], shape[1]
    if count == 0:
        raise LibraryError(f"{where} holds no patches: {fix} from at least one image.")
    sizes = np.asarray(sizes)
    if sizes.shape != (count, 2) or not np.issubdtype(sizes.dtype, np.integer):
        raise LibraryError(
            f"{where}: sizes is {sizes.dtype}{list(sizes.shape)} but rgba holds {count} "
            f"patches, which need int32[{count}, 2] sizes: {fix}."
        )
    if sizes.min() < 1 or sizes.max() > side:
        bad = int(np.flatnonzero((sizes < 1).any(1) | (sizes > side).any(1))[0])
        raise LibraryError(
            f"{where}: patch {bad} has size {sizes[bad].tolist()}, outside [1, {side}] for its "
            f"{side}-texel square: {fix}."
        )
    if names is not None and len(names) != count:
        raise LibraryError(f"{where}: {len(names)} names for {count} patches: {fix}.")


def library_records(data, count: int, source: str) -> dict[str, np.ndarray]:
    """The optional per-patch arrays of an opened library ``.npz`` (``RECORD_DEFAULTS``).

    Args:
      data: the ``np.load`` archive.
      count: patches in the library.
      source: the file, for the message.

    Returns:
      {"sources": [P] str, "labels": [P] str, "scores": [P] float32}, defaults where the
      file has no such array (libraries written before they existed).

    Raises:
      LibraryError: an array holds a different number of entries than the library.
    """
    records = {}
    for key, default in RECORD_DEFAULTS.items():
        if key in data:
            values = np.atleast_1d(data[key])
            if values.shape != (count,):
                raise LibraryError(
                    f"patch library {source!r}: {key} has shape {list(values.shape)} for {count} "
                    "patches: rebuild it with `clipclop patches build`."
                )
        else:
            values = np.full(count, default)
        records[key] = values.astype(np.float32) if key == "scores" else values.astype(str)
    return records


def npz_cutouts(path: pathlib.Path):
    """The cut-outs and names of a library ``.npz``, checked before any is used."""
    try:
        with np.load(path, allow_pickle=False) as data:
            check_library_format(data, path)
            rgba, sizes = data["rgba"], data["sizes"]
            names = [str(n) for n in np.atleast_1d(data["names"])]
    except LibraryError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = safe_npy.load_error_reason(error)
        raise LibraryError(f"{str(path)!r} cannot be read as a library ({reason}).") from None
    check_library_arrays(str(path), rgba, sizes, names)
    cutouts = cutouts_from_library(PatchLibrary(rgba, sizes))
    if any(c[..., 3].max() <= ALPHA_EMPTY for c in cutouts):
        raise LibraryError(f"{str(path)!r} holds empty patches: rebuild the library.")
    return cutouts, names


def original_patch_rgba(patch) -> np.ndarray:
    """One patch of an original Arnheim 3 ``.npy`` file -> [H, W, 4] uint8 straight RGBA.

    The original stores [W, H, 3 or 4] (width first) values in 0-255, usually uint8; in
    3-channel patches black is transparent.

    Raises:
      ValueError: the patch is not such an array (the message says what it is instead).
    """
    if not isinstance(patch, np.ndarray):
        raise ValueError(f"holds a {type(patch).__name__}, not an array")
    if patch.ndim != 3 or patch.shape[2] not in (3, 4) or min(patch.shape[:2]) < 1:
        raise ValueError(f"has shape {list(patch.shape)}, not [W, H, 3 or 4]")
    if patch.dtype != np.uint8:
        kind = patch.dtype.kind
        if kind not in "biuf":
            raise ValueError(f"is {patch.dtype}, not uint8 pixel values")
        if kind == "f" and not np.isfinite(patch).all():
            raise ValueError(f"is {patch.dtype} with NaN or infinite values")
        if patch.size and (patch.min() < 0 or patch.max() > 255):
            raise ValueError(f"has values outside 0-255 ({patch.min()} to {patch.max()})")
        patch = np.round(patch).astype(np.uint8)
    patch = patch.swapaxes(0, 1)
    if patch.shape[2] == 3:
        patch = np.concatenate([patch, black_is_transparent(patch)[..., None]], -1)
    return np.ascontiguousarray(patch)


def read_original_patches(path: str | os.PathLike) -> np.ndarray:
    """The patches of an original Arnheim 3 ``.npy`` file, unpickled safely (``safe_npy``).

    Raises:
      LibraryError: the file is unreadable, pickles anything but numpy arrays, or is not a
        non-empty sequence of patches (one line naming the file).
    """
    name = os.fspath(path)
    try:
        patches = safe_npy.load_npy(name)
    except ValueError as error:  # the message names the file already
        raise LibraryError(str(error)) from None
    except OSError as error:
        raise LibraryError(f"{name!r} cannot be read ({error.strerror or error}).") from None
    if patches.ndim == 0 or patches.dtype.kind not in "biufO":
        raise LibraryError(
            f"{name!r} holds a single {patches.dtype} value, not patches: an original patch file "
            "is a sequence of [W, H, 3 or 4] uint8 patches."
            if patches.ndim == 0
            else f"{name!r} holds {patches.dtype} values, not [W, H, 3 or 4] uint8 patches."
        )
    if len(patches) == 0:
        raise LibraryError(f"{name!r} holds no patches: pass a file with at least one patch.")
    return patches


def npy_cutouts(path: pathlib.Path):
    """The cut-outs of an original ``.npy`` patch file, each checked before any is resampled."""
    patches = read_original_patches(path)
    cutouts, names = [], []
    for i, patch in enumerate(patches):
        try:
            rgba = original_patch_rgba(patch)
        except ValueError as error:
            raise LibraryError(
                f"{str(path)!r}: patch {i} {error}; an original patch file holds [W, H, 3 or 4] "
                "uint8 patches."
            ) from None
        cutout = crop_to_alpha(rgba)
        if cutout is not None:
            cutouts.append(cutout)
            names.append(f"{path.name}#{i}")
    if not cutouts:
        raise LibraryError(f"{str(path)!r} holds no visible patch: every patch is transparent.")
    return cutouts, names
