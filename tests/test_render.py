"""Renderer against an independent float64 reference, finite differences, and itself."""

from __future__ import annotations

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from clipclop_jax.collage import hires
from clipclop_jax.collage.params import Collage, CollageParams, clamp, random_population, take
from clipclop_jax.collage.render import render, render_population
from clipclop_jax.collage.transforms import max_patch_radius, window_shape
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

MODES = ("transparency", "masked_transparency", "opacity")
SIDE = 16


def smooth_library(side: int, count: int = 5) -> PatchLibrary:
    """Textures sampled from smooth functions, so any resolution shows the same picture."""
    centres = (np.arange(side) + 0.5) / side - 0.5  # texel centres in [-0.5, 0.5]
    y, x = np.meshgrid(centres, centres, indexing="ij")
    textures = []
    for i in range(count):
        r = 0.5 + 0.5 * np.sin(3 * x + i)
        g = 0.5 + 0.5 * np.cos(2 * y - i)
        b = 0.5 + 0.5 * np.sin(2 * (x + y) + 0.5 * i)
        radius = 0.3 + 0.03 * i
        # A soft-edged disc or ellipse: alpha 0 on the outer ring of texels.
        ellipse = np.sqrt((x / (1.0 if i % 2 else 0.7)) ** 2 + y**2)
        alpha = np.clip((radius - ellipse) * 12.0, 0.0, 1.0)
        textures.append(np.stack([r, g, b, alpha], -1))
    rgba = np.asarray(textures, np.float32)
    assert np.all(rgba[:, [0, -1], :, 3] == 0) and np.all(rgba[:, :, [0, -1], 3] == 0)
    sizes = np.full((count, 2), side, np.int32)
    return PatchLibrary(jnp.asarray(rgba), jnp.asarray(sizes))


