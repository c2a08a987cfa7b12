"""Selection and mutation on the fitness vector, evolution inside the compiled chunk, and the
evidence that selection helps.

``EVOLVE``, ``demo_resources`` and ``evolution_run`` are shared with test_sharding.py and
test_batch.py (imported from here), so the programs they compile are compiled once per session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile

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
from clipclop_jax.collage.params import Collage, CollageParams, clamp, take
from clipclop_jax.search.evolution import (
    SELECTIONS,
    EvolutionConfig,
    mutate,
    reproduce,
    select,
)
from clipclop_jax.search.optimise import (
    evolution_due,
    init_state,
    make_evolution_step,
    make_optimizer,
)

CONFIG = CollageConfig(num_patches=12)
LIBRARY = 50


def population(size: int, *, seed: int = 0) -> Collage:
    """A valid population drawn with numpy (no jax.random program to compile)."""
    rng = np.random.default_rng(seed)
    n = CONFIG.num_patches

    def uniform(shape, low, high):
        return jnp.asarray(rng.uniform(low, high, (size, *shape)), jnp.float32)

    params = CollageParams(
        translation=uniform((n, 2), -0.5, 0.5),
        rotation=uniform((n,), -3.0, 3.0),
        scale=uniform((n,), 1.2, 1.8),
        squeeze=uniform((n,), 0.7, 1.5),
        shear=uniform((n,), -0.1, 0.1),
        colour=uniform((n, 3), 0.2, 0.8),
        order=uniform((n,), 0.0, 1.0),
    )
    patch_index = jnp.asarray(rng.integers(0, LIBRARY, (size, n)), jnp.int32)
    return Collage(params, patch_index)


# One compiled program per function and settings, shared by the tests below.
_mutate = jax.jit(mutate, static_argnums=(2, 3, 4))
_reproduce = jax.jit(reproduce, static_argnums=(4, 5, 6))


def test_microbial_loser_takes_the_winners_genes():
    fitness = jnp.array([3.0, 1.0, 2.0, 5.0])
    for seed in range(20):
        selection = select(jax.random.key(seed), fitness, "microbial")
        changed = np.nonzero(np.asarray(selection.parent) != np.arange(4))[0]
        assert len(changed) == 1 and bool(selection.mutate[changed[0]])
        loser, winner = changed[0], int(selection.parent[changed[0]])
        assert fitness[winner] < fitness[loser]
        assert int(np.sum(selection.mutate)) == 1


def test_microbial_pairs_are_random():
    fitness = jnp.arange(6.0)
    losers = {
        int(np.argmax(select(jax.random.key(s), fitness, "microbial").mutate)) for s in range(40)
    }
    assert len(losers) >= 4


def test_es_replaces_everyone_but_the_best_with_its_mutants():
    fitness = jnp.array([3.0, 0.5, 2.0, 5.0])
    selection = select(jax.random.key(0), fitness, "es")
    np.testing.assert_array_equal(selection.parent, [1, 1, 1, 1])
    np.testing.assert_array_equal(selection.mutate, [True, False, True, True])


def test_nan_fitness_never_wins():
    fitness = jnp.array([jnp.nan, 2.0, jnp.nan])
    assert int(select(jax.random.key(0), fitness, "es").parent[0]) == 1
    for seed in range(20):
        selection = select(jax.random.key(seed), fitness, "microbial")
        loser = int(np.argmax(selection.mutate))
        winner = int(selection.parent[loser])
        # A NaN collage only ever beats another NaN collage.
        assert not np.isnan(fitness[winner]) or np.isnan(fitness[loser])
        assert loser != 1


def test_a_population_of_one_never_changes_and_none_keeps_everyone():
    for method in SELECTIONS:
        selection = select(jax.random.key(0), jnp.array([1.0]), method)
        np.testing.assert_array_equal(selection.parent, [0])
        assert not bool(selection.mutate[0])
    selection = select(jax.random.key(0), jnp.array([2.0, 1.0, 3.0]), "none")
    np.testing.assert_array_equal(selection.parent, [0, 1, 2])
    assert not np.any(selection.mutate)


def test_select_rejects_unknown_methods_and_shapes():
    with pytest.raises(ValueError, match="method='tournament' is not valid"):
        select(jax.random.key(0), jnp.zeros(3), "tournament")
    with pytest.raises(ValueError, match=r"expected \[P\]"):
        select(jax.random.key(0), jnp.zeros((3, 2)), "es")


def test_mutation_moves_genes_by_the_configured_scales_and_swaps_one_patch():
    config = EvolutionConfig(pos_and_rot_mutation_scale=0.05, colour_mutation_scale=0.0)
    parent = take(population(1), 0)
    child = _mutate(jax.random.key(1), parent, config, CONFIG, LIBRARY)
    step = np.asarray(child.params.translation - parent.params.translation)
    assert 0.02 < step.std() < 0.08
    np.testing.assert_array_equal(child.params.colour, parent.params.colour)
    np.testing.assert_array_equal(child.params.order, parent.params.order)
    assert int(np.sum(child.patch_index != parent.patch_index)) <= 1
    swaps = [
        int(
            np.sum(
                _mutate(jax.random.key(s), parent, config, CONFIG, LIBRARY).patch_index
                != parent.patch_index
            )
        )
        for s in range(10)
    ]
    assert sum(swaps) >= 8  # probability 1: (almost) always a different patch
    never = EvolutionConfig(
        pos_and_rot_mutation_scale=0.05, colour_mutation_scale=0.0, patch_mutation_probability=0.0
    )
    same = _mutate(jax.random.key(2), parent, never, CONFIG, LIBRARY)
    np.testing.assert_array_equal(same.patch_index, parent.patch_index)


def test_mutants_stay_in_range():
    config = EvolutionConfig(scale_mutation_scale=5.0, distort_mutation_scale=5.0)
    parent = take(population(1), 0)
    child = _mutate(jax.random.key(3), parent, config, CONFIG, LIBRARY)
    assert float(child.params.scale.min()) >= 1 and float(child.params.scale.max()) <= 2
    assert float(jnp.abs(child.params.shear).max()) <= 0.2 + 1e-6
    for a, b in zip(child.params, clamp(child.params, CONFIG), strict=True):
        np.testing.assert_array_equal(a, b)


def test_optimiser_state_follows_the_genes():
    pop = population(3)
    opt_state = {"moment": jnp.arange(3.0)[:, None] * jnp.ones((3, 5))}
    selection = select(jax.random.key(0), jnp.array([1.0, 0.0, 2.0]), "es")
    children, state = _reproduce(
        jax.random.key(1), pop, opt_state, selection, EvolutionConfig(), CONFIG, LIBRARY
    )
    np.testing.assert_array_equal(state["moment"][:, 0], [1.0, 1.0, 1.0])
    # The winner itself is unchanged; the mutants differ from it and from each other.
    for a, b in zip(jax.tree.leaves(take(children, 1)), jax.tree.leaves(take(pop, 1)), strict=True):
        np.testing.assert_array_equal(a, b)
    mutants = np.asarray(children.params.translation)
    assert not np.array_equal(mutants[0], mutants[1])
    assert not np.array_equal(mutants[0], mutants[2])


def test_evolution_follows_the_steps_that_are_multiples_of_the_frequency():
    # As in the original: after 0-based steps 10, 20, ..., never after step 0.
    due = [s for s in range(35) if bool(evolution_due(jnp.asarray(s), 10))]
    assert due == [10, 20, 30]


def test_the_evolution_step_runs_jitted_on_the_run_state_and_is_deterministic():
    evolution = EvolutionConfig(method="es", frequency=10)
    after_step = jax.jit(make_evolution_step(evolution, CONFIG, LIBRARY))
    optimizer = make_optimizer(OptimConfig())
    state = init_state(jax.random.key(0), population(4), optimizer)
    # Give each individual its own Adam moments, to see them travel with the genes.
    opt_state = jax.tree.map(
        lambda leaf: (
            leaf + jnp.arange(4.0).reshape((4,) + (1,) * (leaf.ndim - 1))
            if jnp.issubdtype(leaf.dtype, jnp.floating)
            else leaf
        ),
        state.opt_state,
    )
    state = state._replace(opt_state=opt_state, losses=jnp.array([0.3, 0.1, 0.2, 0.4]))
    # state.step counts steps done: 10 means step 9 was just taken (no generation).
    before = state._replace(step=jnp.asarray(10, jnp.int32))
    quiet = after_step(before)
    for a, b in zip(jax.tree.leaves(quiet), jax.tree.leaves(before), strict=True):
        if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(a, b)
    first = after_step(state._replace(step=jnp.asarray(11, jnp.int32)))
    again = after_step(state._replace(step=jnp.asarray(11, jnp.int32)))
    for a, b in zip(
        jax.tree.leaves(first.population), jax.tree.leaves(again.population), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.population.patch_index[1], state.population.patch_index[1])
    for leaf in jax.tree.leaves(first.opt_state):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 1:
            # Every slot now carries individual 1's moments.
            np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[1], leaf.shape))
    assert not np.array_equal(
        first.population.params.translation[0], state.population.params.translation[1]
    )


def test_bad_evolution_config():
    with pytest.raises(ValueError, match="method='genetic' is not valid"):
        EvolutionConfig(method="genetic")
    with pytest.raises(ValueError, match="patch_mutation_probability=2"):
        EvolutionConfig(patch_mutation_probability=2)


# --- Evolution inside real runs with the demo CLIP --------------------------------------------

# Evolution alone (``EVOLVE``): 8 collages over the 8 simulated devices (conftest), no
# gradient steps (learning rate 0: Adam's updates are exactly zero), a generation after every
# 10th of 60 steps, CLIP scoring the plain render. test_sharding.py compares device counts on
# it and test_batch.py reuses its compilation.
EVOLVE = GenerateConfig(
    prompt="a red circle",
    population=8,
    output_size=32,
    lowres_size=32,
    highres_size=64,
    collage=CollageConfig(canvas_height=64, canvas_width=64, num_patches=16),
    optim=OptimConfig(steps=60, chunk_steps=20, use_augmentations=False, learning_rate=0.0),
    evolution=EvolutionConfig(method="es", frequency=10),
)


@functools.cache
def demo_perceptor():
    return load_perceptor("demo")


@functools.cache
def _resources(patches: str) -> Resources:
    cache = tempfile.mkdtemp(prefix="clipclop-test-library-")
    library = load_library(patches, lowres_size=32, highres_size=64, cache_dir=cache)
    return Resources(demo_perceptor(), library)


def demo_resources(patches: str = "shapes") -> Resources:
    """The demo CLIP and a built-in library, each loaded once per session."""
    return _resources(patches)


@contextlib.contextmanager
def chunk_compilations():
    """Collects the messages of the optimisation chunks compiled inside the block."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    compiled: list[str] = []
    try:
        with jax.log_compiles():
            yield compiled
    finally:
        logger.removeHandler(handler)
        messages = [r.getMessage() for r in records]
        compiled.extend(m for m in messages if m.startswith("Compiling jit(chunk)"))


