"""The population axis split over devices (8 simulated CPU devices, tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_evolution import EVOLVE, HYBRID, demo_resources, evolution_run, with_method

from clipclop_jax import generate
from clipclop_jax.collage.params import random_population
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.search.optimise import init_state, make_optimizer, per_collage
from clipclop_jax.search.sharding import (
    check_population_fits,
    mesh_for_population,
    place,
    population_mesh,
)

TESTS = pathlib.Path(__file__).parent


def test_the_suite_sees_eight_devices():
    assert len(jax.devices()) == 8


def test_run_state_is_split_on_the_population_axis_and_guidance_replicated():
    config = CollageConfig(num_patches=4)
    population = random_population(jax.random.key(0), config, 10, 8)
    state = init_state(jax.random.key(1), population, make_optimizer(OptimConfig()))
    guidance = {"clip": jnp.ones((3, 5)), "library": jnp.zeros((10, 2))}
    mesh = mesh_for_population(8)
    assert mesh.devices.size == 8
    state, guidance = place(state, guidance, mesh)
    for leaf in jax.tree.leaves(state.population) + [state.losses]:
        assert leaf.sharding.num_devices == 8
        assert {s.data.shape[0] for s in leaf.addressable_shards} == {1}
    for leaf in jax.tree.leaves(state.opt_state):
        if leaf.ndim:
            assert {s.data.shape[0] for s in leaf.addressable_shards} == {1}
    for leaf in jax.tree.leaves((state.best, state.best_loss, state.step, guidance)):
        assert leaf.sharding.is_fully_replicated


def test_default_device_count_is_the_most_that_divide_the_population():
    assert mesh_for_population(8).devices.size == 8
    assert mesh_for_population(12).devices.size == 6
    assert mesh_for_population(7).devices.size == 7
    assert mesh_for_population(3, 1).devices.size == 1


@pytest.mark.parametrize(
    "population, num_devices, message",
    [
        (6, 4, "population 6 does not divide over 4 devices: use a population of 4 or 8"),
        (2, 4, "population 2 does not divide over 4 devices: use a population of 4"),
        (8, 16, "num_devices=16 but 8 device(s) are visible: use 1..8"),
        (8, 0, "num_devices=0 but 8 device(s) are visible"),
    ],
)
def test_a_population_that_does_not_fit_gets_one_line(population, num_devices, message):
    with pytest.raises(ValueError) as error:
        mesh_for_population(population, num_devices)
    assert message in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_check_population_fits_names_the_fix():
    with pytest.raises(ValueError, match="or fewer devices"):
        check_population_fits(10, population_mesh(8))


def test_generate_refuses_a_population_that_does_not_divide_before_compiling():
    config = dataclasses.replace(EVOLVE, num_devices=3)
    with pytest.raises(ValueError, match="population 8 does not divide over 3 devices"):
        generate(config, resources=demo_resources())


def test_eight_devices_give_the_one_device_run():
    # Same seed and settings (EVOLVE: evolution alone), the population split 8 ways or not
    # at all. Every random draw is per individual (fold_in of its index), so both runs draw
    # the same initial collages and mutations and take the same evolution decisions, and
    # each collage is scored by the same compiled arithmetic: the same bits.
    split, compiled_split = evolution_run("es", 0)
    whole, compiled_whole = evolution_run("es", 0, 1)
    assert len(compiled_split) <= 1 and len(compiled_whole) <= 1  # each program once
    assert split.history.shape == whole.history.shape == (60, 8)
    np.testing.assert_array_equal(split.history, whole.history)
    np.testing.assert_array_equal(split.collage.patch_index, whole.collage.patch_index)
    for a, b in zip(split.collage.params, whole.collage.params, strict=True):
        np.testing.assert_array_equal(a, b)
    assert split.loss == whole.loss


# Gradients, evolution and random crops together, short: every step's loss, gradient and
# Adam update of every collage, and every generation, must come out the same on any
# device count.
HYBRID_CROPS = with_method(
    HYBRID,
    "es",
    prompt="a red star",
    optim=dataclasses.replace(
        HYBRID.optim, steps=30, chunk_steps=10, num_crops=2, use_augmentations=True
    ),
)


@functools.cache
def hybrid_crops_run(num_devices: int, batching: str = "auto"):
    optim = dataclasses.replace(HYBRID_CROPS.optim, batching=batching)
    config = dataclasses.replace(HYBRID_CROPS, num_devices=num_devices, optim=optim)
    return generate(config, resources=demo_resources(config.patches))


@pytest.mark.parametrize("num_devices", [1, 2, 4])
def test_a_gradient_run_is_bit_identical_on_any_device_count(num_devices):
    eight, other = hybrid_crops_run(8), hybrid_crops_run(num_devices)
    assert eight.history.shape == (30, 8)
    np.testing.assert_array_equal(other.history, eight.history)
    np.testing.assert_array_equal(other.collage.patch_index, eight.collage.patch_index)
    for a, b in zip(other.collage.params, eight.collage.params, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(other.image, eight.image)
    # Not a run that stood still: gradients moved the collages and the loss fell.
    assert eight.loss < np.min(eight.history[0]) - 0.01


def test_population_batching_scores_the_same_collages_to_rounding():
    # The vmapped step (GPU/TPU default) sees the same collages and crops at step 0 as the
    # per-collage loop; only the rounding of the batched matrix products differs.
    assert per_collage(HYBRID_CROPS.optim)  # "auto" on CPU
    batched, looped = hybrid_crops_run(8, "population"), hybrid_crops_run(8)
    np.testing.assert_allclose(batched.history[0], looped.history[0], rtol=0, atol=1e-5)
    assert batched.loss < np.min(batched.history[0]) - 0.01


ONE_DEVICE_PROCESS = """
import sys
import jax

