"""CLIP in bfloat16 (``OptimConfig.precision``), and a compiled chunk that never calls the host."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_library,
    load_perceptor,
)
from clipclop_jax.collage.params import random_population
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.objective import Guidance, clip_dtype, make_collage_loss
from clipclop_jax.search.evolution import EvolutionConfig
from clipclop_jax.search.optimise import init_state, make_chunk, make_optimizer

CANVAS = CollageConfig(canvas_height=64, canvas_width=64, num_patches=24)
# bfloat16 keeps 8 bits of mantissa: a cosine similarity near 0.5 moves by ~0.002 per
# rounding; the measured gap on these collages is at most 0.0015 (losses span 0.2-0.6).
TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    library = load_library("shapes", lowres_size=32, highres_size=64, cache_dir=cache)
    return Resources(load_perceptor("demo"), library)


@pytest.fixture(scope="module")
def guidance(resources):
    perceptor = resources.perceptor
    return Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text(["a red circle", "a blue square"]),
        prompt_weights=jnp.asarray([1.0, 0.5], jnp.float32),
        library=jax.tree.map(jnp.asarray, resources.library.low),
        background=jnp.zeros((64, 64, 3), jnp.float32),
    )


def collage_losses(resources, guidance, optim, count=6):
    library_size = guidance.library.num_patches
    population = random_population(jax.random.key(1), CANVAS, library_size, count)
    loss = make_collage_loss(CANVAS, resources.perceptor, optim, AugmentConfig())
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(count))
    scores = jax.jit(jax.vmap(lambda p, i, k: loss(p, i, k, guidance)[0]))
    return np.asarray(scores(population.params, population.patch_index, keys))


def test_precision_auto_is_float32_on_cpu_and_choices_are_checked():
    assert clip_dtype(OptimConfig()) == jnp.float32  # the suite runs on CPU
    assert clip_dtype(OptimConfig(precision="bfloat16")) == jnp.bfloat16
    with pytest.raises(ValueError, match="precision"):
        OptimConfig(precision="float16")


def test_bfloat16_clip_scores_collages_within_tolerance_of_float32(resources, guidance):
    full = collage_losses(resources, guidance, OptimConfig(num_crops=2, precision="float32"))
    half = collage_losses(resources, guidance, OptimConfig(num_crops=2, precision="bfloat16"))
    assert half.dtype == np.float32  # the loss is compared in float32
    np.testing.assert_allclose(half, full, atol=TOLERANCE, rtol=0)
    assert not np.array_equal(half, full)  # CLIP really ran in bfloat16


def test_a_bfloat16_run_keeps_its_collage_in_float32_and_still_guides(resources):
    config = GenerateConfig(
        prompt="a red circle",
        population=2,
        output_size=64,
        lowres_size=32,
        highres_size=64,
        collage=CANVAS,
        optim=OptimConfig(steps=40, chunk_steps=20, num_crops=2, precision="bfloat16"),
        evolution=EvolutionConfig(method="none"),
    )
    result = generate(config, resources=resources)
    first, last = result.history[0], result.history[-1]
    # Losses are minus the cosine similarity: the best collage must have gained clearly
    # (test_generate asks the same of the float32 run).
    assert last.min() < first.min() - 0.05, (first, last)
    for leaf in jax.tree.leaves(result.collage.params):
        assert leaf.dtype == jnp.float32
    assert result.image.dtype == np.float32


HOST_CALL = re.compile(
    r"custom_call\s*@\w*callback\w*|stablehlo\.(?:infeed|outfeed|send|recv)\b|host_callback"
)


def host_calls(resources, guidance, batching, after_step=None) -> list[str]:
    """The operations in the compiled chunk's program that would stop for the host."""
    optim = OptimConfig(num_crops=2, chunk_steps=3, batching=batching)
    chunk = make_chunk(CANVAS, resources.perceptor, optim, AugmentConfig(), after_step=after_step)
    library_size = guidance.library.num_patches
    population = random_population(jax.random.key(0), CANVAS, library_size, 2)
    state = init_state(jax.random.key(1), population, make_optimizer(optim))
    text = chunk.lower(state, guidance, jnp.asarray(3, jnp.int32)).as_text()
    return HOST_CALL.findall(text)


@pytest.mark.parametrize("batching", ["per_collage", "population"])
def test_the_compiled_chunk_never_waits_for_the_host(resources, guidance, batching):
    assert host_calls(resources, guidance, batching) == []


def test_a_host_call_inside_the_chunk_would_be_seen(resources, guidance):
    def printing(state):
        jax.debug.print("step {}", state.step)
        return state

    assert host_calls(resources, guidance, "population", after_step=printing)


def test_guidance_of_a_bfloat16_run_holds_bfloat16_weights(resources):
    from clipclop_jax.runs.setup import prepare_run

    config = GenerateConfig(
        prompt="a red circle",
        collage=CANVAS,
        optim=OptimConfig(precision="bfloat16"),
        lowres_size=32,
        highres_size=64,
    )
    setup = prepare_run(config, resources)
    weights = jax.tree.leaves(setup.guidance.clip_params)
    assert {leaf.dtype for leaf in weights} == {jnp.dtype(jnp.bfloat16)}
    assert setup.guidance.text_embeddings.dtype == jnp.float32
    float32 = prepare_run(dataclasses.replace(config, optim=OptimConfig()), resources)
    assert {leaf.dtype for leaf in jax.tree.leaves(float32.guidance.clip_params)} == {
        jnp.dtype(jnp.float32)
    }


def test_the_precision_flag_sets_the_config():
    from clipclop_jax.cli.main import build_parser, config_from_args

    argv = ["generate", "--out", "unused", "a cat", "--precision", "bfloat16"]
    assert config_from_args(build_parser().parse_args(argv)).optim.precision == "bfloat16"
    default = config_from_args(build_parser().parse_args(argv[:4]))
    assert default.optim.precision == "auto"
