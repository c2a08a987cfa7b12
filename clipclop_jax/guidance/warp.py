"""Homographies and the warp that samples an image through one, in one gather.

Each augmentation of ``augment`` is a 3x3 homography; the homographies of one crop are
multiplied into one, and the image is sampled once, bilinearly, by ``warp``: one gather per
crop however many augmentations there are, differentiable with respect to the image.

Main names: ``warp`` (sample an image through a homography), and the deterministic matrices
``crop_matrix`` (crop a box and resize it), ``perspective_matrix`` (move four corners) and
``image_corners``; ``size_pair`` and ``check_image`` are the argument checks the augmentations
share. Their random twins live in ``random_warps``. A new kind of geometric transform is a new
``*_matrix`` function here (and its ``random_*`` twin there).

Coordinates: a point is ``(x, y, 1)`` with ``x`` the column and ``y`` the row, pixel centres
at integers (OpenCV's convention). Every matrix here maps *output* coordinates to *input*
coordinates (a backward warp, OpenCV's ``WARP_INVERSE_MAP``): sampling needs that direction,
and composing is then a plain product, ``perspective @ crop``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# A homogeneous w at or below this means the point maps to or beyond the horizon line.
_MIN_W = 1e-6


def size_pair(output_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair, checked positive."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(
            f"output_size={output_size!r} is not valid: use a positive int or (height, width)."
        )
    return size


def check_image(image: jax.Array) -> None:
    """Raises a ValueError unless ``image`` is [H, W, C]."""
    if image.ndim != 3:
        raise ValueError(f"image has shape {image.shape}: expected [H, W, C].")


def warp(
    image: jax.typing.ArrayLike,
    homography: jax.typing.ArrayLike,
    output_size: int | tuple[int, int],
    *,
    fill: float = 0.0,
) -> jax.Array:
    """Samples ``image`` through a homography, bilinearly, in one gather.

    Output pixel ``(x, y)`` takes the image's bilinear value at ``homography @ (x, y, 1)``.
    Taps outside the image weigh in ``fill`` instead, so edges blend into the fill as in
    ``cv2.warpPerspective(..., INTER_LINEAR | WARP_INVERSE_MAP, BORDER_CONSTANT)`` (and in
    torchvision, which warps a mask beside the image for the same effect).

    Args:
      image: [H, W, C] float image.
      homography: [3, 3] map from output to input pixel coordinates (see the module doc).
      output_size: int (square) or (height, width) of the output.
      fill: value for what falls outside the image (the default 0; ``random_augment``
        passes ``AugmentConfig.fill``).

    Returns:
      [out_h, out_w, C] image, differentiable with respect to ``image`` (and, almost
      everywhere, to ``homography``).
    """
    image = jnp.asarray(image)
    check_image(image)
    # Coordinates in float32 whatever the image dtype: bfloat16 cannot address 224 pixels.
    homography = jnp.asarray(homography, jnp.float32)
    if homography.shape != (3, 3):
        raise ValueError(f"homography has shape {homography.shape}: expected [3, 3].")
    out_h, out_w = size_pair(output_size)
    height, width, channels = image.shape

    y, x = jnp.meshgrid(
        jnp.arange(out_h, dtype=jnp.float32), jnp.arange(out_w, dtype=jnp.float32), indexing="ij"
    )
    points = jnp.stack([x.ravel(), y.ravel(), jnp.ones_like(x.ravel())])  # [3, N]
    mapped = homography @ points
    # Points at or past the horizon of a strong perspective have no sensible source: fill.
    in_front = mapped[2] > _MIN_W
    w = jnp.where(in_front, mapped[2], 1.0)
    # Clamping far-away points keeps the int cast safe; their taps stay outside either way.
    src_x = jnp.clip(mapped[0] / w, -2.0, width + 1.0)
    src_y = jnp.clip(mapped[1] / w, -2.0, height + 1.0)

    x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
    fx, fy = src_x - x0, src_y - y0
    tap_x = jnp.stack([x0, x0 + 1, x0, x0 + 1])  # [4, N]
    tap_y = jnp.stack([y0, y0, y0 + 1, y0 + 1])
    weights = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    inside = (tap_x >= 0) & (tap_x <= width - 1) & (tap_y >= 0) & (tap_y <= height - 1)
    weights = jnp.where(inside & in_front[None], weights, 0.0)
    index = jnp.clip(tap_y, 0, height - 1).astype(jnp.int32) * width + jnp.clip(
        tap_x, 0, width - 1
    ).astype(jnp.int32)
    taps = image.reshape(height * width, channels)[index]  # [4, N, C]: the one gather
    coverage = jnp.sum(weights, axis=0)  # [N]
    out = jnp.sum(weights[..., None] * taps, axis=0) + fill * (1.0 - coverage)[:, None]
    out = out.reshape(out_h, out_w, channels)
    return out.astype(image.dtype) if jnp.issubdtype(image.dtype, jnp.floating) else out


def crop_matrix(
    top: jax.typing.ArrayLike,
    left: jax.typing.ArrayLike,
    height: jax.typing.ArrayLike,
    width: jax.typing.ArrayLike,
    *,
    output_size: int | tuple[int, int],
) -> jax.Array:
    """Homography of cropping a box and resizing it to ``output_size``.

    The box is given by its edges, as torchvision's ``(i, j, h, w)``: it covers columns
    ``[left, left + width]`` and rows ``[top, top + height]`` of pixel edges, so
    ``crop_matrix(0, 0, H, W, output_size=(h, w))`` is a plain resize with half-pixel
    centres (``jax.image.resize``, ``align_corners=False``). Sub-pixel boxes are fine.

    Args:
      top, left: box corner in pixels (scalars, may be traced).
      height, width: box size in pixels, > 0.
      output_size: int (square) or (height, width) of the output.

    Returns:
      [3, 3] float32 map from output to input pixel coordinates.
    """
    out_h, out_w = size_pair(output_size)
    sx = jnp.asarray(width, jnp.float32) / out_w
    sy = jnp.asarray(height, jnp.float32) / out_h
    # Output centre u sits at edge coordinate u + 0.5; input centres sit half a pixel in.
    tx = jnp.asarray(left, jnp.float32) + 0.5 * sx - 0.5
    ty = jnp.asarray(top, jnp.float32) + 0.5 * sy - 0.5
    zero, one = jnp.zeros_like(sx), jnp.ones_like(sx)
    return jnp.stack(
        [jnp.stack([sx, zero, tx]), jnp.stack([zero, sy, ty]), jnp.stack([zero, zero, one])]
    )


def perspective_matrix(
    start_points: jax.typing.ArrayLike, end_points: jax.typing.ArrayLike
) -> jax.Array:
    """Homography of the perspective warp that moves ``start_points`` to ``end_points``.

    As torchvision's ``F.perspective(img, startpoints, endpoints)``: the image content at
    each start point appears at the matching end point. The matrix maps output to input,
    so ``H @ (end, 1)`` is proportional to ``(start, 1)``.

    Args:
      start_points: [4, 2] (x, y) corners of a convex quadrilateral in the input, in order
        around it (as ``image_corners``).
      end_points: [4, 2] (x, y) corners of a convex quadrilateral in the output, same order.

    Returns:
      [3, 3] float32 homography, scaled so that its homogeneous ``w`` is 1 at the centroid
      of ``end_points``: positive over the whole end quadrilateral, as ``warp`` needs.
    """
    start = jnp.asarray(start_points, jnp.float32)
    end = jnp.asarray(end_points, jnp.float32)
    if start.shape != (4, 2) or end.shape != (4, 2):
        raise ValueError(
            f"start_points {start.shape} and end_points {end.shape}: expected [4, 2] each."
        )
    # Through the unit square, in closed form: no linear solve, so it compiles small.
    matrix = _square_to_quad(start) @ _adjugate(_square_to_quad(end))
    centroid = jnp.concatenate([jnp.mean(end, axis=0), jnp.ones((1,), jnp.float32)])
    return matrix / jnp.dot(matrix[2], centroid)


def _square_to_quad(quad: jax.Array) -> jax.Array:
    """[3, 3] homography taking the unit square's corners (0,0), (1,0), (1,1), (0,1) to the
    [4, 2] ``quad`` (Heckbert 1989, "Fundamentals of Texture Mapping", Sec. 2.2.3)."""
    # Rows: p1 - p2, p3 - p2 and p0 - p1 + p2 - p3 (zero for a parallelogram).
    diffs = jnp.asarray([[0, 1, -1, 0], [0, 0, -1, 1], [1, -1, 1, -1]], jnp.float32) @ quad
    # The perspective terms (g, h) solve g (p1 - p2) + h (p3 - p2) = p0 - p1 + p2 - p3.
    (a, b), (c, d) = diffs[0], diffs[1]
    det = a * d - b * c  # zero only for a degenerate quad
    g = (diffs[2, 0] * d - diffs[2, 1] * c) / det
    h = (a * diffs[2, 1] - b * diffs[2, 0]) / det
    # Columns, homogeneous: (1 + g) p1 - p0, (1 + h) p3 - p0, p0.
    zero = jnp.zeros_like(g)
    weights = jnp.stack(
        [
            jnp.stack([-1 + zero, 1 + g, zero, zero]),
            jnp.stack([-1 + zero, zero, zero, 1 + h]),
            jnp.stack([1 + zero, zero, zero, zero]),
        ]
    )  # [3, 4]
    corners = jnp.concatenate([quad, jnp.ones((4, 1), jnp.float32)], axis=1)  # [4, 3]
    return (weights @ corners).T


def _adjugate(m: jax.Array) -> jax.Array:
    """Adjugate of a [3, 3] matrix: its inverse times its determinant, which a homography
    may drop (it is defined up to scale). Column i is row i+1 cross row i+2."""
    rows_1, rows_2 = m[jnp.asarray([1, 2, 0])], m[jnp.asarray([2, 0, 1])]
    return jnp.cross(rows_1, rows_2).T


def image_corners(height: int, width: int) -> jax.Array:
    """[4, 2] (x, y) centres of the corner pixels: top-left, top-right, bottom-right,
    bottom-left."""
    return jnp.asarray(
        [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], jnp.float32
    )
