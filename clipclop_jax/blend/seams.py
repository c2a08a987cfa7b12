"""Gradient-domain (Poisson) blending of a rendered collage.

The blended image keeps the gradients of the patch that is visible at each pixel, replaces
the jump at each seam between patches by the gradient of the layer beneath, and stays close
to the rendered colours (screened Poisson, solved by ``poisson.poisson_blend``).
docs/blending.md gives the exact guidance field, weights and boundary conditions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import xla_options
from clipclop_jax.blend.poisson import SolveInfo, poisson_blend
from clipclop_jax.collage.params import Collage
from clipclop_jax.collage.render import (
    OPACITY_MASK_THRESHOLD,
    OPACITY_TEMPERATURE,
    composite,
    patch_contributions,
    sample_bilinear,
    sample_patches,
)
from clipclop_jax.collage.transforms import colourise, sampling_matrix, texel_size, window_shape
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

BLEND_MODES = ("poisson", "mixed", "none")
BACKGROUND = -1  # layer id of the background
# Rank of the background among the layers at a pixel: a patch is drawn over it where its
# alpha is at least 1/2 (for "opacity": where the renderer shows patches at all).
BACKGROUND_SCORE = 0.5


class Layers(NamedTuple):
    """The two topmost layers at every pixel, by how much each patch shows there.

    Attributes:
      top: [H, W] int32 visible layer: a patch slot ``0 .. N-1`` or ``BACKGROUND`` (-1).
      top_colour: [H, W, 3] float32 in [0, 1], that layer's own colour (a patch's colourised
        texture, alpha ignored; the background image for the background).
      under: [H, W] int32 the layer beneath ``top`` (``BACKGROUND`` under the background).
      under_colour: [H, W, 3] float32 its colour.
    """

    top: jax.Array
    top_colour: jax.Array
    under: jax.Array
    under_colour: jax.Array


def collage_layers(
    collage: Collage, library: PatchLibrary, background: jax.Array, config: CollageConfig
) -> tuple[jax.Array, Layers]:
    """Renders a collage and finds the two topmost layers at every pixel.

    A patch's rank at a pixel is its alpha ("transparency", "masked_transparency") or, for
    "opacity", ``2 + order * alpha / 0.1 + 2 log(alpha)`` where alpha > 1/2 (the log of its
    softmax weight on the colour, shifted above the background) and its alpha elsewhere; the
    background ranks 1/2. Ties go to the later slot. Patches are drawn one at a time into
    their windows (``lax.scan``), so memory stays bounded at any canvas size.

    Args:
      collage: one collage, of any number of patches (counted from its arrays).
      library: the patch library the collage was made with (any resolution).
      background: [H, W, 3] float32 in [0, 1], H, W = the config's canvas.
      config: canvas size, render mode, colour space.

    Returns:
      rendered: [H, W, 3] float32, the image ``render.render`` draws (summed in another
        order, so equal up to float32 rounding).
      layers: the ``Layers`` of every pixel.
    """
    height, width = config.canvas_shape
    window = window_shape(config, library.side)
    background = jnp.asarray(background, jnp.float32)
    sums = {"transparency": 3, "masked_transparency": 4, "opacity": 5}[config.render_mode]
    # Channels first, per pixel: the render's sums, then rank and slot of the top layer and
    # of the one under it. One array, so that each patch is one in-place window update.
    rank = jnp.full((1, height, width), BACKGROUND_SCORE, jnp.float32)
    slot = jnp.full((1, height, width), BACKGROUND, jnp.float32)
    state = jnp.concatenate([jnp.zeros((sums, height, width)), rank, slot, rank, slot], 0)

    def sample(one):
        origins, contributions = patch_contributions(one, library, config, window)
        rgba, _ = sample_patches(one, library, config, window)
        score = _score(rgba[0, ..., 3], one.params.order[0], config.render_mode)
        return origins[0], jnp.moveaxis(contributions[0], -1, 0), score

    def draw(state, index):
        one = jax.tree.map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, index, 1), collage)
        # An always-true cond: XLA materialises the samples at its boundary instead of
        # fusing the bilinear gathers into the in-place update below (2x faster on CPU).
        empty = jax.tree.map(jnp.zeros_like, jax.eval_shape(sample, one))
        origin, contribution, score = jax.lax.cond(index >= 0, sample, lambda _: empty, one)
        start = (jnp.int32(0), origin[0], origin[1])
        old = jax.lax.dynamic_slice(state, start, (state.shape[0],) + window)
        top_rank, top, under_rank, under = (old[sums + k] for k in range(4))
        mine = index.astype(jnp.float32)
        on_top = score >= top_rank
        below = score >= under_rank
        layers = [
            jnp.where(on_top, score, top_rank),
            jnp.where(on_top, mine, top),
            jnp.where(on_top, top_rank, jnp.where(below, score, under_rank)),
            jnp.where(on_top, top, jnp.where(below, mine, under)),
        ]
        new = jnp.concatenate([old[:sums] + contribution, jnp.stack(layers)], 0)
        return jax.lax.dynamic_update_slice(state, new, start), None

    num_patches = collage.patch_index.shape[0]
    indices = jnp.arange(num_patches, dtype=jnp.int32)
    state, _ = jax.lax.scan(draw, state, indices)
    rendered = composite(
        jnp.moveaxis(state[:sums], 0, -1), background, config, num_patches=num_patches
    )
    top = state[sums + 1].astype(jnp.int32)
    under = state[sums + 3].astype(jnp.int32)
    return rendered, Layers(
        top,
        _layer_colour(collage, library, background, config, top),
        under,
        _layer_colour(collage, library, background, config, under),
    )


def _layer_colour(
    collage: Collage,
    library: PatchLibrary,
    background: jax.Array,
    config: CollageConfig,
    slots: jax.Array,
) -> jax.Array:
    """[H, W, 3] colour of layer ``slots[i, j]`` at each pixel, sampled as ``sample_patches``."""
    height, width = config.canvas_shape
    params = jax.tree.map(lambda leaf: leaf[jnp.maximum(slots, 0)], collage.params)
    side = library.side
    centre = (params.translation + 1.0) * 0.5 * jnp.array([[[width, height]]], jnp.float32)
    dy = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5 - centre[..., 1]
    dx = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5 - centre[..., 0]
    matrix = sampling_matrix(params.rotation, params.scale, params.squeeze, params.shear)
    matrix = matrix / texel_size(config, side)
    u = matrix[..., 0, 0] * dx + matrix[..., 0, 1] * dy + side / 2.0
    v = matrix[..., 1, 0] * dx + matrix[..., 1, 1] * dy + side / 2.0
    index = collage.patch_index[jnp.maximum(slots, 0)]
    rgb = sample_bilinear(library.rgba[..., :3], index.reshape(-1), v.reshape(-1), u.reshape(-1))
    colour = jax.vmap(colourise, in_axes=(0, 0, None))(
        rgb, params.colour.reshape(-1, 3), config.colour_space
    ).reshape(height, width, 3)
    if config.invert_colours:
        colour = 1.0 - colour
    return jnp.where((slots == BACKGROUND)[..., None], background, jnp.clip(colour, 0.0, 1.0))


def _score(alpha: jax.Array, order: jax.Array, render_mode: str) -> jax.Array:
    if render_mode != "opacity":
        return alpha
    shown = alpha > OPACITY_MASK_THRESHOLD
    safe = jnp.where(shown, alpha, 1.0)
    return jnp.where(shown, 2.0 + order * safe / OPACITY_TEMPERATURE + 2.0 * jnp.log(safe), alpha)


def collage_guidance(
    rendered: jax.Array,
    layers: Layers,
    background: jax.Array,
    *,
    mode: str = "poisson",
    blend_background: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The guidance field of a collage: gradients of the visible layers, seams removed.

    For neighbours ``p, q`` with the same visible layer the guidance is that layer's
    gradient ``top_colour[q] - top_colour[p]``. Across a seam (the visible layer changes) it
    is the gradient of a layer that lies on both sides: the layer visible at ``q`` if it is
    the one beneath at ``p``, else the one visible at ``p`` if it is beneath at ``q``, else
    the layer beneath both if they share it, else the background. "mixed" replaces a
    non-seam gradient by the layer beneath's where that is larger (Euclidean norm over RGB).
    Unless ``blend_background``, edges where the background shows (at either pixel, or
    directly beneath the visible patch at both) keep the rendered image's gradient.

    Args:
      rendered: [H, W, 3] float32, the collage as rendered.
      layers: from ``collage_layers``.
      background: [H, W, 3] float32.
      mode: "poisson" or "mixed".
      blend_background: blend the edges between patches and the background as well (the
        patches then melt into it, like OpenCV's ``seamlessClone``); by default only seams
        between patches are blended and cut-out silhouettes stay as drawn.

    Returns:
      guidance_x: [H, W-1, 3] and guidance_y: [H-1, W, 3] float32 forward differences.
    """
    if mode not in ("poisson", "mixed"):
        raise ValueError(f"mode={mode!r} is not valid: choose 'poisson' or 'mixed'.")
    fields = (
        layers.top,
        layers.top_colour,
        layers.under,
        layers.under_colour,
        jnp.asarray(background, jnp.float32),
        rendered,
    )
    pairs = [
        (jax.tree.map(lambda a: a[:, :-1], fields), jax.tree.map(lambda a: a[:, 1:], fields)),
        (jax.tree.map(lambda a: a[:-1], fields), jax.tree.map(lambda a: a[1:], fields)),
    ]
    guidance_x, guidance_y = (_edge_guidance(p, q, mode, blend_background) for p, q in pairs)
    return guidance_x, guidance_y