def reference_render(collage: Collage, library: PatchLibrary, background, config) -> np.ndarray:
    """float64 re-implementation of docs/parameters.md with scipy's bilinear warp."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), collage.params)
    textures = np.asarray(library.rgba, np.float64)
    if textures.max() > 1.5:
        textures = textures / 255.0
    side = textures.shape[1]
    height, width = config.canvas_height, config.canvas_width
    k = min(height, width) / (config.patch_max_proportion * side)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    num = np.zeros((height, width, 3))
    den = np.zeros((height, width))
    alpha_sum = np.zeros((height, width))
    for i, index in enumerate(np.asarray(collage.patch_index)):
        cx = (p.translation[i, 0] + 1) / 2 * width
        cy = (p.translation[i, 1] + 1) / 2 * height
        c, s = np.cos(p.rotation[i]), np.sin(p.rotation[i])
        shape = np.array([[p.scale[i], p.shear[i]], [0.0, p.scale[i] * p.squeeze[i]]])
        m = shape @ np.array([[c, -s], [s, c]]) / k
        dx, dy = xs - cx, ys - cy
        u = m[0, 0] * dx + m[0, 1] * dy + side / 2
        v = m[1, 0] * dx + m[1, 1] * dy + side / 2
        rgba = np.stack(
            [
                ndimage.map_coordinates(
                    textures[index, :, :, ch], [v - 0.5, u - 0.5], order=1, mode="grid-constant"
                )
                for ch in range(4)
            ],
            -1,
        )
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        if config.colour_space == "rgb":
            rgb = rgb * p.colour[i]
        elif config.colour_space == "hsv":
            hue = (p.colour[i, 0] / (2 * np.pi)) % 1.0
            rgb = rgb * np.array(colorsys.hsv_to_rgb(hue, p.colour[i, 1], p.colour[i, 2]))
        if config.render_mode == "opacity":
            logits = np.where(alpha > 0.5, p.order[i] * alpha / 0.1, alpha - 5.0)
            num += np.exp(logits)[..., None] * rgb * (alpha**2)[..., None]
            den += np.exp(logits)
        else:
            num += rgb * alpha[..., None]
            den += alpha
        alpha_sum += alpha
    background = np.asarray(background, np.float64)
    if config.render_mode == "transparency":
        image = num
    elif config.render_mode == "masked_transparency":
        image = num / (den + 1e-8)[..., None]
    else:
        image = num / den[..., None]
    if config.invert_colours:
        image = 1.0 - image
    if config.render_mode == "transparency":
        image = image + background
    elif config.render_mode == "masked_transparency":
        coverage = np.clip(alpha_sum + 1e-8, 0, 1)[..., None]
        image = image * coverage + background * (1 - coverage)
    else:
        image = np.where((alpha_sum > 0.5)[..., None], image, background)
    return np.clip(image, 0.0, 1.0)


def small_config(**overrides) -> CollageConfig:
    defaults = dict(canvas_height=40, canvas_width=48, num_patches=6)
    return CollageConfig(**{**defaults, **overrides})


def random_background(config, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0, 0.6, config.canvas_shape + (3,)).astype(np.float32))


@pytest.fixture(scope="module")
def library():
    return smooth_library(SIDE)


@pytest.mark.parametrize("colour_space", ["rgb", "hsv", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_render_matches_float64_reference(library, mode, colour_space):
    config = small_config(render_mode=mode, colour_space=colour_space, invert_colours=False)
    population = random_population(jax.random.key(1), config, library.num_patches, 3)
    background = random_background(config)
    images = render_population(population, library, background, config)
    for i in range(3):
        expected = reference_render(take(population, i), library, background, config)
        error = np.abs(np.asarray(images[i]) - expected)
        if mode == "opacity":
            # A pixel whose alpha sits at the 0.5 threshold may flip between float32/64.
            assert np.mean(error < 1e-4) > 0.995, error.max()
        else:
            np.testing.assert_allclose(images[i], expected, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_inverted_colours_match_reference(library, mode):
    config = small_config(render_mode=mode, invert_colours=True)
    collage = take(random_population(jax.random.key(2), config, library.num_patches, 1), 0)
    background = random_background(config, 3)
    image = render(collage, library, background, config)
    expected = reference_render(collage, library, background, config)
    assert np.mean(np.abs(np.asarray(image) - expected) < 1e-4) > 0.995


def extreme_collage(config: CollageConfig) -> Collage:
    """Largest, most distorted patches at the canvas edges and corners."""
    n = config.num_patches
    corners = np.array([[-1, -1], [1, 1], [-1, 1], [1, -1], [0, 0], [0.9, -0.2]], np.float32)
    params = CollageParams(
        translation=jnp.asarray(corners[:n]),
        rotation=jnp.linspace(-np.pi, np.pi, n).astype(jnp.float32) + 0.785,
        scale=jnp.full((n,), config.min_scale, jnp.float32),
        squeeze=jnp.full((n,), config.min_squeeze, jnp.float32),
        shear=jnp.asarray(
            np.where(np.arange(n) % 2, config.max_shear, config.min_shear), jnp.float32
        ),
        colour=jnp.full((n, 3), 0.9, jnp.float32),
        order=jnp.linspace(0, 1, n).astype(jnp.float32),
    )
    return Collage(clamp(params, config), jnp.arange(n, dtype=jnp.int32) % 5)


@pytest.mark.parametrize("mode", MODES)
def test_windowed_equals_full_canvas_for_extreme_patches(library, mode):
    # A big canvas relative to the patches so that the windows are much smaller than it.
    config = small_config(render_mode=mode, canvas_height=96, canvas_width=112)
    window = window_shape(config, library.side)
    assert window[0] < config.canvas_height and window[1] < config.canvas_width
    # In float64, so that any difference is a clipped patch rather than rounding.
    with jax.enable_x64(True):
        collage = jax.tree.map(
            lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
            extreme_collage(config),
        )
        lib64 = PatchLibrary(library.rgba.astype(jnp.float64), library.sizes)
        background = random_background(config).astype(jnp.float64)
        windowed = render(collage, lib64, background, config)
        full = render(collage, lib64, background, config, windowed=False)
        np.testing.assert_allclose(windowed, full, atol=1e-9)


def test_window_holds_every_pixel_a_patch_touches(library):
    config = small_config(canvas_height=96, canvas_width=112, num_patches=1)
    radius = max_patch_radius(config, library.side)
    collage = extreme_collage(dataclasses.replace(config, num_patches=1))
    collage = collage._replace(
        params=collage.params._replace(translation=jnp.zeros((1, 2), jnp.float32))
    )
    black = jnp.zeros(config.canvas_shape + (3,), jnp.float32)
    full = np.asarray(render(collage, library, black, config, windowed=False)).sum(-1)
    rows, cols = np.nonzero(full > 0)
    distance = np.hypot(rows + 0.5 - 48, cols + 0.5 - 56)
    assert distance.max() <= radius
    assert distance.max() > 0.5 * radius  # the bound is not absurdly loose


def test_population_render_equals_python_loop(library):
    config = small_config()
    population = random_population(jax.random.key(3), config, library.num_patches, 4)
    background = random_background(config)
    batched = render_population(population, library, background, config)
    for i in range(4):
        single = render(take(population, i), library, background, config)
        # Eager and fused float32 arithmetic differ in the last bits only.
        np.testing.assert_allclose(batched[i], single, atol=1e-5)


def test_uint8_library_renders_like_float(library):
    config = small_config()
    quantised = np.round(np.asarray(library.rgba) * 255).astype(np.uint8)
    library_u8 = PatchLibrary(jnp.asarray(quantised), library.sizes)
    library_f32 = PatchLibrary(jnp.asarray(quantised.astype(np.float32) / 255), library.sizes)
    population = random_population(jax.random.key(4), config, library.num_patches, 2)
    background = random_background(config)
    np.testing.assert_allclose(
        render_population(population, library_u8, background, config),
        render_population(population, library_f32, background, config),
        atol=1e-6,
    )


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_finite_differences(library, mode):
    config = small_config(render_mode=mode, canvas_height=24, canvas_width=28, num_patches=4)
    collage = take(random_population(jax.random.key(5), config, library.num_patches, 1), 0)
    weights = np.random.default_rng(6).normal(size=config.canvas_shape + (3,))
    with jax.enable_x64(True):
        lib64 = PatchLibrary(library.rgba.astype(jnp.float64), library.sizes)
        background = jnp.asarray(random_background(config), jnp.float64) * 0.3
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), collage.params)

        def loss(p):
            image = render(Collage(p, collage.patch_index), lib64, background, config)
            return jnp.sum(image * weights)

        grads = jax.grad(loss)(params)
        rng = np.random.default_rng(7)
        for name in CollageParams._fields:
            if name == "order" and mode != "opacity":
                continue
            direction = rng.normal(size=getattr(params, name).shape)
            eps = 1e-5

            def shifted(sign, name=name, direction=direction, eps=eps):
                value = getattr(params, name) + sign * eps * direction
                return float(loss(params._replace(**{name: value})))

            numeric = (shifted(1) - shifted(-1)) / (2 * eps)
            analytic = float(jnp.sum(getattr(grads, name) * direction))
            assert abs(analytic) > 1e-6, name  # the parameter matters at all
            np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-6, err_msg=name)


def test_gradients_finite_at_degenerate_parameters(library):
    config = small_config()
    collage = extreme_collage(config)
    params = collage.params._replace(
        colour=jnp.zeros_like(collage.params.colour),
        translation=jnp.full_like(collage.params.translation, 5.0),  # off the canvas
    )
    black = jnp.zeros(config.canvas_shape + (3,), jnp.float32)

    def loss(p):
        return render(Collage(p, collage.patch_index), library, black, config).sum()

    grads = jax.grad(loss)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_high_resolution_render_downsampled_matches_low_resolution():
    low_side, factor = 16, 4
    low_library = smooth_library(low_side)
    high_library = smooth_library(low_side * factor)
    config = small_config(canvas_height=32, canvas_width=32, patch_max_proportion=1.5)
    high_config = config.resized(32 * factor, 32 * factor)
    collage = take(random_population(jax.random.key(8), config, 5, 1), 0)
    low = np.asarray(render(collage, low_library, jnp.zeros((32, 32, 3)), config))
    high = np.asarray(
        render(collage, high_library, jnp.zeros((32 * factor, 32 * factor, 3)), high_config)
    )
    pooled = high.reshape(32, factor, 32, factor, 3).mean((1, 3))
    assert np.abs(pooled - low).mean() < 0.02
    assert np.abs(low).mean() > 0.05  # the collage is not empty


def test_background_shape_is_checked(library):
    config = small_config()
    collage = take(random_population(jax.random.key(0), config, 5, 1), 0)
    with pytest.raises(ValueError, match="background has shape"):
        render(collage, library, jnp.zeros((8, 8, 3)), config)


@pytest.mark.parametrize("mode", ["masked_transparency", "opacity"])
def test_high_res_render_equals_the_full_canvas_render(library, mode, monkeypatch):
    # render_high_res fits a window to each patch's own size and draws patches in groups
    # padded with off-canvas patches (forced here by a tiny group budget); none of that may
    # change a pixel.
    monkeypatch.setattr(hires, "MAX_SAMPLES", 2 * 64 * 64)
    config = small_config(render_mode=mode)
    extreme = extreme_collage(config)
    randoms = take(random_population(jax.random.key(5), config, 5, 1), 0)
    collage = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), extreme, randoms)
    config = dataclasses.replace(config, num_patches=int(collage.patch_index.shape[0]))
    size = (72, 80)
    background = jnp.asarray(np.random.default_rng(1).uniform(size=(*size, 3)), jnp.float32)
    high = hires.render_high_res(collage, library, background, config, *size)
    full = render(collage, library, background, config.resized(*size), windowed=False)
    np.testing.assert_allclose(high, full, atol=2e-5)


def opaque_ring_library(side: int = SIDE, count: int = 5) -> PatchLibrary:
    """Textures opaque up to their outermost texels (a library that skipped the ring)."""
    rng = np.random.default_rng(11)
    rgba = rng.uniform(0.2, 1.0, (count, side, side, 4)).astype(np.float32)
    rgba[..., 3] = rng.uniform(0.6, 1.0, (count, side, side))
    assert np.all(rgba[:, [0, -1], :, 3] > 0.5)
    return PatchLibrary(jnp.asarray(rgba), jnp.asarray(np.full((count, 2), side, np.int32)))


@pytest.mark.parametrize("mode", MODES)
def test_an_opaque_outer_ring_renders_by_the_documented_formula(mode):
    # Texels outside the square count as transparent (docs/parameters.md), whatever the
    # library's outer ring holds: the patch must end there, in every renderer.
    library = opaque_ring_library()
    config = small_config(render_mode=mode, canvas_height=64, canvas_width=72, num_patches=4)
    collage = take(random_population(jax.random.key(12), config, library.num_patches, 1), 0)
    background = random_background(config, 4)
    expected = reference_render(collage, library, background, config)
    windowed = np.asarray(render(collage, library, background, config))
    full = np.asarray(render(collage, library, background, config, windowed=False))
    high = hires.render_high_res(collage, library, background, config, *config.canvas_shape)
    for image in (windowed, full, high):
        assert np.mean(np.abs(image - expected) < 1e-4) > 0.995, np.abs(image - expected).max()
    # The patches really are opaque, and the background shows around them.
    assert np.mean(np.abs(expected - np.asarray(background)).max(-1) < 1e-6) > 0.2


@pytest.mark.parametrize("mode", MODES)
def test_the_patch_count_comes_from_the_collage_not_the_config(library, mode):
    # A collage of 5 patches rendered with a config made for 20.
    config = small_config(render_mode=mode, num_patches=5)
    collage = take(random_population(jax.random.key(13), config, library.num_patches, 1), 0)
    background = random_background(config, 5)
    expected = reference_render(collage, library, background, config)
    bigger = dataclasses.replace(config, num_patches=20)
    images = [
        np.asarray(render(collage, library, background, bigger)),
        hires.render_high_res(collage, library, background, bigger, *config.canvas_shape),
    ]
    for image in images:
        assert np.mean(np.abs(image - expected) < 1e-4) > 0.995, np.abs(image - expected).max()


@pytest.mark.parametrize("field", ["translation", "rotation", "scale", "colour"])
@pytest.mark.parametrize("mode", MODES)
def test_a_non_finite_parameter_makes_its_window_nan_and_the_rest_exact(library, mode, field):
    """A NaN parameter (a diverged optimiser) must give a NaN render, so the collage's loss
    is NaN and it is never the best; converting that NaN to the renderer's int32 window and
    texel indices must not write or read outside the arrays (it crashed the process)."""
    config = small_config(render_mode=mode)
    collage = take(random_population(jax.random.key(3), config, library.num_patches, 1), 0)
    background = random_background(config)
    bad_value = getattr(collage.params, field).at[0].set(jnp.nan)
    bad = collage._replace(params=collage.params._replace(**{field: bad_value}))
    image = np.asarray(jax.jit(render, static_argnums=3)(bad, library, background, config))
    assert np.isnan(image).any()
    # Outside the NaN patch's window the other patches render as if it were not there.
    rest = Collage(jax.tree.map(lambda leaf: leaf[1:], collage.params), collage.patch_index[1:])
    clean = np.asarray(render(rest, library, background, config))
    finite = ~np.isnan(image).any(axis=-1)
    assert finite.any()
    if mode != "opacity":  # opacity's softmax counts every patch, the NaN one too
        np.testing.assert_allclose(image[finite], clean[finite], atol=1e-6)
