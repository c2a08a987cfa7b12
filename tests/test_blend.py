"""Poisson blending against scipy, OpenCV and the renderer; the solver's own reports."""

from __future__ import annotations

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.sparse
import scipy.sparse.linalg
from scipy import ndimage

from clipclop_jax.blend.poisson import (
    dct_solve,
    image_gradients,
    laplacian,
    laplacian_eigenvalues,
    poisson_blend,
    solve_poisson,
)
from clipclop_jax.blend.seams import (
    BACKGROUND,
    Layers,
    blend_collage,
    collage_guidance,
    collage_layers,
)
from clipclop_jax.collage.params import Collage, CollageParams, random_collage, stack
from clipclop_jax.collage.render import render, sample_patches
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

# ------------------------------------------------------------------------- references


def assembled_system(weight: np.ndarray) -> scipy.sparse.csc_matrix:
    """float64 ``L + diag(w)`` for an [H, W] image, built from the 1-D Neumann Laplacians."""
    height, width = weight.shape

    def path_laplacian(n):
        degree = np.full(n, 2.0)
        degree[[0, -1]] = 1.0
        return scipy.sparse.diags([-np.ones(n - 1), degree, -np.ones(n - 1)], [-1, 0, 1])

    laplacian_2d = scipy.sparse.kronsum(path_laplacian(width), path_laplacian(height))
    return (laplacian_2d + scipy.sparse.diags(weight.ravel())).tocsc()


def reference_blend(target, guidance_x, guidance_y, weight) -> np.ndarray:
    """float64 spsolve of the normal equations of the blending energy, channel by channel."""
    target, guidance_x, guidance_y = (
        np.asarray(a, np.float64) for a in (target, guidance_x, guidance_y)
    )
    weight = np.broadcast_to(np.asarray(weight, np.float64), target.shape[:2])
    rhs = np.zeros_like(target)
    rhs[:, 1:] += guidance_x
    rhs[:, :-1] -= guidance_x
    rhs[1:] += guidance_y
    rhs[:-1] -= guidance_y
    rhs += weight[..., None] * target
    matrix = assembled_system(weight)
    columns = [scipy.sparse.linalg.spsolve(matrix, rhs[..., c].ravel()) for c in range(3)]
    return np.stack(columns, -1).reshape(target.shape)


def psnr(a, b) -> float:
    error = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(1.0 / error))


def random_problem(seed: int, height: int, width: int):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, (height, width, 3))
    guidance_x = rng.normal(0, 0.2, (height, width - 1, 3))
    guidance_y = rng.normal(0, 0.2, (height - 1, width, 3))
    return [jnp.asarray(a, jnp.float32) for a in (target, guidance_x, guidance_y)]


def disc_library(side: int = 24, count: int = 3) -> PatchLibrary:
    """Smooth textures in hard-edged ellipses (alpha 0 on the outer ring of texels)."""
    centres = (np.arange(side) + 0.5) / side - 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    textures = []
    for i in range(count):
        rgb = [
            0.6 + 0.3 * np.sin(4 * x + i),
            0.3 + 0.2 * np.cos(3 * y - i),
            0.5 + 0.3 * np.sin(3 * (x + y) + i),
        ]
        alpha = np.clip((0.4 - np.hypot(x, y / (0.8 + 0.1 * i))) * side, 0, 1)
        textures.append(np.stack([*rgb, alpha], -1))
    # NumPy, not jnp: the cached library must not be created inside a trace.
    rgba = np.asarray(textures, np.float32)
    return PatchLibrary(rgba, np.full((count, 2), side, np.int32))


def smooth_background(height: int, width: int) -> jax.Array:
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = [0.2 + 0.5 * rows, 0.7 - 0.4 * cols, 0.3 + 0.3 * rows * cols]
    return jnp.asarray(np.stack(rgb, -1), jnp.float32)


@functools.cache
def library() -> PatchLibrary:
    return disc_library()


# Compiled once per shape: op-by-op dispatch of the solver's loop is slower to compile.
blend = jax.jit(poisson_blend, static_argnames=("tol", "max_iterations", "precondition"))
layers_of = jax.jit(collage_layers, static_argnames="config")


# ------------------------------------------------------------------------- the solver


