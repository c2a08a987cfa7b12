"""Patch libraries as arrays: the cut-outs a collage is made of, padded into squares.

``PatchLibrary`` is one resolution as the renderer reads it; ``Library`` holds a
low-resolution copy for optimisation and a high-resolution copy for the final render, plus a
fingerprint that saved collages record. ``library_from_cutouts`` makes one from cut-outs
(``square_patch`` places each in its square, ``build_patch_library`` stacks them) and
``cutouts_from_library`` takes them out again. Loaders raise ``LibraryError`` for bad input
(``SourceError``, a kind of it, for a source that cannot be opened at all).

Where the cut-outs come from lives above: ``load`` (``load_library``), ``file_formats``
(``save_library`` and the checks), ``npz_reader`` and ``sources``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image


class LibraryError(ValueError):
    """A patch library cannot be made from what was given; the message says what to do."""


class SourceError(LibraryError):
    """A source cannot be opened at all (missing path, dataset not prepared offline)."""


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
