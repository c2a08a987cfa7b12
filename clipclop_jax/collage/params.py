"""Collage parameters as pytrees: initialisation, clamping and population helpers.

A collage is ``Collage(params, patch_index)``: the floats that gradients and optimisers see, and
the integer choice of library patch for each slot, which only evolution changes. A population
is the same pytree with a leading ``[P]`` axis on every leaf. docs/parameters.md states the
exact meaning of every field.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from clipclop_jax.config import CollageConfig


class CollageParams(NamedTuple):
    """The continuous parameters of one collage of ``N`` patches.

    Attributes:
      translation: [N, 2] patch centre (x, y); -1 is the left/top canvas edge, +1 the
        right/bottom one (original range [-1, 1]).
      rotation: [N] radians (original range [-pi, pi]).
      scale: [N] divides the patch size: 2 draws it at half size (original range [1, 2]).
      squeeze: [N] extra divisor of the patch's height relative to its width ([0.5, 2]).
      shear: [N] shear term of the sampling matrix ([-0.2, 0.2]).
      colour: [N, 3] per colour space: "rgb" gains (r, g, b) in [-0.2, 1]; "hsv" tint
        (hue in radians, saturation, value); "none" ignored.
      order: [N] depth in [0, 1] for the "opacity" render mode (higher is in front).
    """

    translation: jax.Array
    rotation: jax.Array
    scale: jax.Array
    squeeze: jax.Array
    shear: jax.Array
    colour: jax.Array
    order: jax.Array


class Collage(NamedTuple):
    """One collage (or, with a leading axis on every leaf, a population)."""

    params: CollageParams
    patch_index: jax.Array  # [N] int32 into the patch library


def _bounds(config: CollageConfig) -> CollageParams:
    """(low, high) bounds of every field, as a CollageParams of pairs."""
    if config.colour_space == "hsv":
        colour = (
            (math.radians(config.min_hue_deg), config.min_sat, config.min_val),
            (math.radians(config.max_hue_deg), config.max_sat, config.max_val),
        )
    else:
        colour = ((config.min_rgb,) * 3, (config.max_rgb,) * 3)
    return CollageParams(
        translation=(config.min_trans, config.max_trans),
        rotation=(math.radians(config.min_rot_deg), math.radians(config.max_rot_deg)),
        scale=(config.min_scale, config.max_scale),
        squeeze=(config.min_squeeze, config.max_squeeze),
        shear=(config.min_shear, config.max_shear),
        colour=colour,
        order=(0.0, 1.0),
    )


def bounds(config: CollageConfig) -> CollageParams:
    """(low, high) bounds of every field, as a CollageParams of pairs (scalars, or triples
    for ``colour``)."""
    return _bounds(config)


def clamp(params: CollageParams, config: CollageConfig) -> CollageParams:
    """Projects every field onto its valid range (as the original does after each step)."""

    def clip(value, low, high):
        low, high = (jnp.asarray(b, value.dtype) for b in (low, high))
        # Per-channel bounds ([3]) broadcast against [..., N, 3] explicitly.
        shape = (1,) * (value.ndim - low.ndim) + low.shape
        return jnp.clip(value, low.reshape(shape), high.reshape(shape))

    return CollageParams(
        *(clip(v, low, high) for v, (low, high) in zip(params, _bounds(config), strict=True))
    )


def random_params(key: jax.Array, config: CollageConfig) -> CollageParams:
    """Draws the continuous parameters of one collage as the original initialises them.

    Note:
      The original draws squeeze from ``[0, max_squeeze]`` (then clamps it); we draw it from
      ``[min_squeeze, max_squeeze]``. In "hsv" space the value starts in the upper half of its
      range so that the first collages are not dark.
    """
    n = config.num_patches
    keys = jax.random.split(key, 7)
    bounds = _bounds(config)

    def uniform(k, shape, low, high):
        return jax.random.uniform(k, shape, jnp.float32, low, high)

    if config.colour_space == "hsv":
        (h0, s0, v0), (h1, s1, v1) = bounds.colour
        low = jnp.array([h0, s0, 0.5 * (v0 + v1)], jnp.float32)
        high = jnp.array([h1, s1, v1], jnp.float32)
        colour = uniform(keys[5], (n, 3), low, high)
    else:
        colour = uniform(keys[5], (n, 3), config.initial_min_rgb, config.initial_max_rgb)
    return CollageParams(
        translation=uniform(keys[0], (n, 2), config.min_trans_init, config.max_trans_init),
        rotation=uniform(keys[1], (n,), *bounds.rotation),
        scale=uniform(keys[2], (n,), *bounds.scale),
        squeeze=uniform(keys[3], (n,), *bounds.squeeze),
        shear=uniform(keys[4], (n,), *bounds.shear),
        colour=colour,
        order=uniform(keys[6], (n,), 0.0, 1.0),
    )


def random_patch_index(key: jax.Array, num_patches: int, library_size: int) -> jax.Array:
    """[N] int32: distinct library patches while the library has enough, then repeats.

    Note:
      The original starts every individual with the same patches (0, 1, 2, ... of a shuffled
      library); we shuffle per individual so that a population starts diverse.
    """
    repeats = -(-num_patches // library_size)
    keys = jax.random.split(key, repeats)
    perms = [jax.random.permutation(k, library_size) for k in keys]
    return jnp.concatenate(perms)[:num_patches].astype(jnp.int32)


def random_collage(key: jax.Array, config: CollageConfig, library_size: int) -> Collage:
    """One random collage: ``random_params`` and ``random_patch_index`` from one key."""
    if library_size < 1:
        raise ValueError("library_size must be >= 1: the patch library is empty.")
    params_key, index_key = jax.random.split(key)
    return Collage(
        random_params(params_key, config),
        random_patch_index(index_key, config.num_patches, library_size),
    )


def random_population(
    key: jax.Array, config: CollageConfig, library_size: int, population_size: int
) -> Collage:
    """``[P]`` collages; individual ``i`` depends only on ``fold_in(key, i)``.

    So the same seed gives the same individuals whatever the population is split into.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(population_size))
    return jax.vmap(lambda k: random_collage(k, config, library_size))(keys)


def take(population, index):
    """Individual(s) ``index`` of a population pytree."""
    return jax.tree.map(lambda leaf: leaf[index], population)


def where(mask: jax.Array, on_true, on_false):
    """Per-individual select between two populations; ``mask`` is [P] bool."""

    def select(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(select, on_true, on_false)


def stack(collages):
    """A population from a sequence of individuals."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *collages)


def population_size(population) -> int:
    return jax.tree.leaves(population)[0].shape[0]