def _edge_guidance(p, q, mode: str, blend_background: bool) -> jax.Array:
    """Guidance ``u_q - u_p`` for arrays of neighbour pairs (each a tuple of ``fields``)."""
    top_p, colour_p, under_p, below_p, back_p, rendered_p = p
    top_q, colour_q, under_q, below_q, back_q, rendered_q = q

    def where(condition, a, b):
        return jnp.where(condition[..., None], a, b)

    shared_under = under_p == under_q
    seam = where(
        under_p == top_q,
        colour_q - below_p,
        where(
            under_q == top_p,
            below_q - colour_p,
            where(shared_under, below_q - below_p, back_q - back_p),
        ),
    )
    inside = colour_q - colour_p
    if mode == "mixed":
        beneath = where(shared_under, below_q - below_p, back_q - back_p)
        larger = jnp.sum(beneath**2, -1) > jnp.sum(inside**2, -1)
        inside = where(larger, beneath, inside)
    guidance = where(top_p == top_q, inside, seam)
    if blend_background:
        return guidance
    shows_p = (top_p == BACKGROUND) | (under_p == BACKGROUND)
    shows_q = (top_q == BACKGROUND) | (under_q == BACKGROUND)
    keep = (shows_p & shows_q) | (top_p == BACKGROUND) | (top_q == BACKGROUND)
    return where(keep, rendered_q - rendered_p, guidance)


