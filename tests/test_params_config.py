"""Collage parameters, their ranges, and config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.collage.background import make_background, parse_colour
from clipclop_jax.collage.params import (
    CollageParams,
    clamp,
    random_patch_index,
    random_population,
    stack,
    take,
    where,
)
from clipclop_jax.collage.transforms import hsv_to_rgb, sampling_matrix
from clipclop_jax.config import CollageConfig, OptimConfig, from_dict, to_dict


def test_initial_parameters_follow_the_original_ranges():
    config = CollageConfig(num_patches=500)
    collage = take(random_population(jax.random.key(0), config, 40, 1), 0)
    p = collage.params
    assert p.translation.shape == (500, 2) and p.colour.shape == (500, 3)
    for value, low, high in [
        (p.translation, -1, 1),
        (p.rotation, -math.pi, math.pi),
        (p.scale, 1, 2),
        (p.squeeze, 0.5, 2),
        (p.shear, -0.2, 0.2),
        (p.colour, 0.5, 1.0),  # initial RGB range
        (p.order, 0, 1),
    ]:
        assert float(value.min()) >= low and float(value.max()) <= high
        # Spread over the range, not stuck at one value.
        assert float(value.max()) - float(value.min()) > 0.8 * (high - low)


def test_clamp_projects_every_field_onto_its_range():
    config = CollageConfig(num_patches=3)
    big = CollageParams(
        translation=jnp.full((3, 2), 5.0),
        rotation=jnp.full((3,), -10.0),
        scale=jnp.full((3,), 0.1),
        squeeze=jnp.full((3,), 9.0),
        shear=jnp.full((3,), -1.0),
        colour=jnp.full((3, 3), -1.0),
        order=jnp.full((3,), 2.0),
    )
    c = clamp(big, config)
    assert np.allclose(c.translation, 1) and np.allclose(c.rotation, -math.pi)
    assert np.allclose(c.scale, 1) and np.allclose(c.squeeze, 2) and np.allclose(c.shear, -0.2)
    assert np.allclose(c.colour, -0.2) and np.allclose(c.order, 1)
    hsv = clamp(
        big._replace(colour=jnp.full((3, 3), 9.0)), CollageConfig(num_patches=3, colour_space="hsv")
    )
    assert np.allclose(hsv.colour, [2 * math.pi, 1, 1])


def test_population_individuals_depend_only_on_their_own_key():
    config = CollageConfig(num_patches=8)
    four = random_population(jax.random.key(3), config, 20, 4)
    two = random_population(jax.random.key(3), config, 20, 2)
    for a, b in zip(jax.tree.leaves(take(four, slice(0, 2))), jax.tree.leaves(two), strict=True):
        np.testing.assert_array_equal(a, b)
    # Individuals differ from each other.
    assert not np.allclose(four.params.translation[0], four.params.translation[1])


def test_patch_index_uses_distinct_patches_until_the_library_runs_out():
    index = np.asarray(random_patch_index(jax.random.key(0), 10, 30))
    assert len(set(index.tolist())) == 10 and index.max() < 30
    index = np.asarray(random_patch_index(jax.random.key(0), 70, 30))
    assert sorted(set(index.tolist())) == list(range(30)) and index.shape == (70,)


def test_tree_helpers():
    config = CollageConfig(num_patches=4)
    a = random_population(jax.random.key(0), config, 10, 3)
    b = random_population(jax.random.key(1), config, 10, 3)
    mixed = where(jnp.array([True, False, True]), a, b)
    np.testing.assert_array_equal(mixed.params.scale[1], b.params.scale[1])
    np.testing.assert_array_equal(mixed.patch_index[2], a.patch_index[2])
    restacked = stack([take(a, i) for i in range(3)])
    for x, y in zip(jax.tree.leaves(restacked), jax.tree.leaves(a), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sampling_matrix_order_is_rotate_then_scale():
    m = np.asarray(
        sampling_matrix(
            jnp.float32(math.pi / 2), jnp.float32(2.0), jnp.float32(0.5), jnp.float32(0.1)
        )
    )
    expected = np.array([[2.0, 0.1], [0.0, 1.0]]) @ np.array([[0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(m, expected, atol=1e-6)


def test_hsv_to_rgb_matches_colorsys():
    import colorsys

    rng = np.random.default_rng(0)
    hsv = rng.uniform(size=(50, 3))
    hsv[:, 0] *= 2 * math.pi
    ours = np.asarray(hsv_to_rgb(jnp.asarray(hsv, jnp.float32)))
    theirs = np.array([colorsys.hsv_to_rgb(h / (2 * math.pi), s, v) for h, s, v in hsv])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(render_mode="blend"), "render_mode='blend' is not valid"),
        (dict(num_patches=0), "num_patches=0 is out of range"),
        (dict(min_scale=2.0, max_scale=1.0), "min_scale=2.0 > max_scale=1.0"),
        (dict(min_squeeze=0.0), "min_squeeze=0.0 must be > 0"),
        (dict(canvas_height=float("nan")), "canvas_height=nan has the wrong type (float)"),
    ],
)
def test_impossible_collage_config_names_field_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CollageConfig(**kwargs)


def test_optim_config_rejects_bad_values():
    with pytest.raises(
        ValueError, match="optimizer='rmsprop' is not valid: choose one of adam, sgd"
    ):
        OptimConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="num_crops=0 is out of range"):
        OptimConfig(num_crops=0)


def test_from_dict_names_the_nearest_valid_key_and_round_trips():
    with pytest.raises(ValueError, match="Unknown setting 'num_patchs'.*'num_patches'"):
        from_dict(CollageConfig, {"num_patchs": 3})
    config = CollageConfig(num_patches=7, render_mode="opacity")
    assert from_dict(CollageConfig, to_dict(config)) == config


def test_backgrounds():
    assert parse_colour("#ff8000") == (1.0, 128 / 255, 0.0)
    assert parse_colour("255,0,0") == (1.0, 0.0, 0.0)
    assert parse_colour("0.5,0.5,0.5") == (0.5, 0.5, 0.5)
    white = make_background("white", 4, 6)
    assert white.shape == (4, 6, 3) and float(white.min()) == 1.0
    noise = make_background("noise", 8, 8, key=jax.random.key(1))
    again = make_background("noise", 8, 8, key=jax.random.key(1))
    np.testing.assert_array_equal(noise, again)
    assert float(noise.std()) > 0.1
    with pytest.raises(ValueError, match="is not a colour"):
        make_background("not-a-colour-or-file", 4, 4)


def test_background_image_is_stretched_over_the_canvas(tmp_path):
    from PIL import Image

    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 10:] = 255
    Image.fromarray(pixels).save(tmp_path / "bg.png")
    background = np.asarray(make_background(str(tmp_path / "bg.png"), 6, 8))
    assert background.shape == (6, 8, 3)
    assert background[:, :3].max() < 0.05 and background[:, 5:].min() > 0.95
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot be read"):
        make_background(str(tmp_path / "bad.png"), 6, 8)
