"""The loss of one collage: render, augment, embed with CLIP, compare with the prompts."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clipclop_jax.collage.params import Collage, CollageParams
from clipclop_jax.collage.render import render
from clipclop_jax.config import CollageConfig, OptimConfig, _check_range, check_field_types
from clipclop_jax.guidance.augment import AugmentConfig, random_augment
from clipclop_jax.guidance.ensemble import PerceptorEnsemble
from clipclop_jax.library.patch_library import PatchLibrary


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    """Compositional prompts: a grid of regions, each scored by CLIP on its own crop.

    As in the original (``create_compositional_batch``), region crops overlap their
    neighbours by half, so each sees some context: with ``rows`` rows a crop is
    ``2 H / (rows + 1)`` pixels high and they start every ``H / (rows + 1)`` pixels (3 x 3
    regions: crops of half the canvas at quarter-canvas steps). The collage's loss is the
    global prompts' loss times ``global_weight`` plus each region's weighted loss.

    Attributes:
      rows, cols: the grid (0 x 0: no regions).
      crops_per_region: augmented crops CLIP scores per region per step (original: 1).
      global_weight: multiplies the global prompts' weights when regions are on
        (original: 9/5, with 1/5 per region).
    """

    rows: int = 0
    cols: int = 0
    crops_per_region: int = 1
    global_weight: float = 1.8

    def __post_init__(self):
        check_field_types(self)
        _check_range("rows", self.rows, 0, 16)
        _check_range("cols", self.cols, 0, 16)
        if (self.rows == 0) != (self.cols == 0):
            raise ValueError(
                f"regions {self.rows}x{self.cols}: give both rows and cols, or neither."
            )
        _check_range("crops_per_region", self.crops_per_region, 1, 64)
        _check_range("global_weight", self.global_weight, 0.0, 1e6)

    @property
    def num_regions(self) -> int:
        return self.rows * self.cols


NO_REGIONS = RegionConfig()
# The original's weight of each of its nine regions.
DEFAULT_REGION_WEIGHT = 0.2


def region_boxes(height: int, width: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(top, left, crop height, crop width) of each region, row by row; all the same size."""

    def spans(size, count):
        crop = size if count == 1 else round(2 * size / (count + 1))
        starts = [round(i * (size - crop) / max(count - 1, 1)) for i in range(count)]
        return starts, crop

    tops, crop_h = spans(height, rows)
    lefts, crop_w = spans(width, cols)
    return [(t, left, crop_h, crop_w) for t in tops for left in lefts]


class Guidance(NamedTuple):
    """The large arrays a step reads: arguments of the compiled step, never constants, so a
    new prompt or a library of the same shape does not recompile.

    Attributes:
      clip_params: the CLIP weights pytree (an ensemble's: a tuple, one per member).
      text_embeddings: [T, D] L2-normalised prompt embeddings (an ensemble's: a tuple of
        [T, D_m], one per member, each from that member's text tower).
      prompt_weights: [T] weight of each prompt; negative pushes away.
      library: the low-resolution patch library.
      background: [H, W, 3] float32 background of the canvas.
      region_embeddings: [R, D] L2-normalised prompt of each region, row by row (None
        without regions; an ensemble's: a tuple of [R, D_m]).
      region_weights: [R] weight of each region's prompt (None without regions).
    """

    clip_params: Any
    text_embeddings: jax.Array | tuple[jax.Array, ...]
    prompt_weights: jax.Array
    library: PatchLibrary
    background: jax.Array
    region_embeddings: jax.Array | tuple[jax.Array, ...] | None = None
    region_weights: jax.Array | None = None


def prompt_loss(image_embeddings: jax.Array, guidance: Guidance) -> jax.Array:
    """Weighted negative cosine similarity, averaged over crops.

    Args:
      image_embeddings: [K, D] L2-normalised embeddings of K crops of one collage.
      guidance: holds [T, D] prompt embeddings and [T] weights.

    Returns:
      Scalar ``-sum_t w_t mean_k cos(image_k, text_t)``: lower is better.
    """
    similarity = image_embeddings @ guidance.text_embeddings.T  # [K, T]
    return -jnp.sum(jnp.mean(similarity, axis=0) * guidance.prompt_weights)


def region_loss(region_embeddings: jax.Array, guidance: Guidance) -> jax.Array:
    """``-sum_r w_r mean_k cos(crop_rk, prompt_r)`` for [R, K, D] region crop embeddings."""
    similarity = jnp.einsum("rkd,rd->rk", region_embeddings, guidance.region_embeddings)
    return -jnp.sum(jnp.mean(similarity, axis=1) * guidance.region_weights)