jax.config.update("jax_num_cpu_devices", 1)
import numpy as np
from test_evolution import demo_resources
from test_sharding import HYBRID_CROPS

from clipclop_jax import generate

result = generate(HYBRID_CROPS, resources=demo_resources(HYBRID_CROPS.patches))
np.savez(
    sys.argv[1],
    *result.collage.params,
    history=result.history,
    image=result.image,
    patch_index=result.collage.patch_index,
)
"""


def test_a_process_with_one_device_gives_the_eight_device_run(tmp_path):
    # Not only the mesh: the process's device count changes how XLA:CPU runs some of its
    # kernels, and the run must not depend on that either (docs/devices.md).
    out = tmp_path / "one.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", ONE_DEVICE_PROCESS, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, eight = np.load(out), hybrid_crops_run(8)
    np.testing.assert_array_equal(one["history"], eight.history)
    np.testing.assert_array_equal(one["image"], eight.image)
    np.testing.assert_array_equal(one["patch_index"], eight.collage.patch_index)
    for i, field in enumerate(eight.collage.params):
        np.testing.assert_array_equal(one[f"arr_{i}"], field)


# The default settings: a 224 x 224 canvas, 100 patches, 4 augmented crops, evolution. Two
# steps in two chunks, so the second chunk starts from the first one's Adam update.
DEFAULT_RUN = """
import sys
import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
import numpy as np
from test_evolution import demo_resources

from clipclop_jax import generate
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.config import OptimConfig

config = GenerateConfig(
    prompt="a green square", population=8, seed=1, optim=OptimConfig(steps=2, chunk_steps=1)
)
result = generate(config, resources=demo_resources(config.patches))
np.savez(sys.argv[1], *result.collage.params, history=result.history, image=result.image)
"""
# XLA:CPU contracts a * b + c into one fused multiply-add when both sit in one fusion, and
# where its fusions end depends on how many collages a device holds; without FMA
# instructions every program rounds them the same way (docs/devices.md).
NO_FMA = "--xla_cpu_max_isa=AVX"


def test_the_default_settings_give_one_collage_on_one_device_or_eight(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]), XLA_FLAGS=NO_FMA)
    runs = {
        count: subprocess.Popen(
            [sys.executable, "-c", DEFAULT_RUN, str(tmp_path / f"{count}.npz"), str(count)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for count in (1, 8)
    }
    for process in runs.values():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    one, eight = np.load(tmp_path / "1.npz"), np.load(tmp_path / "8.npz")
    assert one["history"].shape == (2, 8)
    for name in one.files:
        np.testing.assert_array_equal(one[name], eight[name], err_msg=name)