@functools.cache
def generate_once(config: GenerateConfig):
    """``generate(config)`` on the demo CLIP and ``config.patches``, once per session;
    returns ``(result, chunk compilations it caused)``."""
    with chunk_compilations() as compiled:
        result = generate(config, resources=demo_resources(config.patches))
    return result, list(compiled)


def with_method(config: GenerateConfig, method: str, **changes) -> GenerateConfig:
    evolution = dataclasses.replace(config.evolution, method=method)
    return dataclasses.replace(config, evolution=evolution, **changes)


def evolution_run(method: str, seed: int, num_devices: int | None = None):
    """``EVOLVE`` with another method, seed or device count (``generate_once``)."""
    return generate_once(with_method(EVOLVE, method, seed=seed, num_devices=num_devices))


# The hybrid search, gradients and evolution together (``HYBRID``): the ``painted`` library
# (the demo CLIP's shapes in fixed colours) with ``colour_space="none"``, so gradient steps
# move, scale and turn each collage's two cut-outs but cannot change which ones it shows:
# only evolution's patch swaps and selection can. Plain renders, so selection sees exact
# fitness (docs/evolution.md, "Evidence", has the runs with random crops too).
HYBRID = GenerateConfig(
    population=8,
    patches="painted",
    output_size=32,
    lowres_size=32,
    highres_size=64,
    collage=CollageConfig(canvas_height=64, canvas_width=64, num_patches=2, colour_space="none"),
    optim=OptimConfig(steps=100, chunk_steps=50, use_augmentations=False),
    evolution=EvolutionConfig(frequency=5),
)
HYBRID_RUNS = [(p, s) for p in ("a red star", "a blue cross", "a green triangle") for s in (0, 1)]