@pytest.mark.parametrize("shape", [(8, 6), (7, 9), (2, 3)])
def test_dct_solve_is_the_exact_dct_solution(shape):
    rng = np.random.default_rng(0)
    rhs = rng.normal(size=(2,) + shape)
    solve = jax.jit(dct_solve)
    for weight in (0.3, 0.0):  # 0: the singular Neumann problem, mean dropped
        denominator = laplacian_eigenvalues(*shape) + weight
        inverse = np.where(denominator > 0, 1 / np.where(denominator > 0, denominator, 1), 0)
        coefficients = scipy.fft.dctn(rhs, axes=(1, 2), norm="ortho")
        expected = scipy.fft.idctn(coefficients * inverse, axes=(1, 2), norm="ortho")
        solved = solve(jnp.asarray(rhs, jnp.float32), weight)
        np.testing.assert_allclose(solved, expected, atol=2e-6 * np.abs(expected).max())


def test_laplacian_matches_assembled_matrix():
    u = np.random.default_rng(1).normal(size=(9, 7))
    expected = (assembled_system(np.zeros((9, 7))) @ u.ravel()).reshape(9, 7)
    np.testing.assert_allclose(laplacian(jnp.asarray(u, jnp.float32)), expected, atol=1e-5)


WEIGHTS = {
    "mask": lambda rng, shape: np.where(rng.uniform(size=shape) < 0.2, 1.0, 0.0),
    "variable": lambda rng, shape: rng.uniform(0.001, 0.5, shape),
    "sparse": lambda rng, shape: np.where(rng.uniform(size=shape) < 0.02, 2.0, 0.0) + 1e-3,
}


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("shape", [(16, 16), (23, 37)])
def test_blend_matches_spsolve_in_float64(kind, shape):
    rng = np.random.default_rng(len(kind) + shape[1])
    target, guidance_x, guidance_y = random_problem(shape[0], *shape)
    weight = WEIGHTS[kind](rng, shape)
    weight[0, 0] = max(weight[0, 0], 0.1)  # a data term somewhere: non-singular
    expected = reference_blend(target, guidance_x, guidance_y, weight)
    blended, info = poisson_blend(
        target,
        guidance_x,
        guidance_y,
        jnp.asarray(weight, jnp.float32),
        tol=1e-6,
        max_iterations=500,
    )
    error = np.linalg.norm(np.asarray(blended, np.float64) - expected) / np.linalg.norm(expected)
    print(
        f"{kind} {shape}: {int(info.iterations)} iterations, residual "
        f"{float(info.residual):.1e}, error {error:.1e}"
    )
    assert bool(info.converged) and float(info.residual) <= 1e-6
    assert error < 1e-4


def test_plain_cg_agrees_but_needs_more_iterations():
    target, guidance_x, guidance_y = random_problem(2, 24, 20)
    weight = jnp.full((24, 20), 0.01, jnp.float32)
    fast, fast_info = blend(target, guidance_x, guidance_y, weight, tol=1e-6)
    slow, slow_info = blend(
        target, guidance_x, guidance_y, weight, tol=1e-6, precondition=False, max_iterations=2000
    )
    assert int(fast_info.iterations) == 1  # constant weight: the DCT solve is exact
    assert int(slow_info.iterations) > 20 and bool(slow_info.converged)
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_solver_is_jax_scipy_cg_with_the_dct_preconditioner():
    rng = np.random.default_rng(3)
    rhs = jnp.asarray(rng.normal(size=(20, 18, 3)), jnp.float32)
    weight = jnp.asarray(rng.uniform(0.01, 1.0, (20, 18)), jnp.float32)
    ours, info = jax.jit(functools.partial(solve_poisson, tol=1e-6))(rhs, weight)
    assert int(info.iterations) > 3 and bool(info.converged)

    @jax.jit
    def theirs(b):
        return jax.scipy.sparse.linalg.cg(
            lambda u: laplacian(u) + weight[None] * u,
            b,
            tol=1e-6,
            maxiter=int(info.iterations),
            M=lambda r: dct_solve(r, jnp.mean(weight)),
        )[0]

    np.testing.assert_allclose(
        ours, jnp.moveaxis(theirs(jnp.moveaxis(rhs, -1, 0)), 0, -1), atol=1e-5
    )


