"""Augmentations: the warp against OpenCV and SciPy, the matrices' geometry, the random
draws' ranges, and the JAX contracts (determinism, jit, vmap, gradients)."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from clipclop_jax.guidance.augment import AugmentConfig, random_augment, random_augment_matrices
from clipclop_jax.guidance.random_warps import random_crop_box, random_perspective_matrix
from clipclop_jax.guidance.warp import crop_matrix, image_corners, perspective_matrix, warp
from clipclop_jax.runs.presets import preset_settings

H, W = 24, 32  # test image (non-square, to catch x/y mix-ups)
OUT = (20, 28)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    # Smooth plus noise: smooth so OpenCV's 1/32-pixel fixed-point weights matter little,
    # noise so a half-pixel shift would not go unnoticed.
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([np.sin(x / 4.0), np.cos(y / 3.0), np.sin((x + y) / 5.0)], axis=-1)
    return (0.5 + 0.4 * base + 0.1 * rng.random((H, W, 3))).astype(np.float32)


# A perspective that pokes partly outside the image, so edges and fill are exercised.
HOMOGRAPHY = np.asarray([[1.1, 0.15, -3.0], [-0.1, 0.95, 2.5], [0.004, -0.003, 1.0]], np.float32)


def scipy_warp(image, homography, out_shape, fill):
    """Independent reference: map each output pixel centre, then order-1 interpolation."""
    yy, xx = np.mgrid[0 : out_shape[0], 0 : out_shape[1]].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    src = homography.astype(np.float64) @ pts
    sx, sy = src[0] / src[2], src[1] / src[2]
    channels = [
        ndimage.map_coordinates(
            image[..., c].astype(np.float64), [sy, sx], order=1, mode="grid-constant", cval=fill
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1).reshape(*out_shape, image.shape[-1])


# warp and the deterministic matrices

warp_jit = jax.jit(warp, static_argnames="output_size")


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_warp_matches_scipy_map_coordinates(image, fill):
    got = warp_jit(image, HOMOGRAPHY, OUT, fill=fill)
    want = scipy_warp(image, HOMOGRAPHY, OUT, fill)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_warp_matches_opencv_warp_perspective(image):
    want = cv2.warpPerspective(
        image,
        HOMOGRAPHY,
        (OUT[1], OUT[0]),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(1.0, 1.0, 1.0),
    )
    got = np.asarray(warp_jit(image, HOMOGRAPHY, OUT, fill=1.0))
    # OpenCV rounds bilinear weights to 1/32 pixel.
    np.testing.assert_allclose(got, want, atol=0.02)
    assert np.mean(np.abs(got - want)) < 2e-3


def test_identity_homography_returns_the_image(image):
    np.testing.assert_allclose(warp_jit(image, np.eye(3), (H, W)), image, atol=1e-6)


def test_points_outside_are_fill_and_edges_blend():
    image = jnp.zeros((4, 4, 1))
    shift = np.asarray([[1, 0, -0.5], [0, 1, 0], [0, 0, 1]], np.float32)  # half a pixel left
    out = np.asarray(warp_jit(image, shift, (4, 4), fill=1.0))[..., 0]
    np.testing.assert_allclose(out[:, 0], 0.5)  # half the taps outside
    np.testing.assert_allclose(out[:, 1:], 0.0)
    far = np.asarray([[1, 0, 100], [0, 1, 0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(warp_jit(image, far, (4, 4), fill=0.25), 0.25)


def test_points_beyond_the_horizon_are_fill():
    # w = 1 - x / 2 is negative for x > 2: those columns have no source.
    behind = np.asarray([[1, 0, 0], [0, 1, 0], [-0.5, 0, 1]], np.float32)
    out = np.asarray(warp_jit(jnp.zeros((4, 4, 1)), behind, (4, 6), fill=1.0))[..., 0]
    np.testing.assert_array_equal(out[:, 3:], 1.0)


def test_full_crop_is_the_identity_and_matches_jax_resize(image):
    np.testing.assert_allclose(crop_matrix(0, 0, H, W, output_size=(H, W)), np.eye(3), atol=1e-6)
    up = (2 * H, 2 * W)  # upsampling, where antialiasing does nothing
    got = warp_jit(image, crop_matrix(0, 0, H, W, output_size=up), up)
    want = jax.image.resize(image, (*up, 3), "linear")
    # Only the outermost half pixel differs: resize clamps there, warp blends in fill.
    np.testing.assert_allclose(got[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-5)


def test_crop_matrix_maps_output_edges_to_box_edges():
    m = np.asarray(crop_matrix(2.0, 3.0, 10.0, 8.0, output_size=(5, 4)))
    # Output pixel edges -0.5 and size - 0.5 land on the box edges minus half an input pixel.
    corners = np.asarray([[-0.5, -0.5, 1], [3.5, 4.5, 1]], np.float32) @ m.T
    np.testing.assert_allclose(corners[:, :2], [[2.5, 1.5], [10.5, 11.5]], atol=1e-6)


def test_perspective_matrix_moves_start_points_to_end_points():
    start = image_corners(H, W)
    end = start + jnp.asarray([[3, 2], [-4, 1], [-2, -3], [1, -2]], jnp.float32)
    perspective = jax.jit(perspective_matrix)
    m = np.asarray(perspective(start, end), np.float64)
    mapped = np.concatenate([np.asarray(end), np.ones((4, 1))], axis=1) @ m.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], start, atol=1e-4)
    assert np.all(mapped[:, 2] > 0)  # the whole end quadrilateral is in front
    np.testing.assert_allclose(perspective(start, start), np.eye(3), atol=1e-5)
    reference = cv2.getPerspectiveTransform(np.asarray(end), np.asarray(start))
    np.testing.assert_allclose(m / m[2, 2], reference, rtol=1e-4, atol=1e-5)


# random_augment: contracts. One compiled setting serves most tests: eager dispatch of the
# many small ops costs seconds, so only the jit-vs-eager test runs eagerly.

NUM_CROPS, CROP = 4, 16


# The geometry alone: noise (a default) is tested on its own below.
NOISELESS = AugmentConfig(noise=0.0)


@jax.jit
def augment(key, image):
    return random_augment(key, image, num_crops=NUM_CROPS, output_size=CROP, config=NOISELESS)


def test_output_shapes_and_dtype(image):
    key = jax.random.key(0)
    shape = lambda **kw: jax.eval_shape(lambda k, im: random_augment(k, im, **kw), key, image)
    assert shape(num_crops=3, output_size=16).shape == (3, 16, 16, 3)
    out = shape(num_crops=2, output_size=OUT)
    assert out.shape == (2, *OUT, 3)
    assert out.dtype == jnp.float32
    assert shape(num_crops=1, output_size=OUT, use_augmentations=False).shape == (1, *OUT, 3)


def test_same_key_same_crops_different_key_different_crops(image):
    a = augment(jax.random.key(1), image)
    b = augment(jax.random.key(1), image)
    c = augment(jax.random.key(2), image)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 1e-3


def test_crops_differ_from_each_other(image):
    crops = np.asarray(augment(jax.random.key(3), image))
    for i in range(NUM_CROPS):
        for j in range(i):
            assert np.abs(crops[i] - crops[j]).mean() > 1e-3, (i, j)


def test_random_augment_is_warp_with_one_composed_matrix_per_crop(image):
    key = jax.random.key(4)
    crops = augment(key, image)
    matrices = jax.jit(
        lambda k: random_augment_matrices(k, (H, W), num_crops=NUM_CROPS, output_size=CROP)
    )(key)
    for crop, matrix in zip(crops, matrices, strict=True):
        np.testing.assert_allclose(
            crop, warp_jit(image, matrix, CROP, fill=NOISELESS.fill), atol=1e-5
        )


def test_no_distortion_and_full_square_crop_is_the_identity():
    config = AugmentConfig(perspective_distortion=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1, 1))
    matrices = jax.jit(
        lambda k: random_augment_matrices(k, (H, H), num_crops=2, output_size=H, config=config)
    )(jax.random.key(5))
    np.testing.assert_allclose(matrices, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-5)


def test_vmap_over_a_population_equals_a_loop(image):
    population = jnp.stack([image, 1.0 - image, image[::-1]])
    keys = jax.random.split(jax.random.key(6), 3)
    batched = jax.jit(jax.vmap(augment))(keys, population)
    assert batched.shape == (3, NUM_CROPS, CROP, CROP, 3)
    for i in range(3):
        np.testing.assert_allclose(batched[i], augment(keys[i], population[i]), atol=1e-5)


def test_jit_equals_eager(image):
    key = jax.random.key(7)
    eager = random_augment(key, image, num_crops=NUM_CROPS, output_size=CROP, config=NOISELESS)
    np.testing.assert_allclose(augment(key, image), eager, atol=1e-5)


def test_gradient_matches_finite_differences(image):
    key = jax.random.key(8)
    probe = np.random.default_rng(2).standard_normal((NUM_CROPS, CROP, CROP, 3))

    def loss(im):  # a nonlinear scalar of the crops, evaluated on the host
        return np.sum(np.sin(3.0 * np.asarray(augment(key, im), np.float64)) * probe)

    crops, vjp = jax.vjp(lambda im: augment(key, im), jnp.asarray(image))
    (grad,) = vjp(jnp.asarray(3.0 * np.cos(3.0 * np.asarray(crops)) * probe, jnp.float32))
    grad = np.asarray(grad, np.float64)
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).sum() > 0
    rng = np.random.default_rng(1)
    eps = 1e-2
    for _ in range(3):
        direction = rng.standard_normal(image.shape).astype(np.float32)
        numeric = (loss(image + eps * direction) - loss(image - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-2, atol=1e-2)


def test_disabled_augmentations_resize_the_image(image):
    out = random_augment(
        jax.random.key(0), image, num_crops=1, output_size=(12, 16), use_augmentations=False
    )
    want = jax.image.resize(image, (12, 16, 3), "linear", antialias=True)
    np.testing.assert_allclose(out[0], want, atol=1e-6)
    assert out.shape == (1, 12, 16, 3)
    with pytest.raises(ValueError, match=r"^num_crops=4 with use_augmentations=False"):
        random_augment(
            jax.random.key(0), image, num_crops=4, output_size=12, use_augmentations=False
        )


def test_bad_arguments_are_refused(image):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"^num_crops=0 is out of range"):
        random_augment(key, image, num_crops=0, output_size=12)
    with pytest.raises(ValueError, match=r"^output_size=\(12, 0\) is not valid"):
        random_augment(key, image, num_crops=1, output_size=(12, 0))
    with pytest.raises(ValueError, match=r"^image has shape \(24, 32\): expected \[H, W, C\]"):
        random_augment(key, image[..., 0], num_crops=1, output_size=12)


def test_strong_distortion_gives_finite_crops(image):
    config = AugmentConfig(perspective_distortion=1.0)
    keys = jax.random.split(jax.random.key(10), 16)
    fn = lambda k: random_augment(k, image, num_crops=2, output_size=CROP, config=config)
    crops = jax.jit(jax.vmap(fn))(keys)
    assert np.all(np.isfinite(crops))


# random draws stay in their configured ranges

NUM_DRAWS = 2000


def test_crop_boxes_stay_in_range_and_inside_the_image():
    scale, ratio = (0.7, 0.9), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(11), NUM_DRAWS)
    size = 64  # square, so every allowed ratio fits at the smallest area
    draw = jax.jit(jax.vmap(lambda k: random_crop_box(k, (size, size), scale=scale, ratio=ratio)))
    top, left, height, width = np.asarray(draw(keys)).T
    tol = 1e-4
    assert np.all((top >= -tol) & (left >= -tol))
    assert np.all((top + height <= size + tol) & (left + width <= size + tol))
    # When none of the 10 attempts fits (torchvision's rule), the box is the whole image.
    fallback = (height > size - tol) & (width > size - tol)
    assert fallback.mean() < 0.01
    area = (height * width / size**2)[~fallback]
    aspect = (width / height)[~fallback]
    assert np.all((area >= scale[0] - tol) & (area <= scale[1] + tol))
    assert np.all((aspect >= ratio[0] - tol) & (aspect <= ratio[1] + tol))
    # The draws fill their ranges rather than sit at one value.
    assert area.min() < 0.71 and area.max() > 0.89
    assert aspect.min() < 0.85 and aspect.max() > 1.18


def test_crop_box_falls_back_to_a_centred_box_when_nothing_fits():
    # No box of 90-100% area with ratio 3-4 fits a square image: the fallback is the widest
    # centred box of the smallest allowed ratio.
    draw = jax.jit(lambda k: random_crop_box(k, (30, 30), scale=(0.9, 1.0), ratio=(3.0, 4.0)))
    np.testing.assert_allclose(draw(jax.random.key(12)), [10.0, 0.0, 10.0, 30.0], atol=1e-5)


# One compiled draw for the perspective tests; the probability is traced.
draw_perspectives = jax.jit(
    jax.vmap(
        lambda k, p: random_perspective_matrix(k, (H, W), distortion=0.6, probability=p),
        in_axes=(0, None),
    )
)


def test_perspective_corners_move_inwards_by_at_most_the_distortion():
    matrices = np.asarray(
        draw_perspectives(jax.random.split(jax.random.key(13), NUM_DRAWS), 1.0), np.float64
    )
    corners = np.concatenate([np.asarray(image_corners(H, W)), np.ones((4, 1))], axis=1)
    # Where each corner of the image lands in the output: the inverse map of the corners.
    ends = np.einsum("dij,kj->dki", np.linalg.inv(matrices), corners)
    ends = ends[..., :2] / ends[..., 2:]
    amount = (ends - corners[:, :2]) * np.asarray([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    limit = 0.6 * np.asarray([(W - 1) / 2, (H - 1) / 2])
    assert np.all(amount >= -1e-3)
    assert np.all(amount <= limit + 1e-3)
    assert np.all(amount.max(axis=0) > 0.95 * limit)  # the draws fill the range
    # At the original's 0.6 the quadrilateral is convex: w > 0 over all of it.
    w = np.einsum("dij,dkj->dki", matrices, np.concatenate([ends, np.ones((NUM_DRAWS, 4, 1))], 2))
    assert np.all(w[..., 2] > 0)


def test_perspective_probability_is_respected():
    keys = jax.random.split(jax.random.key(14), NUM_DRAWS)

    def applied(probability):
        matrices = np.asarray(draw_perspectives(keys, probability))
        return np.mean(np.any(np.abs(matrices - np.eye(3)) > 1e-6, axis=(1, 2)))

    assert applied(0.0) == 0.0
    assert applied(1.0) == 1.0
    assert abs(applied(0.5) - 0.5) < 0.05  # 4.5 standard deviations at 2000 draws


def test_noise_is_zero_mean_of_its_std_and_leaves_the_geometry(image):
    key = jax.random.key(3)
    clean = random_augment(key, image, num_crops=8, output_size=OUT, config=NOISELESS)
    noisy = random_augment(
        key, image, num_crops=8, output_size=OUT, config=AugmentConfig(noise=0.2)
    )
    again = random_augment(
        key, image, num_crops=8, output_size=OUT, config=AugmentConfig(noise=0.2)
    )
    other = random_augment(
        jax.random.key(4), image, num_crops=8, output_size=OUT, config=AugmentConfig(noise=0.2)
    )
    added = np.asarray(noisy - clean, np.float64)
    # 8 x 20 x 28 x 3 = 13,440 draws: the sample mean's std is 0.2 / 116.
    assert abs(added.mean()) < 0.01
    assert added.std() == pytest.approx(0.2, rel=0.03)
    # Independent per pixel and per crop: neighbours and crops are uncorrelated.
    flat = added.reshape(8, -1)
    assert abs(np.corrcoef(flat[0], flat[1])[0, 1]) < 0.1
    assert abs(np.corrcoef(added[:, :, :-1].ravel(), added[:, :, 1:].ravel())[0, 1]) < 0.05
    np.testing.assert_array_equal(noisy, again)
    assert not np.allclose(noisy, other)


# config


def test_the_original_preset_gives_the_originals_augmentations():
    """Arnheim 3: RandomPerspective(distortion_scale=0.6, p=1, fill=1), then
    RandomResizedCrop(scale=(0.7, 0.9)) with torchvision's ratio range, no noise."""
    config = AugmentConfig(**preset_settings("original")["augment"])
    assert config.perspective_distortion == 0.6
    assert config.perspective_probability == 1.0
    assert config.crop_scale == (0.7, 0.9)
    assert config.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert config.fill == 1.0
    assert config.noise == 0.0