def hybrid_run(method: str, prompt: str, seed: int):
    """``HYBRID`` with one method, prompt and seed (``generate_once``)."""
    return generate_once(with_method(HYBRID, method, prompt=prompt, seed=seed))


def test_each_evolution_program_compiles_once_for_all_prompts_and_seeds():
    for method in ("es", "microbial", "none"):
        for i, (prompt, seed) in enumerate(HYBRID_RUNS):
            _, compiled = hybrid_run(method, prompt, seed)
            assert len(compiled) <= (1 if i == 0 else 0), (method, prompt, seed, compiled)


def test_evolution_beats_the_same_gradient_run_without_it():
    # Same budget and start: population 8, 100 gradient steps, the same initial collages and
    # step keys; a generation after every 5th step against none. The best loss each run
    # reached; lower is better.
    def best_losses(method):
        return np.array([hybrid_run(method, p, s)[0].loss for p, s in HYBRID_RUNS])

    without, es, microbial = best_losses("none"), best_losses("es"), best_losses("microbial")
    assert np.all(es < without), (es, without)
    assert es.mean() < without.mean() - 0.02, (es, without)
    assert np.sum(microbial < without) > len(HYBRID_RUNS) / 2, (microbial, without)
    assert microbial.mean() < without.mean() - 0.01, (microbial, without)


def test_evolution_picks_cut_outs_of_the_prompted_colour():
    # How it wins: the winners of ES show more cut-outs in the prompt's colour than the best
    # of the same 8 collages optimised without evolution, which keep the cut-outs they drew.
    library = demo_resources("painted").library

    def prompted_colour_count(method):
        count = 0
        for prompt, seed in HYBRID_RUNS:
            colour = prompt.split()[1]
            indices = np.asarray(hybrid_run(method, prompt, seed)[0].collage.patch_index)
            count += sum(library.names[i].startswith(f"painted/{colour}-") for i in indices)
        return count

    assert prompted_colour_count("es") > prompted_colour_count("none")
