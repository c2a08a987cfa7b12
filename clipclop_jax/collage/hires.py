"""Re-render a collage at any size from the high-resolution library, in bounded memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import xla_options
from clipclop_jax.collage.params import Collage
from clipclop_jax.collage.render import accumulate, composite
from clipclop_jax.collage.transforms import sampling_matrix, texel_size
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

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

    Each patch is drawn on a window fitted to its own size, in groups holding at most
    ``MAX_SAMPLES`` window pixels, and the groups' sums are added, so memory stays bounded
    at any output size and time grows with the patches' real area, not the worst case.

    Args:
      collage: one collage, of any number of patches (counted from its arrays).
      library: any resolution; uint8 keeps a large library small.
      background: [height, width, 3] float32.
      config: the collage's config (its canvas size is replaced by ``height x width``).

    Returns:
      [height, width, 3] float32 numpy image in [0, 1].
    """
    # Only the patches this collage shows go to the device, not a whole large library.
    index = np.asarray(collage.patch_index)
    used, slot_index = np.unique(np.maximum(index, 0), return_inverse=True)
    # An empty slot (index -1, a hidden patch) stays empty.
    slot_index = np.where(index.reshape(-1) < 0, -1, slot_index.reshape(-1))
    library = PatchLibrary(np.asarray(library.rgba)[used], np.asarray(library.sizes)[used])
    collage = collage._replace(patch_index=jnp.asarray(slot_index.reshape(index.shape), jnp.int32))
    config = config.resized(height, width)
    sums = jnp.zeros((height, width, _channels(config)), jnp.float32)
    for window, members in _window_buckets(collage, config, library.side).items():
        group = max(1, min(len(members), MAX_SAMPLES // (window[0] * window[1])))
        padded = np.concatenate([members, np.full(-len(members) % group, -1)])
        for start in range(0, len(padded), group):
            part = _take_or_offcanvas(collage, padded[start : start + group])
            sums = sums + _accumulate_fn(config, window, group)(part, library)
    num_patches = len(index)
    image = _composite_fn(config, num_patches)(sums, jnp.asarray(background, jnp.float32))
    return np.asarray(image)


# Window sides are rounded up to this many pixels, so few distinct sizes compile.
WINDOW_STEP = 64


def _window_buckets(collage: Collage, config: CollageConfig, side: int) -> dict:
    """Patches grouped by the window each needs *with its own* scale, squeeze and shear.

    Optimisation needs one window size for all patches (the worst case of the ranges, see
    ``transforms.window_shape``); a final render knows each patch's parameters, and most
    patches need far less than the worst case.
    """
    p = jax.tree.map(np.asarray, collage.params)
    matrices = np.asarray(sampling_matrix(p.rotation, p.scale, p.squeeze, p.shear), np.float64)
    canvas_per_texel = texel_size(config, side)
    half = side / 2.0 + 1.0
    corners = np.array([[half, half], [half, -half], [-half, half], [-half, -half]])
    offsets = np.einsum("nij,cj->nci", np.linalg.inv(matrices), corners) * canvas_per_texel
    radius = np.sqrt((offsets**2).sum(-1)).max(-1)
    sides = np.ceil((2 * np.ceil(radius) + 4) / WINDOW_STEP) * WINDOW_STEP
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sides.astype(int)):
        window = (min(s, config.canvas_height), min(s, config.canvas_width))
        buckets.setdefault(window, []).append(i)
    return {window: np.asarray(members) for window, members in sorted(buckets.items())}


def _take_or_offcanvas(collage: Collage, members: np.ndarray) -> Collage:
    """The collage's patches ``members``; index -1 is a padding patch far off the canvas,
    which samples only outside every texture and so adds exactly nothing to the sums."""
    safe = np.maximum(members, 0)
    part = jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)[safe]), collage)
    away = jnp.asarray(members < 0)[:, None]
    translation = jnp.where(away, 1e4, part.params.translation)
    return part._replace(params=part.params._replace(translation=translation))


def _channels(config: CollageConfig) -> int:
    return {"transparency": 3, "masked_transparency": 4, "opacity": 5}[config.render_mode]


@functools.cache
def _accumulate_fn(config: CollageConfig, window: tuple[int, int], size: int):
    return xla_options.jit(lambda part, library: accumulate(part, library, config, window))


@functools.cache
def _composite_fn(config: CollageConfig, num_patches: int):
    return xla_options.jit(
        lambda sums, background: composite(sums, background, config, num_patches=num_patches)
    )
