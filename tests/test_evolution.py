"""Selection and mutation on the fitness vector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.config import CollageConfig
from clipclop_jax.evolution import EvolutionConfig, evolve, mutate, reproduce, select
from clipclop_jax.params import random_population, take

CONFIG = CollageConfig(num_patches=12)


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


def test_mutation_moves_genes_by_the_configured_scales_and_swaps_one_patch():
    config = EvolutionConfig(pos_and_rot_mutation_scale=0.05, colour_mutation_scale=0.0)
    parent = take(random_population(jax.random.key(0), CONFIG, 500, 1), 0)
    parent = parent._replace(
        params=parent.params._replace(translation=parent.params.translation * 0.5)
    )
    child = mutate(jax.random.key(1), parent, config, CONFIG, library_size=500)
    step = np.asarray(child.params.translation - parent.params.translation)
    assert 0.02 < step.std() < 0.08
    np.testing.assert_array_equal(child.params.colour, parent.params.colour)
    np.testing.assert_array_equal(child.params.order, parent.params.order)
    assert int(np.sum(child.patch_index != parent.patch_index)) <= 1
    swaps = [
        int(
            np.sum(
                mutate(jax.random.key(s), parent, config, CONFIG, 500).patch_index
                != parent.patch_index
            )
        )
        for s in range(10)
    ]
    assert sum(swaps) >= 8  # probability 1: (almost) always a different patch
    never = EvolutionConfig(patch_mutation_probability=0.0)
    same = mutate(jax.random.key(2), parent, never, CONFIG, 500)
    np.testing.assert_array_equal(same.patch_index, parent.patch_index)


def test_mutants_stay_in_range():
    config = EvolutionConfig(scale_mutation_scale=5.0, distort_mutation_scale=5.0)
    parent = take(random_population(jax.random.key(0), CONFIG, 50, 1), 0)
    child = mutate(jax.random.key(3), parent, config, CONFIG, 50)
    assert float(child.params.scale.min()) >= 1 and float(child.params.scale.max()) <= 2
    assert float(jnp.abs(child.params.shear).max()) <= 0.2 + 1e-6


def test_optimiser_state_follows_the_genes():
    population = random_population(jax.random.key(0), CONFIG, 50, 3)
    opt_state = {"moment": jnp.arange(3.0)[:, None] * jnp.ones((3, 5))}
    selection = select(jax.random.key(0), jnp.array([1.0, 0.0, 2.0]), "es")
    children, state = reproduce(
        jax.random.key(1), population, opt_state, selection, EvolutionConfig(), CONFIG, 50
    )
    np.testing.assert_array_equal(state["moment"][:, 0], [1.0, 1.0, 1.0])
    # The winner itself is unchanged.
    for a, b in zip(
        jax.tree.leaves(take(children, 1)), jax.tree.leaves(take(population, 1)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_evolve_is_jittable_and_deterministic():
    population = random_population(jax.random.key(0), CONFIG, 50, 4)
    opt_state = {"m": jnp.zeros((4, 3))}
    fitness = jnp.array([0.3, 0.1, 0.2, 0.4])
    run = jax.jit(lambda k, p, s, f: evolve(k, p, s, f, EvolutionConfig(method="es"), CONFIG, 50))
    a, _ = run(jax.random.key(5), population, opt_state, fitness)
    b, _ = run(jax.random.key(5), population, opt_state, fitness)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_evolution_config():
    with pytest.raises(ValueError, match="method='genetic' is not valid"):
        EvolutionConfig(method="genetic")
    with pytest.raises(ValueError, match="patch_mutation_probability=2"):
        EvolutionConfig(patch_mutation_probability=2)
