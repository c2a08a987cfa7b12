"""The Perceptor contract: normalised, pure, differentiable, batch-independent, reloadable."""

from __future__ import annotations

import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.guidance.perceptor import (
    Perceptor,
    PerceptorError,
    PromptError,
    _patch_conv_as_matmul,
    load_perceptor,
)


@pytest.fixture(scope="session")
def demo() -> Perceptor:
    return load_perceptor("demo")


@pytest.fixture(scope="session")
def embed_jit(demo):
    return jax.jit(lambda p, x: demo.embed_images(p, x))


@pytest.fixture(scope="module")
def images() -> jax.Array:
    # Not the model's 64 px, and not square: embed_images must resize.
    return jax.random.uniform(jax.random.key(0), (3, 72, 80, 3), jnp.float32)


def test_embed_images_rows_have_unit_norm(demo, embed_jit, images):
    embeds = embed_jit(demo.params, images)
    assert embeds.shape == (3, demo.embed_dim) and embeds.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(embeds, axis=-1), 1.0, atol=1e-5)


def test_embed_text_rows_have_unit_norm(demo):
    embeds = demo.embed_text(["a red circle", "blue"])
    assert embeds.shape == (2, demo.embed_dim) and embeds.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(embeds, axis=-1), 1.0, atol=1e-5)


def test_jit_matches_eager(demo, embed_jit, images):
    np.testing.assert_allclose(
        embed_jit(demo.params, images), demo.embed_images(demo.params, images), atol=1e-5
    )


def test_embed_images_reads_only_the_params_argument(demo, embed_jit, images):
    # Zeroed weights give different embeddings: nothing is closed over.
    zeros = jax.tree.map(jnp.zeros_like, demo.params)
    assert not np.allclose(embed_jit(zeros, images), embed_jit(demo.params, images))


def test_pixel_gradient_matches_finite_difference(demo, images):
    text = demo.embed_text(["a red circle"])[0]

    def similarity(x):
        return jnp.sum(demo.embed_images(demo.params, x) @ text)

    f = jax.jit(similarity)
    grad = jax.jit(jax.grad(similarity))(images)
    assert bool(jnp.all(jnp.isfinite(grad)))
    direction = jax.random.normal(jax.random.key(1), images.shape)
    direction = direction / jnp.linalg.norm(direction)
    eps = 1e-2  # large enough for float32 round-off, small for the curvature
    numeric = (f(images + eps * direction) - f(images - eps * direction)) / (2 * eps)
    analytic = jnp.sum(grad * direction)
    np.testing.assert_allclose(numeric, analytic, rtol=2e-2, atol=1e-4)


def test_batch_rows_are_independent(demo, embed_jit, images):
    batch = embed_jit(demo.params, images)
    for i in range(images.shape[0]):
        single = embed_jit(demo.params, images[i : i + 1])
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)


def test_save_pretrained_folder_round_trip(demo, embed_jit, images, tmp_path):
    demo.save_pretrained(tmp_path)
    reloaded = load_perceptor(str(tmp_path))
    assert (reloaded.image_size, reloaded.mean, reloaded.std) == (
        demo.image_size,
        demo.mean,
        demo.std,
    )
    np.testing.assert_array_equal(
        embed_jit(reloaded.params, images), embed_jit(demo.params, images)
    )
    np.testing.assert_array_equal(
        reloaded.embed_text(["a green star"]), demo.embed_text(["a green star"])
    )


def test_too_long_prompt_raises_one_line_prompt_error(demo):
    with pytest.raises(PromptError) as info:
        demo.embed_text(["fine", "red " * (demo.max_text_tokens + 5)])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("prompt 2 (") and "shorten it" in message  # numbered from 1
    assert str(demo.max_text_tokens) in message
    assert isinstance(info.value, ValueError)


def test_missing_folder_raises_perceptor_error(tmp_path):
    with pytest.raises(PerceptorError, match="does not exist"):
        load_perceptor(str(tmp_path / "no_such_model"))


