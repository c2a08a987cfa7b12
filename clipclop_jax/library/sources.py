"""Where patch-library images come from, one image at a time (bounded memory).

``open_sources`` takes folders, image files, original Arnheim 3 ``.npy`` patch files,
library ``.npz`` files, ``tfds:NAME[:SPLIT]`` datasets and in-memory arrays, checks that
they exist, and returns an ``ImageStream``: iterate it to get one ``SourceImage`` per image,
decoded on demand. An unreadable image is not an error: it comes as a ``SourceImage`` with
``rgba=None`` and the reason, so the caller can skip and list it.

A library ``.npz`` is read one square at a time (``npz_reader``); an original ``.npy`` patch
file is checked as ``file_formats`` says. A new source of images is a new ``*_part`` opener
here, chosen in ``open_sources``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np

from clipclop_jax import io
from clipclop_jax.library.file_formats import original_patch_rgba, read_original_patches
from clipclop_jax.library.load import IMAGE_SUFFIXES
from clipclop_jax.library.npz_reader import iter_library_cutouts, read_library_index
from clipclop_jax.library.patch_library import LibraryError, SourceError

TFDS_PREFIX = "tfds:"


class SourceImage(NamedTuple):
    """One image of a source.

    Attributes:
      name: where it came from ("folder/cat.png", "mnist/train#12", "animals.npy#3").
      rgba: [H, W, 4] uint8 straight RGBA, or None if it could not be read.
      has_alpha: whether the image carried transparency.
      error: why it could not be read (None when it could).
      label, score: what a segmentation model said of it, for a patch of a library built
        with one (re-curating keeps them); None otherwise.
    """

    name: str
    rgba: np.ndarray | None
    has_alpha: bool = False
    error: str | None = None
    label: str | None = None
    score: float | None = None


@dataclasses.dataclass(frozen=True)
class _Part:
    count: int | None
    items: Callable[[], Iterator[SourceImage]]


class ImageStream:
    """The images of several sources, read lazily; ``total`` is None if unknown."""

    def __init__(self, parts: list[_Part]):
        self._parts = parts
        counts = [p.count for p in parts]
        self.total = None if None in counts else sum(counts)

    def __iter__(self) -> Iterator[SourceImage]:
        for part in self._parts:
            yield from part.items()


def open_sources(
    sources, *, data_dir: str | os.PathLike | None = None, image_key: str | None = None
) -> ImageStream:
    """Opens the sources of a library build (nothing is decoded yet).

    Args:
      sources: one source or a list of them. A source is a folder (all image files under
        it, sorted), an image file, an original ``.npy`` patch file (``[W, H, 3|4]``
        patches; black is transparent in 3-channel ones), a library ``.npz``,
        ``"tfds:NAME[:SPLIT]"`` (split defaults to ``train`` and may slice, e.g.
        ``train[:1000]``), an [H, W(, C)] array, or a ``(name, array)`` pair. An iterator
        (e.g. a generator) may yield arrays, pairs or paths; it is consumed once.
      data_dir: where TFDS datasets are prepared (default: TFDS's own default).
      image_key: the TFDS feature holding the image (default: ``image``, else the first
        uint8 [H, W, C] feature).

    Raises:
      SourceError: a path does not exist or a dataset cannot be read offline.
    """
    if isinstance(sources, str | os.PathLike | np.ndarray) or _is_pair(sources):
        sources = [sources]
    if not isinstance(sources, list | tuple):
        return ImageStream([_Part(_length(sources), lambda: _memory_items(sources))])
    parts = []
    for index, source in enumerate(sources):
        if isinstance(source, np.ndarray) or _is_pair(source):
            parts.append(_Part(1, lambda s=source, i=index: _memory_items([s], start=i)))
        elif os.fspath(source).startswith(TFDS_PREFIX):
            parts.append(_tfds_part(os.fspath(source), data_dir, image_key))
        else:
            parts.append(_path_part(pathlib.Path(os.fspath(source)).expanduser()))
    return ImageStream(parts)


def _is_pair(item) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


def as_rgba(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """An in-memory image -> ([H, W, 4] uint8 RGBA, has_alpha).

    Accepts [H, W] or [H, W, 1-4]; uint8, bool, uint16 (by its full range) or float in
    [0, 1]. Raises ``io.ImageReadError`` for anything else.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise io.ImageReadError(f"array of shape {image.shape} is not an [H, W, 1-4] image")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = io.to_uint8(image)
    elif np.issubdtype(image.dtype, np.integer):
        image = np.clip(image, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise io.ImageReadError(f"array of dtype {image.dtype} is not an image")
    channels = image.shape[2]
    has_alpha = channels in (2, 4)
    colour = image[..., :1].repeat(3, -1) if channels <= 2 else image[..., :3]
    alpha = image[..., -1:] if has_alpha else np.full(image.shape[:2] + (1,), 255, np.uint8)
    return np.ascontiguousarray(np.concatenate([colour, alpha], -1)), has_alpha


def _decoded(name: str, read: Callable[[], tuple[np.ndarray, bool]]) -> SourceImage:
    try:
        rgba, has_alpha = read()
    except io.ImageReadError as error:
        return SourceImage(name, None, False, str(error).split(": ", 1)[-1])
    return SourceImage(name, rgba, has_alpha)


def _memory_items(items: Iterable, start: int = 0) -> Iterator[SourceImage]:
    for index, item in enumerate(items, start):
        if _is_pair(item):
            name, image = item
        elif isinstance(item, str | os.PathLike):
            name, path = os.fspath(item), item
            yield _decoded(name, lambda p=path: io.read_rgba(p))
            continue
        else:
            name, image = f"array#{index}", item
        yield _decoded(name, lambda i=image: as_rgba(i))


def _path_part(path: pathlib.Path) -> _Part:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
        )
        return _Part(len(files), lambda: _file_items(files, path))
    if not path.is_file():
        raise SourceError(f"patch source {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _Part(_npy_length(path), lambda: _npy_items(path))
    if suffix == ".npz":
        return _Part(_library_length(path), lambda: _library_items(path))
    return _Part(1, lambda: _file_items([path], path.parent))


def _file_items(files: list[pathlib.Path], root: pathlib.Path) -> Iterator[SourceImage]:
    for file in files:
        name = str(pathlib.Path(root.name) / file.relative_to(root))
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            yield SourceImage(name, None, False, "not an image file")
        else:
            yield _decoded(name, lambda f=file: io.read_rgba(f))


def _npy_length(path: pathlib.Path) -> int:
    # Unpickled once here, so that a file that pickles anything but arrays, or is not a
    # sequence of patches, stops the build before any image is read.
    try:
        return len(read_original_patches(path))
    except LibraryError as error:
        raise SourceError(str(error)) from None


def _npy_items(path: pathlib.Path) -> Iterator[SourceImage]:
    patches = read_original_patches(path)
    for index, patch in enumerate(patches):
        yield _decoded(f"{path.name}#{index}", lambda p=patch: _npy_patch(p))


def _npy_patch(patch) -> tuple[np.ndarray, bool]:
    try:
        return original_patch_rgba(patch), True
    except ValueError as error:
        raise io.ImageReadError(f"patch {error}") from None


def _library_length(path: pathlib.Path) -> int:
    return len(read_library_index(path)[1])


def _library_items(path: pathlib.Path) -> Iterator[SourceImage]:
    for name, cutout, label, score in iter_library_cutouts(path):
        score = None if np.isnan(score) else score
        yield SourceImage(name, cutout, True, None, label or None, score)


def parse_tfds(spec: str) -> tuple[str, str]:
    """``"tfds:NAME[:SPLIT]"`` -> (name, split); a version may follow the name (mnist:3.0.1)."""
    match = re.fullmatch(r"tfds:([\w/.-]+?(?::\d+\.\d+\.\d+)?)(?::(.+))?", spec)
    if not match:
        raise SourceError(f"{spec!r} is not tfds:NAME[:SPLIT], e.g. tfds:oxford_flowers102:train.")
    return match.group(1), match.group(2) or "train"


def _tfds_part(spec: str, data_dir, image_key: str | None) -> _Part:
    name, split = parse_tfds(spec)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise SourceError(
            f"{spec} needs tensorflow-datasets: pip install 'clipclop-jax[tfds]'."
        ) from None
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        # A random-access source reads array_record files without TensorFlow.
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.DatasetNotFoundError:
        raise SourceError(
            f"there is no TFDS dataset {name!r}: see https://www.tensorflow.org/datasets/catalog."
        ) from None
    except Exception as error:  # not prepared, or prepared as TFRecord only
        folder = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise SourceError(
            f"TFDS dataset {name!r} split {split!r} cannot be read offline from {folder} "
            f"({reason}): on a machine with internet run `tfds build {name.split(':')[0]} "
            "--file_format=array_record --data_dir DIR`, copy DIR here and pass --data-dir DIR "
            "(data_dir= in the API)."
        ) from None
    label = f"{name}/{split}"
    return _Part(len(source), lambda: _tfds_items(source, label, image_key))


def _tfds_items(source, label: str, image_key: str | None) -> Iterator[SourceImage]:
    key = image_key
    for index in range(len(source)):
        example = source[index]
        if key is None:
            key = "image" if "image" in example else _image_feature(example, label)
        if key not in example:
            raise SourceError(f"{label} has no feature {key!r}: features are {sorted(example)}.")
        yield _decoded(f"{label}#{index}", lambda image=example[key]: as_rgba(image))


def _image_feature(example: dict, label: str) -> str:
    for key, value in example.items():
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype == np.uint8:
            return key
    raise SourceError(f"{label} has no image feature: pass image_key (--image-key) naming one.")