def blend_collage(
    collage: Collage,
    library: PatchLibrary,
    background: jax.Array,
    config: CollageConfig,
    *,
    mode: str = "poisson",
    radius: float = 0.05,
    background_weight: float = 1.0,
    blend_background: bool = False,
    tol: float = 1e-5,
    max_iterations: int = 100,
    precondition: bool = True,
) -> tuple[jax.Array, SolveInfo]:
    """Renders a collage and blends its patches in the gradient domain.

    Minimises ``sum over neighbour pairs (u_q - u_p - g_pq)^2 + sum_p w_p |u_p - r_p|^2``
    with ``g`` from ``collage_guidance``, ``r`` the rendered image and ``w_p = lambda`` (times
    ``background_weight`` where the background is visible), ``lambda = 1 / (radius *
    min(H, W))^2``: a seam's colour jump is spread over about ``radius`` of the canvas on
    both sides. Neumann boundary on the canvas border. docs/blending.md has the details.
    Jitted once per config and static option (and inlined when called under another trace).

    Args:
      collage: one collage, any number of patches (e.g. a saved ``params.npz``).
      library: the patch library it was made with; any resolution (the high-resolution copy
        with ``config.resized(height, width)`` blends a high-resolution render).
      background: [H, W, 3] float32 in [0, 1] for the config's canvas.
      config: the collage's config.
      mode: "poisson" (seams take the gradient of the layer beneath), "mixed" (also inside
        patches, the larger of the visible and beneath gradients) or "none" (the render).
      radius: > 0, how far (fraction of the shorter canvas side) a seam's correction spreads.
      background_weight: > 0; above 1 the background holds its colours more firmly than the
        patches. 1 keeps the system's operator constant, so the preconditioner solves it
        exactly (one CG iteration); 10 takes ~7 iterations, 100 about 20-25.
      blend_background: also blend patches into the background (see ``collage_guidance``).
      tol, max_iterations, precondition: as for ``poisson.solve_poisson``.

    Returns:
      [H, W, 3] float32 image in [0, 1] and the ``SolveInfo`` (0 iterations for "none").

    Raises:
      ValueError: an unknown mode, a background of the wrong shape, a non-positive radius or
        background weight, or NaN/inf in the collage or background.
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"mode={mode!r} is not valid: choose one of {', '.join(BLEND_MODES)}.")
    height, width = config.canvas_shape
    if np.shape(background) != (height, width, 3):
        raise ValueError(
            f"background has shape {np.shape(background)}; expected {(height, width, 3)} "
            "for this canvas."
        )
    for name, value in (("radius", radius), ("background_weight", background_weight)):
        if not _is_traced(value) and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value!r} is not valid: use a finite number > 0.")
    arguments = (collage, library, background)
    settings = tuple(jnp.asarray(s, jnp.float32) for s in (radius, background_weight, tol))
    options = (config, mode, blend_background, max_iterations, precondition)
    if any(_is_traced(leaf) for leaf in jax.tree.leaves((arguments, settings))):
        return _blend(*arguments, *settings, *options)
    for name, value in (("collage", collage.params), ("background", background)):
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(value)):
            raise ValueError(f"{name} holds NaN or inf: blend a finite {name}.")
    return _compiled_blend(*options)(*arguments, *settings)


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _blend(collage, library, background, radius, background_weight, tol, *options):
    config, mode, blend_background, max_iterations, precondition = options
    rendered, layers = collage_layers(collage, library, background, config)
    if mode == "none":
        zero = jnp.zeros((), jnp.float32)
        return rendered, SolveInfo(jnp.zeros((), jnp.int32), zero, jnp.ones((), bool))
    guidance = collage_guidance(
        rendered, layers, background, mode=mode, blend_background=blend_background
    )
    screening = 1.0 / jnp.square(radius * min(config.canvas_shape))
    weight = screening * jnp.where(layers.top == BACKGROUND, background_weight, 1.0)
    image, info = poisson_blend(
        rendered, *guidance, weight, tol=tol, max_iterations=max_iterations,
        precondition=precondition,
    )  # fmt: skip
    return jnp.clip(image, 0.0, 1.0), info


@functools.cache
def _compiled_blend(*options):
    """``_blend`` compiled for one (config, mode, blend_background, max_iterations,
    precondition); radius, background weight and tolerance are arguments."""
    return xla_options.jit(lambda *arguments: _blend(*arguments, *options))