def test_offline_hub_name_raises_one_line_perceptor_error(tmp_path):
    # A fresh interpreter, because huggingface_hub reads HF_HOME/HF_HUB_OFFLINE at import.
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = (
        "from clipclop_jax.guidance.perceptor import load_perceptor, PerceptorError\n"
        "try:\n"
        "    load_perceptor('openai/clip-vit-base-patch32')\n"
        "except PerceptorError as e:\n"
        "    print('ERROR:' + str(e))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1, run.stdout + run.stderr
    assert "huggingface-cli download openai/clip-vit-base-patch32" in lines[0]
    assert "demo" in lines[0]


def test_matches_pytorch_clip_on_the_same_weights(demo, embed_jit, tmp_path):
    """An independent reference: transformers' PyTorch CLIP, converted from our weights."""
    from pytorch_reference import pytorch_embeddings
    from transformers import CLIPConfig, CLIPModel
    from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

    demo.save_pretrained(tmp_path)
    # Built on the CPU and filled from our weights: from_pretrained(from_flax=True) builds on
    # torch's meta device, which this weight converter cannot fill.
    model = CLIPModel(CLIPConfig.from_pretrained(str(tmp_path))).eval()
    weights = jax.tree.map(np.asarray, demo.params)
    model = load_flax_weights_in_pytorch_model(model, weights)
    size = demo.image_size
    images = np.asarray(jax.random.uniform(jax.random.key(2), (2, size, size, 3)))
    prompts = ["a red circle", "something blue"]
    image_ref, text_ref = pytorch_embeddings(model, demo, images, prompts)
    np.testing.assert_allclose(embed_jit(demo.params, images), image_ref, atol=1e-4)
    np.testing.assert_allclose(demo.embed_text(prompts), text_ref, atol=1e-4)


@pytest.mark.parametrize("use_bias", [True, False])
def test_patch_convolution_runs_as_a_matrix_product(use_bias):
    # A convolution whose stride is its kernel, as CLIP's patch embedding: the interceptor
    # computes it as patches x kernel (docs/devices.md says why); other convolutions pass.
    x = jax.random.normal(jax.random.key(0), (2, 13, 17, 3))  # remainders VALID drops
    patchify = flax.linen.Conv(5, (4, 4), strides=(4, 4), padding="VALID", use_bias=use_bias)
    variables = patchify.init(jax.random.key(1), x)
    if use_bias:
        variables = jax.tree.map(lambda v: v + 0.5, variables)

    def intercepted(module, x):
        with flax.linen.intercept_methods(_patch_conv_as_matmul):
            return module.apply(variables, x)

    expected = patchify.apply(variables, x)
    got = intercepted(patchify, x)
    assert got.shape == expected.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda x: intercepted(patchify, x))(x))
    sliding = flax.linen.Conv(5, (4, 4), strides=(1, 1), padding="VALID", use_bias=use_bias)
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda x: intercepted(sliding, x))(x))


def test_embed_images_has_no_convolution(demo, images):
    jaxpr = jax.make_jaxpr(lambda x: demo.embed_images(demo.params, x))(images)
    assert "conv_general_dilated" not in str(jaxpr)
    assert "dot_general" in str(jaxpr)


@pytest.mark.parametrize("raw", ["cafÃ©", "donâ€™t", "ａ ｒｅｄ ｃｉｒｃｌｅ", "a red\x07 circle"])
def test_prompts_are_cleaned_with_ftfy_as_clip_expects(demo, raw):
    import ftfy

    fixed = ftfy.fix_text(raw)
    assert fixed != raw
    ids, mask = demo.tokenize([raw, fixed])
    np.testing.assert_array_equal(ids[0], ids[1])
    np.testing.assert_array_equal(mask[0], mask[1])


def test_without_ftfy_loading_says_to_install_it():
    code = (
        "import sys\n"
        "sys.modules['ftfy'] = None  # as if not installed\n"
        "from clipclop_jax.guidance.perceptor import load_perceptor, PerceptorError\n"
        "try:\n"
        "    load_perceptor('demo')\n"
        "except PerceptorError as e:\n"
        "    print('ERROR:' + str(e))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERROR:the Python package ftfy is missing" in run.stdout, run.stdout + run.stderr
    assert "pip install ftfy" in run.stdout


def test_normalize_false_feeds_the_raw_pixels(demo, images):
    """As the original's default (use_normalized_clip: False): against a direct computation."""
    size = demo.image_size
    resized = np.asarray(jax.image.resize(images, (3, size, size, 3), "linear", antialias=True))

    def direct(pixels):
        pooled = demo.module.apply(
            {"params": demo.params},
            pixels,
            method=lambda m, x: m.visual_projection(m.vision_model(pixel_values=x)[1]),
        )
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

    raw = demo.embed_images(demo.params, images, normalize=False)
    normalised = demo.embed_images(demo.params, images)
    mean, std = np.asarray(demo.mean), np.asarray(demo.std)
    np.testing.assert_allclose(raw, direct(resized), atol=1e-5)
    np.testing.assert_allclose(normalised, direct((resized - mean) / std), atol=1e-5)
    assert not np.allclose(raw, normalised, atol=1e-3)
