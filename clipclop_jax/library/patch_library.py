"""Patch libraries: the cut-outs a collage is made of, as padded device-ready arrays.

``load_library(source)`` reads a built-in library ("shapes", "painted", "photos"), a folder of
images, a library ``.npz`` (``save_library``) or an original Arnheim 3 ``.npy`` patch file,
and returns a ``Library``: a low-resolution copy for optimisation and a high-resolution copy
for the final render, plus a fingerprint that saved collages record. Folder and built-in
libraries are cached on disk, keyed by the sources' names, sizes and modification times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import zipfile
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image

from clipclop_jax import io, safe_npy
from clipclop_jax.library.cutouts import (
    ALPHA_EMPTY,
    black_is_transparent,
    crop_to_alpha,
    make_cutout,
)

logger = logging.getLogger(__name__)

LIBRARY_FORMAT = "clipclop-jax-library/1"
CACHE_VERSION = 1
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
BUILTIN = ("shapes", "painted", "photos")


class LibraryError(ValueError):
    """A patch library cannot be made from what was given; the message says what to do."""


class PatchLibrary(NamedTuple):
    """One resolution of a patch library, as the renderer reads it.

    Every patch is centred in a square of side ``L``; the padding has alpha 0, and so does
    at least the outermost ring of texels (the renderer clamps samples to the square, so
    that ring is what it reads outside a patch).

    Attributes:
      rgba: [P, L, L, 4] float32 in [0, 1], or uint8 in [0, 255] (the renderer converts after
        gathering, so a large high-resolution library can stay in uint8); straight (not
        premultiplied) RGB and alpha, where alpha is the cut-out mask.
      sizes: [P, 2] int32, each patch's true (height, width) in pixels of this array.
    """

    rgba: jax.Array
    sizes: jax.Array

    @property
    def num_patches(self) -> int:
        return self.rgba.shape[0]

    @property
    def side(self) -> int:
        return self.rgba.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class Library:
    """A patch library at two resolutions (NumPy arrays on the host).

    Attributes:
      low: the copy optimisation renders (``lowres_size`` square).
      high: the copy the final render uses (``highres_size`` square).
      names: [P] where each patch came from ("file.png", "photos/coffee#3", ...).
      fingerprint: hex digest of both copies; changes whenever any patch changes.
    """

    low: PatchLibrary
    high: PatchLibrary
    names: tuple[str, ...]
    fingerprint: str

    @property
    def num_patches(self) -> int:
        return self.low.num_patches

    def subset(self, indices: Sequence[int]) -> Library:
        """The library of only these patches (in this order)."""
        index = np.asarray(indices, np.int64)
        low = PatchLibrary(self.low.rgba[index], self.low.sizes[index])
        high = PatchLibrary(self.high.rgba[index], self.high.sizes[index])
        return _make_library(low, high, tuple(self.names[i] for i in index))


def square_patch(cutout: np.ndarray, side: int, extent: float = 1.0) -> tuple[np.ndarray, tuple]:
    """Fits one cut-out into a ``side`` square with a transparent outer ring.

    The longest side becomes ``extent * (side - 2)`` texels; resampling is Lanczos on
    premultiplied colour, so transparent pixels do not bleed dark fringes into the edge.

    Args:
      cutout: [h, w, 4] uint8 straight RGBA, cropped to its alpha.
      side: the square's side.
      extent: in (0, 1], the patch's longest side relative to the largest possible.

    Returns:
      ([side, side, 4] uint8, (height, width) of the patch inside the square).
    """
    height, width = cutout.shape[:2]
    factor = extent * (side - 2) / max(height, width)
    new = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = Image.fromarray(cutout, "RGBA").convert("RGBa")
    image = image.resize(new, Image.Resampling.LANCZOS).convert("RGBA")
    square = np.zeros((side, side, 4), np.uint8)
    top, left = (side - new[1]) // 2, (side - new[0]) // 2
    square[top : top + new[1], left : left + new[0]] = np.asarray(image)
    return square, (new[1], new[0])


def build_patch_library(
    cutouts: Sequence[np.ndarray], side: int, *, keep_relative_size: bool = False
) -> PatchLibrary:
    """Stacks cut-outs into one ``PatchLibrary`` of ``side`` squares (uint8 NumPy).

    Args:
      cutouts: [h, w, 4] uint8 straight RGBA, each cropped to its alpha.
      side: square side in texels, >= 4.
      keep_relative_size: False makes every patch fill its square (the scale parameter
        decides its size on the canvas); True keeps the cut-outs' relative pixel sizes, the
        largest filling its square (the original's ``fixed_scale_patches``).
    """
    if side < 4:
        raise LibraryError(f"library side {side} is too small: use at least 4 texels.")
    largest = max(max(c.shape[:2]) for c in cutouts)
    rgba = np.zeros((len(cutouts), side, side, 4), np.uint8)
    sizes = np.zeros((len(cutouts), 2), np.int32)
    for i, cutout in enumerate(cutouts):
        extent = max(cutout.shape[:2]) / largest if keep_relative_size else 1.0
        rgba[i], sizes[i] = square_patch(cutout, side, extent)
    return PatchLibrary(rgba, sizes)


def library_from_cutouts(
    cutouts: Sequence[np.ndarray],
    *,
    lowres_size: int = 64,
    highres_size: int = 256,
    names: Sequence[str] | None = None,
    keep_relative_size: bool = False,
) -> Library:
    """A two-resolution ``Library`` from cut-outs ([h, w, 4] uint8 RGBA)."""
    if not cutouts:
        raise LibraryError("the patch library is empty: give at least one cut-out.")
    names = tuple(names) if names is not None else tuple(f"patch{i}" for i in range(len(cutouts)))
    if len(names) != len(cutouts):
        raise ValueError(f"{len(names)} names for {len(cutouts)} cut-outs.")
    low = build_patch_library(cutouts, lowres_size, keep_relative_size=keep_relative_size)
    high = build_patch_library(cutouts, highres_size, keep_relative_size=keep_relative_size)
    return _make_library(low, high, names)


def _make_library(low: PatchLibrary, high: PatchLibrary, names: tuple[str, ...]) -> Library:
    digest = hashlib.sha256()
    for array in (*low, *high):
        digest.update(np.ascontiguousarray(array).data)
    return Library(low, high, names, digest.hexdigest()[:32])


def cutouts_from_library(patches: PatchLibrary) -> list[np.ndarray]:
    """The cut-outs inside a ``PatchLibrary``'s squares (inverse of ``build_patch_library``)."""
    side = patches.side
    out = []
    for square, (height, width) in zip(
        np.asarray(patches.rgba), np.asarray(patches.sizes), strict=True
    ):
        top, left = (side - height) // 2, (side - width) // 2
        out.append(np.asarray(square[top : top + height, left : left + width], np.uint8))
    return out


def save_library(path: str | os.PathLike, library: Library) -> None:
    """Writes a library ``.npz`` (its high-resolution squares are the source) atomically."""
    io.save_npz_atomic(
        path,
        format=np.asarray(LIBRARY_FORMAT),
        rgba=np.asarray(library.high.rgba, np.uint8),
        sizes=np.asarray(library.high.sizes, np.int32),
        names=np.asarray(library.names),
    )


def load_library(
    source: str | os.PathLike,
    *,
    lowres_size: int = 64,
    highres_size: int = 256,
    keep_relative_size: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Library:
    """Loads a patch library.

    Args:
      source: "shapes" (white shapes to tint), "painted" (the same shapes in eight fixed
        colours, for ``colour_space="none"``), "photos" (cut-outs of scikit-image's colour
        photographs), a folder of images, a library ``.npz`` written by ``save_library`` or
        ``clipclop patches build``, or an original Arnheim 3 ``.npy`` patch file.
      lowres_size: square side of the optimisation copy (texels).
      highres_size: square side of the final-render copy.
      keep_relative_size: see ``build_patch_library``.
      cache_dir: where folder and built-in libraries are cached (default
        ``$CLIPCLOP_CACHE`` or ``~/.cache/clipclop_jax``); caching is skipped if unwritable.

    Raises:
      LibraryError: the source is missing, empty, or holds no usable image (one line).
    """
    name = os.fspath(source)
    options = dict(lowres_size=lowres_size, highres_size=highres_size)
    options["keep_relative_size"] = keep_relative_size
    if name in BUILTIN:
        from clipclop_jax.library import builtins as builtin_libraries

        key = {"builtin": name, "version": builtin_libraries.VERSION, **options}
        return _cached(key, cache_dir, lambda: builtin_libraries.cutouts(name), options)
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        files = _image_files(path)
        stamps = [(str(f.relative_to(path)), *_stamp(f)) for f in files]
        key = {"folder": str(path.resolve()), "files": stamps, **options}
        return _cached(key, cache_dir, lambda: _folder_cutouts(path, files), options)
    if not path.exists():
        raise LibraryError(
            f"patch library {name!r} does not exist: pass 'shapes', 'painted', 'photos', a "
            "folder of images, or a .npz/.npy library file."
        )
    if path.suffix.lower() == ".npz":
        cutouts, names = _npz_cutouts(path)
    elif path.suffix.lower() == ".npy":
        cutouts, names = _npy_cutouts(path)
    else:
        raise LibraryError(
            f"patch library {name!r} is a file but not a .npz or .npy library: pass the "
            "folder that holds the images, or a library file."
        )
    return library_from_cutouts(cutouts, names=names, **options)


def _stamp(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise LibraryError(
            f"patch folder {str(folder)!r} is empty: put PNG or JPEG cut-outs in it."
        )
    return files


def _folder_cutouts(folder: pathlib.Path, files: list[pathlib.Path]):
    cutouts, names, skipped = [], [], []
    for file in files:
        relative = str(file.relative_to(folder))
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{relative} (not an image)")
            continue
        try:
            rgba, has_alpha = io.read_rgba(file)
        except io.ImageReadError as error:
            skipped.append(f"{relative} ({str(error).split(': ', 1)[-1]})")
            continue
        cutout = make_cutout(rgba, has_alpha)
        if cutout is None:
            skipped.append(f"{relative} (fully transparent)")
            continue
        cutouts.append(cutout)
        names.append(relative)
    for line in skipped:
        logger.warning("skipped patch %s", line)
    if not cutouts:
        listed = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise LibraryError(
            f"patch folder {str(folder)!r} has no usable image ({listed}): add PNG or JPEG "
            "cut-outs."
        )
    return cutouts, names


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


def _npz_cutouts(path: pathlib.Path):
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


def _npy_cutouts(path: pathlib.Path):
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


def default_cache_dir() -> pathlib.Path:
    root = os.environ.get("CLIPCLOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clipclop_jax"
    )
    return pathlib.Path(root) / "libraries"


def _cached(key: dict, cache_dir, make, options) -> Library:
    """Loads the library cached under ``key``, or makes it (``make() -> cutouts, names``)
    and caches it. A corrupt or unwritable cache is ignored, never fatal."""
    key = {**key, "cache_version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = folder / f"{digest}.npz"
    if file.exists():
        try:
            with np.load(file, allow_pickle=False) as data:
                low = PatchLibrary(data["low_rgba"], data["low_sizes"])
                high = PatchLibrary(data["high_rgba"], data["high_sizes"])
                names = tuple(str(n) for n in np.atleast_1d(data["names"]))
                fingerprint = str(data["fp"])
            for copy in (low, high):
                check_library_arrays(str(file), *copy, names)
            return Library(low, high, names, fingerprint)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            logger.warning("ignoring unreadable library cache %s", file)
    cutouts, names = make()
    library = library_from_cutouts(cutouts, names=names, **options)
    try:
        io.save_npz_atomic(
            file,
            low_rgba=library.low.rgba,
            low_sizes=library.low.sizes,
            high_rgba=library.high.rgba,
            high_sizes=library.high.sizes,
            names=np.asarray(library.names),
            fp=np.asarray(library.fingerprint),
        )
    except OSError as error:
        logger.warning("library cache %s not written (%s)", file, error)
    return library