def clip_dtype(optim: OptimConfig) -> jnp.dtype:
    """CLIP's compute dtype for ``optim.precision``, "auto" resolved on the default backend:
    float32 on CPU, bfloat16 on GPU and TPU."""
    precision = optim.precision
    if precision == "auto":
        precision = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return jnp.dtype(precision)


def make_collage_loss(
    config: CollageConfig,
    perceptor,
    optim: OptimConfig,
    augment: AugmentConfig,
    regions: RegionConfig = NO_REGIONS,
):
    """Builds ``loss(params, patch_index, key, guidance) -> (loss, image)`` for one collage.

    The structural settings are closed over (they decide shapes); everything large comes in
    through ``guidance``. With regions, ``guidance`` must carry region embeddings and weights.
    CLIP runs in ``clip_dtype(optim)``; the render, the crops and the loss are float32.

    With a ``PerceptorEnsemble`` the guidance's ``clip_params``, ``text_embeddings`` and
    ``region_embeddings`` are tuples, one entry per member. Each member scores crops of the
    same geometry (the same key) made at its own input size, and the loss is the members'
    losses summed by their (normalised) weights; all of it is one compiled program.
    """
    if isinstance(perceptor, PerceptorEnsemble):
        scores = [
            _make_score(config, member, optim, augment, regions) for member in perceptor.members
        ]

        def ensemble_loss(params, patch_index, key, guidance: Guidance):
            image = render(
                Collage(params, patch_index), guidance.library, guidance.background, config
            )
            count = len(perceptor.members)
            for field in ("clip_params", "text_embeddings"):
                value = getattr(guidance, field)
                if not (isinstance(value, tuple) and len(value) == count):
                    raise ValueError(
                        f"guidance.{field} is not a tuple of {count} (one per model of the "
                        "ensemble): take it from the ensemble's params and embed_text."
                    )
            regions_m = guidance.region_embeddings
            terms = []
            for m, (score, weight) in enumerate(zip(scores, perceptor.weights, strict=True)):
                # Member m's view of the guidance: its weights and its prompts' embeddings.
                own = guidance._replace(
                    clip_params=guidance.clip_params[m],
                    text_embeddings=guidance.text_embeddings[m],
                    region_embeddings=None if regions_m is None else regions_m[m],
                )
                # The same key: every member scores crops of the same geometry.
                terms.append(weight * score(image, key, own))
            return functools.reduce(jnp.add, terms), image

        return ensemble_loss

    score = _make_score(config, perceptor, optim, augment, regions)

    def loss(params: CollageParams, patch_index: jax.Array, key: jax.Array, guidance: Guidance):
        image = render(Collage(params, patch_index), guidance.library, guidance.background, config)
        return score(image, key, guidance), image

    return loss


def _make_score(config, perceptor, optim, augment, regions):
    """``score(image, key, guidance) -> loss`` of a rendered canvas by one CLIP model: its
    augmented crops at the model's input size, embedded and compared with the prompts."""
    size = perceptor.image_size
    # Only a reduced precision is passed on: a perceptor written for float32 (any object with
    # ``embed_images(params, images, *, normalize)``) keeps working.
    dtype = clip_dtype(optim)
    precision = {} if dtype == jnp.float32 else {"dtype": dtype}
    num_crops = optim.num_crops if optim.use_augmentations else 1
    boxes = region_boxes(*config.canvas_shape, regions.rows, regions.cols)
    if not regions.num_regions:
        boxes = []

    def views(key, image, count):
        return random_augment(
            key,
            image,
            num_crops=count,
            output_size=size,
            config=augment,
            use_augmentations=optim.use_augmentations,
        )

    def score(image: jax.Array, key: jax.Array, guidance: Guidance) -> jax.Array:
        crops = [views(key, image, num_crops)]
        per_region = regions.crops_per_region if optim.use_augmentations else 1
        for r, (top, left, height, width) in enumerate(boxes):
            region = image[top : top + height, left : left + width]
            crops.append(views(jax.random.fold_in(key, r + 1), region, per_region))
        embeddings = perceptor.embed_images(
            guidance.clip_params,
            jnp.concatenate(crops),
            normalize=optim.normalize_input,
            **precision,
        )
        value = prompt_loss(embeddings[:num_crops], guidance)
        if boxes:
            value = regions.global_weight * value + region_loss(
                embeddings[num_crops:].reshape(len(boxes), per_region, -1), guidance
            )
        return value

    return score
