"""Random perspective warps and random resized crops, as homographies (torchvision's rules).

The random twins of ``warp``'s matrices: ``random_perspective_matrix`` (torchvision's
``RandomPerspective``), ``random_crop_box`` and ``random_crop_matrix`` (its
``RandomResizedCrop``). Each turns uniform draws into a matrix in a ``*_from_draws`` function
(``perspective_from_draws``, ``crop_box_from_draws``, taking ``PERSPECTIVE_DRAWS`` and
``CROP_DRAWS`` numbers), so that ``augment.random_augment_matrices`` can draw every number of
every crop in one call. A new random transform is a new ``random_*`` function with its
``*_from_draws`` core here; ``augment`` composes it.

Coordinates and matrix direction as in ``warp``: output to input, pixel centres at integers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from clipclop_jax.guidance.warp import crop_matrix, image_corners, perspective_matrix

# torchvision's RandomResizedCrop draws up to 10 boxes and keeps the first that fits.
CROP_ATTEMPTS = 10

# Each random function draws all its numbers in one call: every threefry call is inlined
# into the compiled step, and ten of them per crop made compiling take seconds.


def _inward_points(image_size: tuple[int, int], fractions: jax.Array) -> jax.Array:
    """Image corners moved inwards by ``fractions`` [4, 2] of the half size."""
    height, width = image_size
    half = jnp.asarray([[(width - 1) / 2, (height - 1) / 2]], jnp.float32)
    inward = jnp.asarray([[1, 1], [-1, 1], [-1, -1], [1, -1]], jnp.float32)
    return image_corners(height, width) + inward * half * fractions


def random_perspective_matrix(
    key: jax.Array,
    image_size: tuple[int, int],
    *,
    distortion: jax.typing.ArrayLike,
    probability: jax.typing.ArrayLike,
) -> jax.Array:
    """A random perspective warp of an image to its own size (torchvision's rule).

    Each image corner moves inwards by a uniform amount in ``[0, distortion * half size]``
    along x and, independently, along y; ``perspective_matrix`` takes the corners there.

    Args:
      key: PRNG key.
      image_size: (height, width) of the image (and of the warped output).
      distortion: in [0, 1] (may be traced).
      probability: chance of the warp; otherwise the identity (may be traced).

    Returns:
      [3, 3] float32 map from output to input coordinates.

    Note:
      torchvision draws whole pixels; these are continuous. The half size is measured
      between corner centres, ``(W - 1) / 2``. Up to ``distortion=2/3`` (the original's
      0.6 included) the moved corners always make a convex quadrilateral; beyond, two
      corners can cross a diagonal and fold it, as in torchvision, and ``warp`` fills what
      lies past the fold's horizon.
    """
    draws = jax.random.uniform(key, (PERSPECTIVE_DRAWS,))
    return perspective_from_draws(draws, image_size, distortion, probability)


PERSPECTIVE_DRAWS = 9  # 8 corner offsets, 1 for whether to apply


def perspective_from_draws(draws, image_size, distortion, probability) -> jax.Array:
    """``random_perspective_matrix`` from its ``PERSPECTIVE_DRAWS`` uniform draws in [0, 1)."""
    end_points = _inward_points(image_size, distortion * draws[:8].reshape(4, 2))
    matrix = perspective_matrix(image_corners(*image_size), end_points)
    return jnp.where(draws[8] < probability, matrix, jnp.eye(3, dtype=matrix.dtype))


def random_crop_box(
    key: jax.Array,
    image_size: tuple[int, int],
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> jax.Array:
    """A random crop box with torchvision's ``RandomResizedCrop`` rule.

    Draws up to ``CROP_ATTEMPTS`` boxes with area fraction uniform in ``scale`` and
    log-uniform aspect ratio in ``ratio``, and keeps the first that fits in the image; if
    none fits, the largest centred box whose ratio is within ``ratio``. The position is
    uniform over the places the box fits.

    Args:
      key: PRNG key.
      image_size: (height, width) of the image.
      scale: (min, max) area fraction.
      ratio: (min, max) width / height.

    Returns:
      [4] float32 ``(top, left, height, width)`` in pixels, as ``crop_matrix`` takes.

    Note:
      torchvision rounds the box to whole pixels; these are continuous.
    """
    return crop_box_from_draws(
        jax.random.uniform(key, (CROP_DRAWS,)), image_size, scale=scale, ratio=ratio
    )


CROP_DRAWS = 2 * CROP_ATTEMPTS + 2  # area and ratio per attempt, then top and left


def crop_box_from_draws(
    draws: jax.Array,
    image_size: tuple[int, int],
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> jax.Array:
    """``random_crop_box`` from its ``CROP_DRAWS`` uniform draws in [0, 1)."""
    height, width = image_size
    area_draws, ratio_draws = draws[:CROP_ATTEMPTS], draws[CROP_ATTEMPTS:-2]
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area_draws)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_low + (log_high - log_low) * ratio_draws)
    box_w = jnp.sqrt(area * aspect)
    box_h = jnp.sqrt(area / aspect)
    fits = (box_w <= width) & (box_h <= height)
    first = jnp.argmax(fits)  # index of the first box that fits (0 if none does)

    # The fallback, as torchvision: the whole image, narrowed to the nearest allowed ratio.
    if width / height < ratio[0]:
        fallback_w, fallback_h = width, width / ratio[0]
    elif width / height > ratio[1]:
        fallback_w, fallback_h = height * ratio[1], height
    else:
        fallback_w, fallback_h = width, height
    any_fits = jnp.any(fits)
    box_h = jnp.where(any_fits, box_h[first], fallback_h)
    box_w = jnp.where(any_fits, box_w[first], fallback_w)
    position = jnp.where(any_fits, draws[-2:], 0.5)  # [2] fractions of the free room
    top = position[0] * (height - box_h)
    left = position[1] * (width - box_w)
    return jnp.stack([top, left, box_h, box_w]).astype(jnp.float32)


def random_crop_matrix(
    key: jax.Array,
    image_size: tuple[int, int],
    *,
    output_size: int | tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> jax.Array:
    """A random resized crop (``random_crop_box`` resized to ``output_size``) as [3, 3]."""
    top, left, box_h, box_w = random_crop_box(key, image_size, scale=scale, ratio=ratio)
    return crop_matrix(top, left, box_h, box_w, output_size=output_size)