def test_reported_residual_is_the_true_residual():
    target, guidance_x, guidance_y = random_problem(4, 18, 22)
    weight = np.random.default_rng(4).uniform(0.0, 2.0, (18, 22))
    blended, info = blend(
        target, guidance_x, guidance_y, jnp.asarray(weight, jnp.float32), max_iterations=2
    )
    assert int(info.iterations) == 2 and not bool(info.converged)
    # Residual of the change from the target, as the docstring says.
    change = np.asarray(blended, np.float64) - np.asarray(target, np.float64)
    rhs = np.zeros_like(change)
    mismatch_x = np.asarray(guidance_x, np.float64) - np.diff(np.asarray(target, np.float64), 1, 1)
    mismatch_y = np.asarray(guidance_y, np.float64) - np.diff(np.asarray(target, np.float64), 1, 0)
    rhs[:, 1:] += mismatch_x
    rhs[:, :-1] -= mismatch_x
    rhs[1:] += mismatch_y
    rhs[:-1] -= mismatch_y
    matrix = assembled_system(weight)
    error = rhs.reshape(-1, 3) - matrix @ change.reshape(-1, 3)
    expected = np.linalg.norm(error) / np.linalg.norm(rhs)
    assert expected > 1e-3  # two iterations are not enough
    np.testing.assert_allclose(float(info.residual), expected, rtol=1e-3)


def test_an_image_gradient_field_gives_the_image_back_up_to_a_constant():
    image = jnp.asarray(np.random.default_rng(5).uniform(size=(21, 30, 3)), jnp.float32)
    target = jnp.full_like(image, 0.25)
    blended, info = blend(target, *image_gradients(image), 0.0, tol=1e-6)
    assert bool(info.converged)
    np.testing.assert_allclose(blended.mean((0, 1)), [0.25] * 3, atol=1e-5)  # target's mean
    blended, image = np.asarray(blended), np.asarray(image)
    np.testing.assert_allclose(
        blended - blended.mean((0, 1)), image - image.mean((0, 1)), atol=1e-5
    )


def test_flat_input_takes_no_iterations_and_no_nan():
    zeros = jnp.zeros((12, 10, 3), jnp.float32)
    blended, info = blend(zeros, *image_gradients(zeros), jnp.zeros((12, 10)))
    assert int(info.iterations) == 0 and float(info.residual) == 0.0 and bool(info.converged)
    assert bool(jnp.all(blended == 0))
    # Gradients through the solve (implicit differentiation) are finite too.
    grad = jax.jit(jax.grad(lambda t: blend(t, *image_gradients(zeros), 0.5)[0].sum()))(zeros)
    np.testing.assert_allclose(grad, 1.0, atol=1e-5)


def test_poisson_blend_vmaps_like_a_loop():
    problems = [random_problem(seed, 12, 14) for seed in range(3)]
    weight = jnp.full((12, 14), 0.05, jnp.float32)
    stacked = [jnp.stack(parts) for parts in zip(*problems, strict=True)]
    batched, info = jax.jit(jax.vmap(lambda t, x, y: poisson_blend(t, x, y, weight)))(*stacked)
    for i, problem in enumerate(problems):
        np.testing.assert_allclose(batched[i], blend(*problem, weight)[0], atol=1e-5)
    assert info.iterations.shape == (3,)


def test_bad_solver_inputs_raise_one_line_errors():
    target, guidance_x, guidance_y = random_problem(6, 8, 8)
    with pytest.raises(ValueError, match="guidance_x has shape"):
        poisson_blend(target, guidance_y, guidance_y, 0.1)
    with pytest.raises(ValueError, match="weight has shape"):
        poisson_blend(target, guidance_x, guidance_y, jnp.ones((8, 7)))
    with pytest.raises(ValueError, match="weight has negative"):
        poisson_blend(target, guidance_x, guidance_y, -jnp.ones((8, 8)))
    with pytest.raises(ValueError, match="target holds NaN"):
        poisson_blend(target.at[0, 0, 0].set(jnp.nan), guidance_x, guidance_y, 0.1)