def test_config_lists_become_tuples():
    config = AugmentConfig(crop_scale=[0.5, 0.8], crop_ratio=[1, 2])
    assert config.crop_scale == (0.5, 0.8)
    assert config.crop_ratio == (1.0, 2.0)
    hash(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"perspective_distortion": 1.5}, r"^perspective_distortion=1\.5 is out of range: use a"),
        ({"perspective_probability": -0.1}, r"^perspective_probability=-0\.1 is out of range"),
        ({"crop_scale": (0.9, 0.7)}, r"^crop_scale=\(0\.9, 0\.7\) is out of range: use 0 <"),
        ({"crop_scale": (0.0, 0.5)}, r"^crop_scale=\(0\.0, 0\.5\) is out of range"),
        ({"crop_scale": (0.5, 1.2)}, r"^crop_scale=\(0\.5, 1\.2\) is out of range"),
        ({"crop_ratio": (2.0, 1.0)}, r"^crop_ratio=\(2\.0, 1\.0\) is out of range: use 0 <"),
        (
            {"crop_ratio": (0.5,)},
            r"^AugmentConfig\.crop_ratio=\(0\.5,\) has the wrong type \(tuple\): expected a "
            r"pair \(float, float\)",
        ),
        ({"fill": float("nan")}, r"^fill=nan is out of range: use a finite number"),
        ({"noise": -0.1}, r"^noise=-0\.1 is out of range: use a value in \[0, 1\]"),
        ({"noise": 2.0}, r"^noise=2\.0 is out of range"),
    ],
)
def test_config_validation_names_field_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)
