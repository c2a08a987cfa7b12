"""On-device image augmentations: random perspective, then a random resized crop.

CLIP scores several distorted crops of each collage rather than the collage itself, so the
optimiser cannot win by painting adversarial pixel patterns that only fool CLIP at one exact
framing (Mirowski et al. 2022, Sec. 3). The original (``arnheim_3/src/training.py``,
``augmentation_transforms``) composes torchvision's ``RandomPerspective(distortion_scale=0.6,
p=1, fill=1)`` and ``RandomResizedCrop(canvas_width, scale=(0.7, 0.9))`` and draws
``num_augs=4`` crops per collage (``configs/config.yaml``).

Here each augmentation is a 3x3 homography drawn from a key. The homographies of one crop
are multiplied into one, and the image is sampled once, bilinearly: one gather per crop
however many augmentations there are, differentiable with respect to the image.

Coordinates: a point is ``(x, y, 1)`` with ``x`` the column and ``y`` the row, pixel centres
at integers (OpenCV's convention). Every matrix here maps *output* coordinates to *input*
coordinates (a backward warp, OpenCV's ``WARP_INVERSE_MAP``): sampling needs that direction,
and composing is then a plain product, ``perspective @ crop``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from clipclop_jax.config import check_field_types

# torchvision's RandomResizedCrop draws up to 10 boxes and keeps the first that fits.
CROP_ATTEMPTS = 10
# A homogeneous w at or below this means the point maps to or beyond the horizon line.
_MIN_W = 1e-6


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The random augmentations applied to each crop, defaults as in the original.

    Attributes:
      perspective_distortion: each image corner moves inwards by up to this fraction of the
        half width (x) and half height (y), in [0, 1] (original: 0.6).
      perspective_probability: chance a crop gets the perspective warp, in [0, 1]
        (original: 1, always).
      crop_scale: (min, max) area of the crop box as a fraction of the image area, within
        (0, 1] (original: (0.7, 0.9)).
      crop_ratio: (min, max) width / height of the crop box before it is resized to the
        output, > 0 (original: torchvision's default (3/4, 4/3)).
      fill: value of output pixels that fall outside the warped image, every channel
        (original: 1, white).
    """

    perspective_distortion: float = 0.6
    perspective_probability: float = 1.0
    crop_scale: tuple[float, float] = (0.7, 0.9)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    fill: float = 1.0

    def __post_init__(self):
        check_field_types(self)
        _check_unit("perspective_distortion", self.perspective_distortion)
        _check_unit("perspective_probability", self.perspective_probability)
        # JSON configs give lists; keep tuples so the config stays hashable.
        scale = _pair("crop_scale", self.crop_scale)
        ratio = _pair("crop_ratio", self.crop_ratio)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"crop_scale={scale} is out of range: use 0 < min <= max <= 1.")
        if not 0.0 < ratio[0] <= ratio[1] < math.inf:
            raise ValueError(f"crop_ratio={ratio} is out of range: use 0 < min <= max < inf.")
        if not math.isfinite(self.fill):
            raise ValueError(f"fill={self.fill!r} is out of range: use a finite number.")
        object.__setattr__(self, "crop_scale", scale)
        object.__setattr__(self, "crop_ratio", ratio)


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} is out of range: use a value in [0, 1].")