def test_solver_matches_opencv_on_opencvs_own_system():
    """seamlessClone's Poisson problem, posed with our weights: Dirichlet = huge weight."""
    src, dst, mask, _ = clone_inputs()
    cloned = opencv_clone(src, dst, mask)
    eroded = ndimage.binary_erosion(mask, np.ones((3, 3)), iterations=3)  # as OpenCV does
    source = np.where(mask[..., None], src, 0.0)
    guidance = [
        np.where(eroded[:, :-1, None], np.diff(source, 1, 1), np.diff(dst, 1, 1)),
        np.where(eroded[:-1, :, None], np.diff(source, 1, 0), np.diff(dst, 1, 0)),
    ]
    (top, left), (bottom, right) = np.argwhere(mask).min(0), np.argwhere(mask).max(0)
    weight = np.full(mask.shape, 1e4)
    weight[top + 1 : bottom, left + 1 : right] = 0.0  # free inside the mask's bounding box
    blended, info = blend(
        *(jnp.asarray(a, jnp.float32) for a in [dst, *guidance, weight]),
        tol=1e-7,
        max_iterations=1000,
    )
    # OpenCV truncates to uint8.
    ours = np.floor(np.clip(np.asarray(blended), 0, 1) * 255 + 1e-3) / 255
    print(
        f"PSNR vs OpenCV on its own system: {psnr(ours, cloned):.1f} dB "
        f"({int(info.iterations)} iterations)"
    )
    assert psnr(ours, cloned) > 50


# ------------------------------------------------------------------------- collages


def single_patch_collage() -> tuple[Collage, CollageConfig]:
    config = CollageConfig(
        canvas_height=64, canvas_width=64, num_patches=1, patch_max_proportion=1.6
    )
    params = CollageParams(
        translation=jnp.array([[0.05, -0.03]], jnp.float32),
        rotation=jnp.array([0.3], jnp.float32),
        scale=jnp.ones(1, jnp.float32),
        squeeze=jnp.ones(1, jnp.float32),
        shear=jnp.zeros(1, jnp.float32),
        colour=jnp.array([[1.0, 0.9, 0.8]], jnp.float32),
        order=jnp.zeros(1, jnp.float32),
    )
    return Collage(params, jnp.zeros(1, jnp.int32)), config


@functools.cache
def clone_inputs():
    """(src, dst, mask, rendered): the single patch's own colours, the background, where the
    patch shows, and the render."""
    collage, config = single_patch_collage()
    background = smooth_background(*config.canvas_shape)
    rendered, layers = layers_of(collage, library(), background, config=config)
    mask = np.asarray(layers.top == 0)
    quantise = lambda a: np.round(np.asarray(a, np.float64) * 255) / 255
    return quantise(layers.top_colour), quantise(background), mask, np.asarray(rendered)


