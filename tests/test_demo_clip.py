"""The bundled demo CLIP: small, loads float32, tokenises anything, sees colours and shapes."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.guidance.demo_data.captions import vocabulary
from clipclop_jax.guidance.demo_data.drawing import draw
from clipclop_jax.guidance.demo_data.scenes import sample_batch
from clipclop_jax.guidance.demo_data.zero_shot import zero_shot_accuracy
from clipclop_jax.guidance.perceptor import demo_model_path, load_perceptor

# Training draws from seed 0 (and checks itself on seed 10_000); this is a fresh seed.
HELD_OUT_SEED = 20_240_601
MAX_ASSET_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="session")
def demo():
    return load_perceptor("demo")


def test_asset_folder_is_at_most_10_mb():
    files = [f for f in demo_model_path().rglob("*") if f.is_file()]
    assert {"flax_model.msgpack", "config.json", "vocab.json", "merges.txt"} <= {
        f.name for f in files
    }
    assert sum(f.stat().st_size for f in files) <= MAX_ASSET_BYTES


def test_float16_checkpoint_loads_as_float32(demo):
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(demo.params)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(demo.params))
    assert demo.image_size == 64 and demo.max_text_tokens == 77


@pytest.mark.parametrize(
    "prompt",
    [
        "a zebra-striped xylophone",
        "🦄🌈 sparkly unicorn",
        "supercalifragilisticexpialidocious",
        "Ünïcödé ÇÀFÉ naïve 東京",
        "",
        "   ",
        "<|endoftext|> sneaky special token",
    ],
)
def test_tokenizer_accepts_any_prompt(demo, prompt):
    ids, mask = demo.tokenize([prompt])
    assert ids.shape == (1, demo.max_text_tokens) and mask[0, 0] == 1
    embeds = demo.embed_text([prompt])
    assert bool(jnp.all(jnp.isfinite(embeds)))


def test_caption_words_are_single_tokens(demo):
    for word in vocabulary():
        ids, mask = demo.tokenize([word])
        assert mask.sum() == 3, word  # start, the word, end


@pytest.fixture(scope="module")
def held_out(demo):
    batch = sample_batch(np.random.default_rng(HELD_OUT_SEED), 1000, kinds=(1.0, 0.0, 0.0))
    images = jax.jit(draw, static_argnums=1)(batch.scenes, demo.image_size)
    embed = jax.jit(lambda p, x: demo.embed_images(p, x))
    return batch, embed(demo.params, images)


def test_zero_shot_accuracy_on_held_out_shapes(demo, held_out):
    """Colour >= 90% and shape >= 80% on fresh single-shape scenes (all sizes, warps)."""
    batch, image_embeds = held_out
    accuracy = zero_shot_accuracy(image_embeds, batch, demo.embed_text)
    assert accuracy["colour"] >= 0.9, accuracy
    assert accuracy["shape"] >= 0.8, accuracy


def test_gradient_guidance_tints_a_grey_shape_towards_the_prompted_colour(demo):
    """What the collage optimiser relies on: ascending CLIP similarity to a colour, from a
    grey disc on black (an untinted patch), raises that colour's channel against the other
    two, more than ascending any other colour does."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 14**2
    start = jnp.asarray(np.where(disc[None, ..., None], 0.6, 0.0), jnp.float32)
    start = jnp.broadcast_to(start, (1, 64, 64, 3))
    colours = ("red", "green", "blue")

    @jax.jit
    def ascend(image, text):
        def step(x, _):
            g = jax.grad(lambda y: jnp.sum(demo.embed_images(demo.params, y) @ text))(x)
            return jnp.clip(x + 0.05 * g / (jnp.abs(g).max() + 1e-12), 0, 1), None

        return jax.lax.scan(step, image, None, length=20)[0]

    def contrast(image, channel):
        """How much the disc's ``channel`` exceeds the mean of the other two."""
        mean = np.asarray(image)[0][disc].mean(axis=0)
        return mean[channel] - (mean.sum() - mean[channel]) / 2

    texts = demo.embed_text([f"a {c} circle" for c in colours])
    ascended = [ascend(start, text) for text in texts]
    for channel, colour in enumerate(colours):
        own = contrast(ascended[channel], channel)
        others = [contrast(ascended[k], channel) for k in range(3) if k != channel]
        assert own > 0.002, (colour, own)
        assert own > max(others) + 0.002, (colour, own, others)


BENCHMARK_MODELS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
# (colour, shape) floors. Measured on these 300 scenes: the judge 98.7% / 92.7%, the second
# guide 99.0% / 41.0% (on the 1,000 of HELD_OUT_SEED: 99.5% / 91.4% and 99.3% / 49.3%);
# chance is 1/8 and 1/7.
FLOORS = {"judge_clip": (0.95, 0.85), "second_guide_clip": (0.9, 0.33)}


@pytest.mark.parametrize("folder", sorted(FLOORS))
def test_benchmark_clips_load_as_model_folders_and_read_fresh_shapes(demo, folder):
    """The judge and the second guide of benchmarks/judge.py (docs/demo_model.md): other
    seeds and vision architectures than the demo, loaded as any save_pretrained folder is,
    still read colour and shape of scenes no training run drew."""
    model = load_perceptor(str(BENCHMARK_MODELS / folder))
    assert model.name == str(BENCHMARK_MODELS / folder)
    vision, demo_vision = model.module.config.vision_config, demo.module.config.vision_config
    architecture = (vision.image_size, vision.patch_size, vision.hidden_size)
    assert architecture != (demo_vision.image_size, demo_vision.patch_size, demo_vision.hidden_size)
    batch = sample_batch(np.random.default_rng(HELD_OUT_SEED + 1), 300, kinds=(1.0, 0.0, 0.0))
    images = jax.jit(draw, static_argnums=1)(batch.scenes, model.image_size)
    image_embeds = jax.jit(lambda p, x: model.embed_images(p, x))(model.params, images)
    accuracy = zero_shot_accuracy(image_embeds, batch, model.embed_text)
    colour_floor, shape_floor = FLOORS[folder]
    assert accuracy["colour"] >= colour_floor, accuracy
    assert accuracy["shape"] >= shape_floor, accuracy
