"""Render one collage to an RGB image, drawing each patch only inside a window around it.

Every render mode is a per-pixel ratio of sums over patches, so each patch's contribution is
computed on a small window of the canvas (big enough for the largest patch the configured
ranges allow; see ``transforms.window_shape``) and scatter-added into a few canvas-sized
accumulators. The cost grows with ``num_patches * window`` instead of
``num_patches * canvas``. docs/parameters.md gives the formulas.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from clipclop_jax import xla_options
from clipclop_jax.collage.params import Collage
from clipclop_jax.collage.transforms import colourise, sampling_matrix, texel_size, window_shape
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

# The original's constants (arnheim_3/src/rendering.py).
EPSILON = 1e-8
OPACITY_TEMPERATURE = 0.1
OPACITY_ZERO_OFFSET = -5.0
OPACITY_MASK_THRESHOLD = 0.5


def render(
    collage: Collage,
    library: PatchLibrary,
    background: jax.Array,
    config: CollageConfig,
    *,
    windowed: bool = True,
) -> jax.Array:
    """Renders one collage.

    Args:
      collage: one collage (no population axis; vmap for a population), of any number of
        patches: the count comes from its arrays, not from ``config.num_patches``.
      library: the patch library (any resolution: geometry is independent of its side).
      background: [H, W, 3] float32 in [0, 1], H, W = the config's canvas.
      config: canvas size, render mode, colour space, ranges.
      windowed: False draws every patch over the whole canvas (slow; for tests/benchmarks).

    Returns:
      [H, W, 3] float32 image in [0, 1].
    """
    height, width = config.canvas_shape
    if background.shape != (height, width, 3):
        raise ValueError(
            f"background has shape {background.shape}; expected {(height, width, 3)} "
            "for this canvas."
        )
    window = window_shape(config, library.side) if windowed else (height, width)
    sums = accumulate(collage, library, config, window)
    return composite(sums, background, config, num_patches=collage.patch_index.shape[0])


def accumulate(
    collage: Collage, library: PatchLibrary, config: CollageConfig, window: tuple[int, int]
) -> jax.Array:
    """[H, W, C] per-pixel sums over patches that ``composite`` turns into the image.

    Channels: 0-2 sum of colour * alpha weights; then for "masked_transparency" the sum of
    alphas; for "opacity" the softmax denominator (less the patches that miss the pixel) and
    the sum of alphas.
    """
    height, width = config.canvas_shape
    origins, contributions = patch_contributions(collage, library, config, window)
    # One block update per patch: XLA copies whole window rows instead of handling each
    # pixel as its own scatter index, which is several times faster on CPU.
    dimensions = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1)
    )
    zeros = jnp.zeros((height, width, contributions.shape[-1]), contributions.dtype)
    return jax.lax.scatter_add(
        zeros,
        origins,
        contributions,
        dimensions,
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def patch_contributions(
    collage: Collage, library: PatchLibrary, config: CollageConfig, window: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """Each patch's window origin and its per-pixel contributions to the sums.

    Returns:
      origins: [N, 2] int32 (row, column) of each window's top-left canvas pixel.
      contributions: [N, h, w, C] float32, see ``accumulate``.
    """
    rgba, origins = sample_patches(collage, library, config, window)
    # A patch with a non-finite parameter fills its window with NaN, so its collage's loss is
    # NaN (such a collage never becomes the best) rather than the patch silently vanishing:
    # its integer window and texel indices were made finite on the way (see
    # ``window_origins``), so the NaN has to be put back here.
    params = jax.tree.leaves(collage.params)
    rows = [jnp.reshape(leaf, (leaf.shape[0], -1)) for leaf in params]
    finite = jnp.all(jnp.isfinite(jnp.concatenate(rows, axis=1)), axis=1)
    colour = jax.vmap(colourise, in_axes=(0, 0, None))(
        rgba[..., :3], collage.params.colour, config.colour_space
    )
    alpha = rgba[..., 3:]
    weighted = colour * alpha
    mode = config.render_mode
    if mode == "transparency":
        parts = [weighted]
    elif mode == "masked_transparency":
        parts = [weighted, alpha]
    else:
        order = collage.params.order[:, None, None, None]
        logits = jnp.where(
            alpha > OPACITY_MASK_THRESHOLD,
            order * alpha / OPACITY_TEMPERATURE,
            alpha + OPACITY_ZERO_OFFSET,
        )
        weight = jnp.exp(logits)
        # A patch that misses a pixel still adds exp(offset) to that pixel's softmax
        # denominator; the constant part is added once for all patches in ``composite``.
        parts = [weight * weighted * alpha, weight - jnp.exp(OPACITY_ZERO_OFFSET), alpha]
    contributions = jnp.concatenate(parts, axis=-1)
    return origins, jnp.where(finite[:, None, None, None], contributions, jnp.nan)


def composite(
    sums: jax.Array, background: jax.Array, config: CollageConfig, *, num_patches: int
) -> jax.Array:
    """Turns the accumulated sums into the final image over the background.

    Args:
      sums: [H, W, C] from ``accumulate``.
      background: [H, W, 3] float32.
      config: render mode and colour options.
      num_patches: the collage's patch count (for "opacity", every patch adds ``e^-5`` to
        each pixel's softmax denominator).
    """
    mode = config.render_mode
    if mode == "transparency":
        image = sums[..., :3]
    elif mode == "masked_transparency":
        image = sums[..., :3] / (sums[..., 3:4] + EPSILON)
    else:
        missing = num_patches * jnp.exp(OPACITY_ZERO_OFFSET)
        image = sums[..., :3] / (sums[..., 3:4] + missing)
    if config.invert_colours:
        image = 1.0 - image
    if mode == "transparency":
        image = image + background
    elif mode == "masked_transparency":
        coverage = jnp.clip(sums[..., 3:4] + EPSILON, 0.0, 1.0)
        image = image * coverage + background * (1.0 - coverage)
    else:
        # The mask test is False for NaN, which would show the background instead of a
        # non-finite patch (``patch_contributions``): keep the NaN.
        covered = (sums[..., 4:5] > OPACITY_MASK_THRESHOLD) | jnp.isnan(sums[..., 4:5])
        image = jnp.where(covered, image, background)
    return jnp.clip(image, 0.0, 1.0)


def window_origins(centres: jax.Array, config: CollageConfig, window: tuple[int, int]) -> jax.Array:
    """[N, 2] int32 top-left (row, col) of windows centred on ``centres`` [N, 2] (x, y) pixels.

    Windows are clamped inside the canvas; one big enough for any patch still covers the part
    of a patch that lies on the canvas. A NaN centre counts as 0: converting NaN to int32 is
    undefined, and ``accumulate``'s scatter trusts these indices (an index outside the canvas
    would write outside the array).
    """
    height, width = config.canvas_shape
    centres = jnp.nan_to_num(jax.lax.stop_gradient(centres))
    row = jnp.clip(jnp.round(centres[:, 1] - window[0] / 2), 0, height - window[0])
    col = jnp.clip(jnp.round(centres[:, 0] - window[1] / 2), 0, width - window[1])
    return jnp.stack([row, col], -1).astype(jnp.int32)


def sample_patches(
    collage: Collage, library: PatchLibrary, config: CollageConfig, window: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """Bilinear samples of each patch at the canvas pixels of its window.

    Returns:
      rgba: [N, h, w, 4] float32 straight RGBA (0 outside the patch).
      origins: [N, 2] int32 window origins.
    """
    params = collage.params
    height, width = config.canvas_shape
    side = library.side
    centres = (params.translation + 1.0) * 0.5 * jnp.array([[width, height]], jnp.float32)
    origins = window_origins(centres, config, window)
    # Pixel centres sit at integer + 0.5 in continuous canvas coordinates.
    dy = origins[:, 0, None] + jnp.arange(window[0])[None] + 0.5 - centres[:, 1, None]  # [N, h]
    dx = origins[:, 1, None] + jnp.arange(window[1])[None] + 0.5 - centres[:, 0, None]  # [N, w]
    matrix = sampling_matrix(params.rotation, params.scale, params.squeeze, params.shear)
    matrix = matrix / texel_size(config, side)
    m = matrix[:, :, :, None, None]  # [N, 2, 2, 1, 1]
    u = m[:, 0, 0] * dx[:, None, :] + m[:, 0, 1] * dy[:, :, None] + side / 2.0
    v = m[:, 1, 0] * dx[:, None, :] + m[:, 1, 1] * dy[:, :, None] + side / 2.0
    rgba = sample_bilinear(library.rgba, collage.patch_index, v, u)
    return rgba, origins


def sample_bilinear(textures: jax.Array, index: jax.Array, v: jax.Array, u: jax.Array) -> jax.Array:
    """Samples ``textures[index[n]]`` bilinearly at continuous texel coordinates, with zero
    outside the texture (scipy's ``map_coordinates(order=1, mode="grid-constant")``).

    Each of the four corner texels is weighted by zero when it lies outside the square, so
    whatever a library's outer ring holds, a patch ends half a texel past its square (the
    formula of docs/parameters.md) and windows sized for the square are exact. Coordinates
    are clamped to one texel around the square first: anything further out reads zero too.

    Args:
      textures: [P, L, L, C] float32 in [0, 1] or uint8 in [0, 255].
      index: [N] int32 texture of each sample set; negative: none (zero everywhere).
      v, u: [N, ...] row and column coordinates; texel (r, c) has its centre at (r + .5, c + .5).

    Returns:
      [N, ..., C] float32. Differentiable w.r.t. ``u`` and ``v``; the textures are constants.
    """
    num_textures, side, _, channels = textures.shape
    flat = jax.lax.stop_gradient(textures).reshape(num_textures * side * side, channels)
    # Clamping to [-1, side] keeps the floor (and so the int32 index) small for far-away
    # samples, which then have both corners outside: weight zero. NaN (a non-finite patch
    # parameter; ``patch_contributions`` marks its window NaN) reads as outside too, since
    # NaN has no int32 value.
    fy = jnp.clip(jnp.nan_to_num(v - 0.5, nan=-1.0), -1.0, float(side))
    fx = jnp.clip(jnp.nan_to_num(u - 0.5, nan=-1.0), -1.0, float(side))
    y0, x0 = jnp.floor(fy), jnp.floor(fx)
    wy, wx = fy - y0, fx - x0
    # Row and column weights of the near (0) and far (1) corner, zero off the square.
    # (y0 + 1 >= 0 always holds after the clamp.)
    ry0 = jnp.where((y0 >= 0) & (y0 <= side - 1), 1.0 - wy, 0.0)[..., None]
    ry1 = jnp.where(y0 + 1 <= side - 1, wy, 0.0)[..., None]
    cx0 = jnp.where((x0 >= 0) & (x0 <= side - 1), 1.0 - wx, 0.0)[..., None]
    cx1 = jnp.where(x0 + 1 <= side - 1, wx, 0.0)[..., None]
    rows0 = jnp.clip(y0, 0, side - 1).astype(jnp.int32) * side
    rows1 = jnp.clip(y0 + 1, 0, side - 1).astype(jnp.int32) * side
    cols0 = jnp.clip(x0, 0, side - 1).astype(jnp.int32)
    cols1 = jnp.clip(x0 + 1, 0, side - 1).astype(jnp.int32)
    # A negative index is an empty slot (a hidden patch): every corner weighs zero.
    present = (index >= 0).reshape(index.shape + (1,) * v.ndim)
    ry0, ry1 = jnp.where(present, ry0, 0.0), jnp.where(present, ry1, 0.0)
    index = jnp.maximum(index, 0)
    base = (index * side * side).reshape(index.shape + (1,) * (v.ndim - 1))
    t00, t01 = _as_float(flat[base + rows0 + cols0]), _as_float(flat[base + rows0 + cols1])
    t10, t11 = _as_float(flat[base + rows1 + cols0]), _as_float(flat[base + rows1 + cols1])
    return ry0 * (cx0 * t00 + cx1 * t01) + ry1 * (cx0 * t10 + cx1 * t11)


def _as_float(values: jax.Array) -> jax.Array:
    if values.dtype == jnp.uint8:
        return values.astype(jnp.float32) / 255.0
    return values


def render_population(
    population: Collage,
    library: PatchLibrary,
    background: jax.Array,
    config: CollageConfig,
    *,
    windowed: bool = True,
) -> jax.Array:
    """[P, H, W, 3] renders of a population: ``render`` vmapped (and jitted when called
    from outside a trace; inside another jit it is traced into that program)."""
    arguments = (population, library, background)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(arguments)):
        return _render_all(*arguments, config=config, windowed=windowed)
    return _compiled_render_population(config, windowed)(*arguments)


def _render_all(population, library, background, *, config, windowed):
    return jax.vmap(lambda c: render(c, library, background, config, windowed=windowed))(population)


@functools.cache
def _compiled_render_population(config: CollageConfig, windowed: bool):
    return xla_options.jit(functools.partial(_render_all, config=config, windowed=windowed))