def opencv_clone(src, dst, mask) -> np.ndarray:
    (top, left), (bottom, right) = np.argwhere(mask).min(0), np.argwhere(mask).max(0)
    # seamlessClone centres the mask's bounding box on this point.
    centre = (int(left + (right - left + 1) // 2), int(top + (bottom - top + 1) // 2))
    to_uint8 = lambda a: np.round(a * 255).astype(np.uint8)
    cloned = cv2.seamlessClone(
        to_uint8(src), to_uint8(dst), to_uint8(mask * 1.0), centre, cv2.NORMAL_CLONE
    )
    return cloned / 255.0


def test_single_patch_blends_like_opencv_seamless_clone():
    collage, config = single_patch_collage()
    src, dst, mask, rendered = clone_inputs()
    cloned = opencv_clone(src, dst, mask)
    background = smooth_background(*config.canvas_shape)
    # A firmly held background and a weak screening inside the patch: a Dirichlet problem.
    blended, info = blend_collage(
        collage,
        library(),
        background,
        config,
        blend_background=True,
        background_weight=1e3,
        radius=1.0,
    )
    print(
        f"single patch: PSNR blend vs seamlessClone {psnr(blended, cloned):.1f} dB, "
        f"render vs seamlessClone {psnr(rendered, cloned):.1f} dB, "
        f"{int(info.iterations)} iterations"
    )
    assert bool(info.converged)
    assert psnr(blended, cloned) > 35
    assert psnr(blended, cloned) > psnr(rendered, cloned) + 10


def test_without_background_seams_a_single_patch_is_left_as_rendered():
    collage, config = single_patch_collage()
    background = smooth_background(*config.canvas_shape)
    blended, info = blend_collage(collage, library(), background, config)
    np.testing.assert_allclose(blended, clone_inputs()[3], atol=1e-5)
    assert int(info.iterations) == 0  # the guidance is the render's own gradient


@pytest.mark.parametrize("mode", ["transparency", "masked_transparency", "opacity"])
def test_layers_render_the_collage_and_rank_patches_by_their_weight(mode):
    config = CollageConfig(
        canvas_height=40, canvas_width=36, num_patches=8, render_mode=mode, patch_max_proportion=1.5
    )
    collage = random_collage(jax.random.key(7), config, library().num_patches)
    background = smooth_background(40, 36)
    rendered, layers = layers_of(collage, library(), background, config=config)
    np.testing.assert_allclose(rendered, render(collage, library(), background, config), atol=1e-4)
    # Brute force: every patch sampled over the whole canvas.
    rgba, _ = sample_patches(collage, library(), config, config.canvas_shape)
    alpha = np.asarray(rgba[..., 3], np.float64)
    if mode == "opacity":
        order = np.asarray(collage.params.order, np.float64)[:, None, None]
        safe = np.maximum(alpha, 1e-9)
        score = np.where(alpha > 0.5, 2 + order * alpha / 0.1 + 2 * np.log(safe), alpha)
    else:
        score = alpha
    scores = np.concatenate([np.full((1, 40, 36), 0.5), score])  # the background first
    last_best = config.num_patches - np.argmax(scores[::-1], 0)  # ties go to the later layer
    top = last_best - 1  # the background is -1
    # Beneath the top patch: the next best (the background ranks 1/2); under the background:
    # the background.
    others = scores.copy()
    np.put_along_axis(others, (top + 1)[None], -np.inf, axis=0)
    under = np.where(
        top == BACKGROUND, BACKGROUND, config.num_patches - np.argmax(others[::-1], 0) - 1
    )
    ordered = np.sort(scores, 0)
    decided = ordered[-1] - ordered[-2] > 1e-4  # no float32 near-ties
    decided_under = decided & (ordered[-2] - ordered[-3] > 1e-4)
    assert decided.mean() > 0.9 and (top >= 0).any() and (under >= 0).any()
    np.testing.assert_array_equal(np.asarray(layers.top)[decided], top[decided])
    np.testing.assert_array_equal(np.asarray(layers.under)[decided_under], under[decided_under])
    top_colour = np.asarray(layers.top_colour)
    np.testing.assert_allclose(
        top_colour[np.asarray(layers.top) == BACKGROUND],
        np.asarray(background)[np.asarray(layers.top) == BACKGROUND],
    )


def test_seam_guidance_follows_the_documented_rules():
    # One row of seven pixels; each edge exercises one rule. Colours: visible patch
    # 10 * id + column, patch beneath 100 + 10 * id + column^2, background 3 * column.
    top = np.array([[BACKGROUND, 0, 0, 1, 2, 3, 3]])
    under = np.array([[BACKGROUND, BACKGROUND, 1, 5, 5, 4, 4]])
    columns = np.arange(7.0)[None]
    background = 3 * columns
    visible = np.where(top == BACKGROUND, background, 10 * top + columns)
    beneath = np.where(under == BACKGROUND, background, 100 + 10 * under + columns**2)
    rgb = lambda a: jnp.asarray(np.repeat(a[..., None], 3, -1), jnp.float32)
    layers = Layers(jnp.asarray(top), rgb(visible), jnp.asarray(under), rgb(beneath))
    rendered = 7 * columns**2
    guidance_x, _ = collage_guidance(rgb(rendered), layers, rgb(background), blend_background=True)
    expected = [
        beneath[0, 1] - visible[0, 0],  # the background visible at 0 is beneath at 1
        visible[0, 2] - visible[0, 1],  # patch 0 visible at both: its own gradient
        visible[0, 3] - beneath[0, 2],  # patch 1 visible at 3 is beneath at 2
        beneath[0, 4] - beneath[0, 3],  # patch 5 beneath both
        background[0, 5] - background[0, 4],  # no shared layer: the background
        visible[0, 6] - visible[0, 5],  # patch 3 visible at both
    ]
    np.testing.assert_allclose(guidance_x[0, :, 0], expected)
    kept, _ = collage_guidance(rgb(rendered), layers, rgb(background))
    # Without background seams the first edge (background visible) keeps the render's
    # gradient; the second (background only under pixel 1) is blended as before.
    np.testing.assert_allclose(kept[0, :, 0], [rendered[0, 1] - rendered[0, 0]] + expected[1:])


def test_mixed_guidance_takes_the_larger_of_visible_and_beneath_gradients():
    top = np.zeros((1, 4), int)
    under = np.ones((1, 4), int)
    visible = np.array([[0.0, 1.0, 1.1, 3.0]])
    beneath = np.array([[0.0, 0.5, 2.0, 2.5]])
    layers = Layers(
        *(
            jnp.asarray(a)
            for a in (
                top,
                np.repeat(visible[..., None], 3, -1).astype(np.float32),
                under,
                np.repeat(beneath[..., None], 3, -1).astype(np.float32),
            )
        )
    )
    zeros = jnp.zeros((1, 4, 3), jnp.float32)
    guidance_x, _ = collage_guidance(zeros, layers, zeros, mode="mixed")
    np.testing.assert_allclose(guidance_x[0, :, 0], [1.0, 1.5, 1.9])


@functools.cache
def overlapping_collage() -> tuple[Collage, CollageConfig]:
    config = CollageConfig(
        canvas_height=48, canvas_width=40, num_patches=8, patch_max_proportion=1.5
    )
    return random_collage(jax.random.key(8), config, library().num_patches), config


def test_blend_collage_compiled_equals_vmapped_and_converges():
    collage, config = overlapping_collage()
    background = smooth_background(48, 40)
    blend_patches = functools.partial(
        blend_collage,
        library=library(),
        background=background,
        config=config,
        blend_background=True,
    )
    compiled, info = blend_patches(collage)
    assert int(info.iterations) == 1 and bool(info.converged)  # constant weight: exact
    # A firmer background makes the weight vary: CG does real work, same program.
    firm, firm_info = blend_patches(collage, background_weight=10.0)
    assert int(firm_info.iterations) > 1 and bool(firm_info.converged)
    assert bool(jnp.all(jnp.isfinite(firm))) and float(jnp.abs(firm - compiled).max()) > 0.01
    # Patches off the canvas: nothing to blend, and no NaN from the empty system.
    away = collage._replace(
        params=collage.params._replace(translation=jnp.full((8, 2), 5.0, jnp.float32))
    )
    blended, away_info = blend_patches(away)
    np.testing.assert_allclose(blended, background, atol=1e-5)
    assert int(away_info.iterations) == 0 and float(away_info.residual) == 0.0
    # Traced inside a user's jit and vmap: the same images as one by one.
    batched, batched_info = jax.jit(jax.vmap(blend_patches))(stack([collage, away]))
    np.testing.assert_allclose(batched[0], compiled, atol=1e-5)
    np.testing.assert_allclose(batched[1], blended, atol=1e-5)
    np.testing.assert_array_equal(batched_info.iterations, [1, 0])


def test_mode_none_returns_the_render():
    collage, config = single_patch_collage()
    background = smooth_background(*config.canvas_shape)
    image, info = blend_collage(collage, library(), background, config, mode="none")
    np.testing.assert_array_equal(image, clone_inputs()[3])  # what collage_layers renders
    assert int(info.iterations) == 0 and float(info.residual) == 0.0


def test_bad_collage_inputs_raise_one_line_errors():
    collage, config = single_patch_collage()
    background = smooth_background(64, 64)
    with pytest.raises(ValueError, match="mode='soft' is not valid"):
        blend_collage(collage, library(), background, config, mode="soft")
    with pytest.raises(ValueError, match="background has shape"):
        blend_collage(collage, library(), background[:32], config)
    with pytest.raises(ValueError, match="radius=0.0 is not valid"):
        blend_collage(collage, library(), background, config, radius=0.0)
    bad = collage._replace(
        params=collage.params._replace(rotation=jnp.array([jnp.nan], jnp.float32))
    )
    with pytest.raises(ValueError, match="collage holds NaN"):
        blend_collage(bad, library(), background, config)
