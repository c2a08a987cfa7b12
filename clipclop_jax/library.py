"""Patch libraries: the cut-outs a collage is made of, as padded device-ready arrays."""

from __future__ import annotations

from typing import NamedTuple

import jax


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
