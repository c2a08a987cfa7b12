"""``load_library``: a patch library from a built-in name, a folder or a library file.

``load_library(source)`` reads a built-in library ("shapes", "painted", "photos"), a folder of
images, a library ``.npz`` (``file_formats.save_library``) or an original Arnheim 3 ``.npy``
patch file, and returns a ``Library``. Folder and built-in libraries are cached on disk
(``default_cache_dir``), keyed by the sources' names, sizes and modification times; a corrupt
or unwritable cache is ignored, never fatal.

A new kind of source is a new branch in ``load_library``; its reader of cut-outs goes in
``file_formats`` (a file) or here (a folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import zipfile

import numpy as np

from clipclop_jax import io
from clipclop_jax.library.cutouts import make_cutout
from clipclop_jax.library.file_formats import check_library_arrays, npy_cutouts, npz_cutouts
from clipclop_jax.library.patch_library import (
    Library,
    LibraryError,
    PatchLibrary,
    library_from_cutouts,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
BUILTIN = ("shapes", "painted", "photos")


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
      keep_relative_size: see ``patch_library.build_patch_library``.
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
        cutouts, names = npz_cutouts(path)
    elif path.suffix.lower() == ".npy":
        cutouts, names = npy_cutouts(path)
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
