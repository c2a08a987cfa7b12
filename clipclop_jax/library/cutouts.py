"""Cut-outs: an RGBA image whose alpha is the mask of the object it shows (NumPy only).

The patch library is made of cut-outs. Images with transparency are cut-outs already; an
image without it gets ``remove_background``: if its border is (nearly) one colour, as in a
studio photo or a scan on paper, that colour becomes transparent with a soft edge; otherwise
the whole rectangle is kept, opaque. docs/libraries.md states the rule with its numbers.
"""

from __future__ import annotations

import numpy as np

# Alpha (0-255) at or below which a pixel counts as empty when cropping to the bounding box.
ALPHA_EMPTY = 2
# Background removal: share of border pixels that must match the median border colour for
# the border to count as uniform, and the colour distances (max over RGB, 0-255) below
# which a pixel is background (alpha 0) and above which it is object (alpha 255).
UNIFORM_BORDER_SHARE = 0.9
BACKGROUND_DISTANCE = 16
OBJECT_DISTANCE = 40


def remove_background(rgb: np.ndarray) -> np.ndarray:
    """Alpha for an image without transparency.

    Args:
      rgb: [H, W, 3] uint8.

    Returns:
      [H, W] uint8 alpha: the uniform border colour removed with a soft ramp between
      ``BACKGROUND_DISTANCE`` and ``OBJECT_DISTANCE``; 255 everywhere if the border is not
      uniform (then the image is a rectangular cut-out).
    """
    rgb = np.asarray(rgb, np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    reference = np.median(border, axis=0)
    border_distance = np.abs(border - reference).max(axis=-1)
    if np.mean(border_distance <= BACKGROUND_DISTANCE) < UNIFORM_BORDER_SHARE:
        return np.full(rgb.shape[:2], 255, np.uint8)
    distance = np.abs(rgb - reference).max(axis=-1).astype(np.float32)
    ramp = (distance - BACKGROUND_DISTANCE) / (OBJECT_DISTANCE - BACKGROUND_DISTANCE)
    return np.round(np.clip(ramp, 0.0, 1.0) * 255.0).astype(np.uint8)


def black_is_transparent(rgb: np.ndarray) -> np.ndarray:
    """The original Arnheim 3 rule for 3-channel patch files: black pixels are transparent."""
    return np.where(np.asarray(rgb).sum(axis=-1) > 0, 255, 0).astype(np.uint8)


def crop_to_alpha(rgba: np.ndarray) -> np.ndarray | None:
    """The cut-out cropped to the bounding box of its visible pixels; None if there are none.

    Args:
      rgba: [H, W, 4] uint8 straight RGBA.
    """
    visible = rgba[..., 3] > ALPHA_EMPTY
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        return None
    return rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def make_cutout(rgba: np.ndarray, has_alpha: bool) -> np.ndarray | None:
    """An image as read (``io.read_rgba``) -> a cropped cut-out, or None if it is empty."""
    rgba = np.array(rgba, np.uint8)
    if not has_alpha:
        rgba[..., 3] = remove_background(rgba[..., :3])
    return crop_to_alpha(rgba)


def feather(alpha: np.ndarray, radius: float) -> np.ndarray:
    """Softens a mask's edge over about ``radius`` pixels, inwards only (no halo outside).

    Args:
      alpha: [H, W] uint8 or float mask.
      radius: edge width in pixels (0: unchanged).

    Returns:
      [H, W] uint8: the Gaussian-blurred mask, kept at 0 wherever the mask was 0.
    """
    from scipy import ndimage

    alpha = np.asarray(alpha, np.float32)
    if radius <= 0:
        return np.round(np.clip(alpha, 0, 255)).astype(np.uint8)
    blurred = ndimage.gaussian_filter(alpha, sigma=radius / 2.0, mode="constant")
    # Doubling and clipping keeps the interior fully opaque; only the rim ramps down.
    soft = np.minimum(alpha, np.clip(2.0 * blurred - 255.0, 0.0, 255.0))
    return np.round(soft).astype(np.uint8)
