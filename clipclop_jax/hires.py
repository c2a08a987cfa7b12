"""Re-render a collage at any size from the high-resolution library, in bounded memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import xla_options
from clipclop_jax.config import CollageConfig
from clipclop_jax.library import PatchLibrary
from clipclop_jax.params import Collage
from clipclop_jax.render import accumulate, composite
from clipclop_jax.transforms import window_shape

# Samples (window pixels x patches) evaluated at once; bounds the peak memory of a render to
# a few hundred MiB whatever the output size.
MAX_SAMPLES = 2**24


def render_high_res(
    collage: Collage,
    library: PatchLibrary,
    background: jax.Array,
    config: CollageConfig,
    height: int,
    width: int,
) -> np.ndarray:
    """Renders one collage at ``height x width`` from ``library`` (e.g. the high-res copy).

    Patches are drawn in groups whose windows hold at most ``MAX_SAMPLES`` pixels, and the
    groups' sums are added, so memory stays bounded at any output size.

    Args:
      collage: one collage of ``config.num_patches`` patches.
      library: any resolution; uint8 keeps a large library small.
      background: [height, width, 3] float32.
      config: the collage's config (its canvas size is replaced by ``height x width``).

    Returns:
      [height, width, 3] float32 numpy image in [0, 1].
    """
    # Only the patches this collage shows go to the device, not a whole large library.
    index = np.asarray(collage.patch_index)
    used, slot_index = np.unique(index, return_inverse=True)
    library = PatchLibrary(np.asarray(library.rgba)[used], np.asarray(library.sizes)[used])
    collage = collage._replace(patch_index=jnp.asarray(slot_index.reshape(index.shape), jnp.int32))
    config = config.resized(height, width)
    window = window_shape(config, library.side)
    group = max(1, min(config.num_patches, MAX_SAMPLES // (window[0] * window[1])))
    sums = 0.0
    for start in range(0, config.num_patches, group):
        part = jax.tree.map(lambda a, s=start: a[s : s + group], collage)
        size = int(part.patch_index.shape[0])
        sums = sums + _accumulate_fn(config, window, size)(part, library)
    image = _composite_fn(config)(sums, jnp.asarray(background, jnp.float32))
    return np.asarray(image)


@functools.cache
def _accumulate_fn(config: CollageConfig, window: tuple[int, int], size: int):
    return xla_options.jit(lambda part, library: accumulate(part, library, config, window))


@functools.cache
def _composite_fn(config: CollageConfig):
    return xla_options.jit(lambda sums, background: composite(sums, background, config))
