"""Per-patch geometry (canvas pixel -> patch texel) and colour transforms."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax.config import CollageConfig


def texel_size(config: CollageConfig, library_side: int) -> float:
    """Canvas pixels per library texel at scale 1.

    A library square of side ``L`` spans ``min(H, W) / patch_max_proportion`` canvas pixels,
    whatever ``L`` is, so low- and high-resolution libraries draw the same geometry.
    """
    return min(config.canvas_height, config.canvas_width) / (
        config.patch_max_proportion * library_side
    )


def sampling_matrix(
    rotation: jax.Array, scale: jax.Array, squeeze: jax.Array, shear: jax.Array
) -> jax.Array:
    """[..., 2, 2] matrix taking a canvas offset (x, y) from the patch centre to a patch offset.

    ``M = [[scale, shear], [0, scale * squeeze]] @ [[cos r, -sin r], [sin r, cos r]]``, the
    original's order: rotate, then scale/shear. Both offsets are in the same units; the caller
    converts canvas pixels to texels.
    """
    cos, sin = jnp.cos(rotation), jnp.sin(rotation)
    zero = jnp.zeros_like(scale)
    upper = jnp.stack([scale, shear], -1)
    lower = jnp.stack([zero, scale * squeeze], -1)
    shape_matrix = jnp.stack([upper, lower], -2)
    rot = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    return shape_matrix @ rot


def patch_corners(params, config: CollageConfig, library_side: int) -> np.ndarray:
    """[N, 4, 2] float64 canvas corners (x, y) in pixels of each patch's library square:
    the inverse of the renderer's map ``texel = M / k @ (p - centre) + L / 2``.

    Corners in the order top-left, top-right, bottom-right, bottom-left of the square's own
    frame. The drawn cut-out lies inside (its alpha reaches 1/2 at the square's edge for
    an opaque texel there, and is 0 half a texel beyond).

    Args:
      params: one collage's ``CollageParams`` (numpy or jax arrays).
      config: canvas size and ``patch_max_proportion``.
      library_side: ``L`` of the library the collage is drawn from (the result does not
        depend on it: ``k L`` is fixed).
    """
    height, width = config.canvas_shape
    rotation, scale, squeeze, shear = (
        np.asarray(v, np.float64)
        for v in (params.rotation, params.scale, params.squeeze, params.shear)
    )
    cos, sin = np.cos(rotation), np.sin(rotation)
    shape_matrix = np.stack(
        [np.stack([scale, shear], -1), np.stack([np.zeros_like(scale), scale * squeeze], -1)], -2
    )
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    # The same matrix as ``sampling_matrix``, in float64 numpy so that hit-testing compiles
    # nothing.
    matrix = shape_matrix @ rot / texel_size(config, library_side)
    centre = (np.asarray(params.translation, np.float64) + 1.0) * 0.5 * np.array([width, height])
    half = library_side / 2.0
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])  # (u, v)
    offsets = np.einsum("nij,cj->nci", np.linalg.inv(matrix), corners)
    return centre[:, None, :] + offsets


def max_patch_radius(config: CollageConfig, library_side: int) -> float:
    """Largest canvas distance (pixels) from a patch centre to any pixel it can touch.

    Takes the worst case over the configured scale, squeeze and shear ranges (any rotation)
    of the library square's corners, plus one texel for bilinear support. Windows of this
    radius never clip a patch.
    """
    half = library_side / 2.0 + 1.0
    worst = 0.0
    grid = 9
    for s, q, h in itertools.product(
        np.linspace(config.min_scale, config.max_scale, grid),
        np.linspace(config.min_squeeze, config.max_squeeze, grid),
        np.linspace(config.min_shear, config.max_shear, grid),
    ):
        # Inverse of the shape matrix: texel offset -> canvas offset (before rotation).
        inverse = np.array([[1.0 / s, -h / (s * s * q)], [0.0, 1.0 / (s * q)]])
        for corner in ((1, 1), (1, -1)):
            worst = max(worst, float(np.linalg.norm(inverse @ np.array(corner)) * half))
    # The norm grows as scale and squeeze shrink and as |shear| grows, so the worst case is
    # at the ends of the ranges, which the grid contains.
    return worst * texel_size(config, library_side)


def window_shape(config: CollageConfig, library_side: int) -> tuple[int, int]:
    """Static (height, width) of the canvas window each patch is drawn into."""
    side = 2 * math.ceil(max_patch_radius(config, library_side)) + 4
    return (min(side, config.canvas_height), min(side, config.canvas_width))


def colourise(rgb: jax.Array, colour: jax.Array, colour_space: str) -> jax.Array:
    """Applies one patch's colour parameters to its sampled RGB.

    Args:
      rgb: [..., 3] straight RGB in [0, 1].
      colour: [3] the patch's colour parameters.
      colour_space: "rgb": per-channel gains; "hsv": a tint ``hsv_to_rgb(hue, sat, val)``
        multiplying the pixel (so white cut-outs take the tint's colour); "none": unchanged.

    Note:
      The original's "HSV space" multiplies the pixel's R, G, B by the hue, saturation and
      value coefficients and reads the product as HSV; we multiply by the tint in RGB, which
      colours white cut-outs the same way and keeps a photo's detail.
    """
    if colour_space == "none":
        return rgb
    tint = colour if colour_space == "rgb" else hsv_to_rgb(colour)
    return rgb * jnp.reshape(tint, (1,) * (rgb.ndim - 1) + (3,))


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """[..., 3] (hue in radians, saturation, value) -> [..., 3] RGB; differentiable."""
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h = jnp.mod(hue / (2 * jnp.pi), 1.0) * 6.0
    # Each channel is a piecewise-linear "tent" in hue: a closed form without branches.
    offsets = jnp.array([5.0, 3.0, 1.0], hsv.dtype).reshape((1,) * h.ndim + (3,))
    k = jnp.mod(offsets + h[..., None], 6.0)
    tent = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
    return val[..., None] * (1.0 - sat[..., None] * tent)
