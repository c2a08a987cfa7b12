"""The loss of one collage: render, augment, embed with CLIP, compare with the prompts."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clipclop_jax.augment import AugmentConfig, random_augment
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.library import PatchLibrary
from clipclop_jax.params import Collage, CollageParams
from clipclop_jax.render import render


class Guidance(NamedTuple):
    """The large arrays a step reads: arguments of the compiled step, never constants, so a
    new prompt or a library of the same shape does not recompile.

    Attributes:
      clip_params: the CLIP weights pytree.
      text_embeddings: [T, D] L2-normalised prompt embeddings.
      prompt_weights: [T] weight of each prompt; negative pushes away.
      library: the low-resolution patch library.
      background: [H, W, 3] float32 background of the canvas.
    """

    clip_params: Any
    text_embeddings: jax.Array
    prompt_weights: jax.Array
    library: PatchLibrary
    background: jax.Array


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


def make_collage_loss(config: CollageConfig, perceptor, optim: OptimConfig, augment: AugmentConfig):
    """Builds ``loss(params, patch_index, key, guidance) -> (loss, image)`` for one collage.

    The structural settings are closed over (they decide shapes); everything large comes in
    through ``guidance``.
    """
    size = perceptor.image_size
    num_crops = optim.num_crops if optim.use_augmentations else 1

    def loss(params: CollageParams, patch_index: jax.Array, key: jax.Array, guidance: Guidance):
        image = render(Collage(params, patch_index), guidance.library, guidance.background, config)
        if optim.use_augmentations:
            crops = random_augment(
                key, image, num_crops=num_crops, output_size=size, config=augment
            )
        else:
            crops = jax.image.resize(image, (size, size, 3), "linear", antialias=True)[None]
        embeddings = perceptor.embed_images(guidance.clip_params, crops)
        return prompt_loss(embeddings, guidance), image

    return loss