def _pair(name: str, value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a pair: use (min, max).") from None
    return low, high


def _size_pair(output_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair, checked positive."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(
            f"output_size={output_size!r} is not valid: use a positive int or (height, width)."
        )
    return size


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3:
        raise ValueError(f"image has shape {image.shape}: expected [H, W, C].")


# Deterministic matrices and the warp.


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
    _check_image(image)
    # Coordinates in float32 whatever the image dtype: bfloat16 cannot address 224 pixels.
    homography = jnp.asarray(homography, jnp.float32)
    if homography.shape != (3, 3):
        raise ValueError(f"homography has shape {homography.shape}: expected [3, 3].")
    out_h, out_w = _size_pair(output_size)
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
    out_h, out_w = _size_pair(output_size)
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


# Random twins. Each draws all its numbers in one call: every threefry call is inlined into
# the compiled step, and ten of them per crop made compiling take seconds.


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
    draws = jax.random.uniform(key, (_PERSPECTIVE_DRAWS,))
    return _perspective_from_draws(draws, image_size, distortion, probability)


_PERSPECTIVE_DRAWS = 9  # 8 corner offsets, 1 for whether to apply


def _perspective_from_draws(draws, image_size, distortion, probability) -> jax.Array:
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
    return _crop_box_from_draws(
        jax.random.uniform(key, (_CROP_DRAWS,)), image_size, scale=scale, ratio=ratio
    )


_CROP_DRAWS = 2 * CROP_ATTEMPTS + 2  # area and ratio per attempt, then top and left


def _crop_box_from_draws(
    draws: jax.Array,
    image_size: tuple[int, int],
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> jax.Array:
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


def random_augment_matrices(
    key: jax.Array,
    image_size: tuple[int, int],
    *,
    num_crops: int,
    output_size: int | tuple[int, int],
    config: AugmentConfig = AugmentConfig(),
) -> jax.Array:
    """One composed homography per crop: the perspective warp, then the resized crop.

    The crop box is drawn on the perspective-warped canvas (of the image's size), as in
    the original, where the crop follows the perspective.

    Args:
      key: PRNG key.
      image_size: (height, width) of the image.
      num_crops: K, crops to draw.
      output_size: int (square) or (height, width) of each crop.
      config: the augmentations' ranges.

    Returns:
      [K, 3, 3] float32 maps from crop to image coordinates.
    """

    def one(draws: jax.Array) -> jax.Array:
        perspective = _perspective_from_draws(
            draws[:_PERSPECTIVE_DRAWS],
            image_size,
            config.perspective_distortion,
            config.perspective_probability,
        )
        top, left, box_h, box_w = _crop_box_from_draws(
            draws[_PERSPECTIVE_DRAWS:], image_size, scale=config.crop_scale, ratio=config.crop_ratio
        )
        crop = crop_matrix(top, left, box_h, box_w, output_size=output_size)
        # crop: output -> warped canvas; perspective: warped canvas -> image.
        return perspective @ crop

    # One draw for all crops: each threefry call is inlined, and compiles slowly.
    draws = jax.random.uniform(key, (num_crops, _PERSPECTIVE_DRAWS + _CROP_DRAWS))
    return jax.vmap(one)(draws)


def random_augment(
    key: jax.Array,
    image: jax.typing.ArrayLike,
    *,
    num_crops: int,
    output_size: int | tuple[int, int],
    config: AugmentConfig = AugmentConfig(),
    use_augmentations: bool = True,
) -> jax.Array:
    """``num_crops`` randomly warped and cropped views of one image, for CLIP to score.

    Each crop is a random perspective followed by a random resized crop (see
    ``AugmentConfig``), composed into one homography and sampled once, bilinearly, with
    ``config.fill`` outside the image. The same key gives the same crops. Write for one
    image and ``jax.vmap`` over a population's keys and images.

    Args:
      key: PRNG key; used only when augmenting.
      image: [H, W, C] float image, e.g. a rendered collage in [0, 1].
      num_crops: K, crops per image (original: 4).
      output_size: int (square) or (height, width) of each crop, e.g. CLIP's input size.
      config: the augmentations' ranges (defaults: the original's).
      use_augmentations: False returns the image resized to ``output_size`` (bilinear,
        antialiased) as one crop; ``num_crops`` must then be 1.

    Returns:
      [K, out_h, out_w, C] crops, differentiable with respect to ``image``.

    Note:
      The original draws one set of augmentations per call and applies it to the whole
      population batch; here each call (so, under vmap, each individual given its own key)
      draws its own. The original resamples twice (perspective, then crop); one composed
      sample here blurs less.
    """
    image = jnp.asarray(image)
    _check_image(image)
    out_h, out_w = _size_pair(output_size)
    if not isinstance(num_crops, int) or num_crops < 1:
        raise ValueError(f"num_crops={num_crops!r} is out of range: use an int >= 1.")
    if not use_augmentations:
        if num_crops != 1:
            raise ValueError(
                f"num_crops={num_crops} with use_augmentations=False would repeat one image: "
                "use num_crops=1."
            )
        # Antialiased, as a plain resize may shrink a large canvas a lot.
        resized = jax.image.resize(image, (out_h, out_w, image.shape[2]), "linear", antialias=True)
        return resized[None]
    matrices = random_augment_matrices(
        key, image.shape[:2], num_crops=num_crops, output_size=(out_h, out_w), config=config
    )
    return jax.vmap(lambda m: warp(image, m, (out_h, out_w), fill=config.fill))(matrices)
