"""The collage loss: global prompts and compositional region prompts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.collage.params import random_collage
from clipclop_jax.collage.render import render
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.objective import Guidance, RegionConfig, make_collage_loss, region_boxes
from clipclop_jax.library.patch_library import PatchLibrary


@dataclasses.dataclass(frozen=True)
class MeanColourPerceptor:
    """A stand-in CLIP whose image embedding is the mean colour: easy to compute by hand."""

    image_size: int = 8

    def embed_images(self, params, images, *, normalize=True):
        # "Normalised" pixels here: shifted by one, so a test can tell which were fed.
        mean = jnp.mean(images, axis=(1, 2)) + params - (1.0 if normalize else 0.0)
        return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_region_boxes_match_the_original_three_by_three():
    # The original: 448 x 448 canvas, 224-pixel crops every 112 pixels.
    boxes = region_boxes(448, 448, 3, 3)
    assert boxes[0] == (0, 0, 224, 224) and boxes[4] == (112, 112, 224, 224)
    assert boxes[8] == (224, 224, 224, 224) and len(boxes) == 9


def test_region_boxes_any_grid_cover_the_canvas_with_half_overlap():
    boxes = region_boxes(64, 96, 2, 3)
    assert {(h, w) for _, _, h, w in boxes} == {(43, 48)}
    assert sorted({t for t, _, _, _ in boxes}) == [0, 21]
    assert sorted({left for _, left, _, _ in boxes}) == [0, 24, 48]
    assert region_boxes(50, 50, 1, 1) == [(0, 0, 50, 50)]


@pytest.mark.parametrize(
    "bad", [dict(rows=2), dict(rows=-1, cols=2), dict(rows=2, cols=2, crops_per_region=0)]
)
def test_bad_region_config_is_one_line(bad):
    with pytest.raises(ValueError) as error:
        RegionConfig(**bad)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("normalize_input", [True, False])
def test_region_loss_adds_each_regions_weighted_similarity(normalize_input):
    config = CollageConfig(canvas_height=32, canvas_width=32, num_patches=6)
    rng = np.random.default_rng(0)
    rgba = rng.uniform(size=(4, 16, 16, 4)).astype(np.float32)
    rgba[:, [0, -1]] = 0
    rgba[:, :, [0, -1]] = 0
    library = PatchLibrary(jnp.asarray(rgba), jnp.full((4, 2), 14, jnp.int32))
    collage = random_collage(jax.random.key(1), config, 4)
    background = jnp.asarray(rng.uniform(size=(32, 32, 3)), jnp.float32)
    regions = RegionConfig(rows=2, cols=2, global_weight=1.5)
    texts = _unit(rng.normal(size=(2, 3)))
    region_texts = _unit(rng.normal(size=(4, 3)))
    guidance = Guidance(
        clip_params=jnp.float32(0.1),
        text_embeddings=jnp.asarray(texts, jnp.float32),
        prompt_weights=jnp.asarray([1.0, -0.5], jnp.float32),
        library=library,
        background=background,
        region_embeddings=jnp.asarray(region_texts, jnp.float32),
        region_weights=jnp.asarray([0.2, 0.4, 0.0, 1.0], jnp.float32),
    )
    optim = OptimConfig(num_crops=1, use_augmentations=False, normalize_input=normalize_input)
    loss = make_collage_loss(config, MeanColourPerceptor(), optim, AugmentConfig(), regions)

    value, image = loss(collage.params, collage.patch_index, jax.random.key(0), guidance)

    image = np.asarray(render(collage, library, background, config), np.float64)

    def embed(view):
        # The resize to 8 x 8 (antialiased, linear, an exact 4x box here) keeps the mean.
        return _unit(view.mean(axis=(0, 1)) + 0.1 - (1.0 if normalize_input else 0.0))

    expected = -1.5 * (texts @ embed(image)) @ np.array([1.0, -0.5])
    for (top, left, h, w), text, weight in zip(
        region_boxes(32, 32, 2, 2), region_texts, [0.2, 0.4, 0.0, 1.0], strict=True
    ):
        expected -= weight * text @ embed(image[top : top + h, left : left + w])
    np.testing.assert_allclose(float(value), expected, rtol=2e-3)

    grads = jax.grad(lambda p: loss(p, collage.patch_index, jax.random.key(0), guidance)[0])(
        collage.params
    )
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
