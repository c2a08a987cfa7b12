"""Selection and mutation on a fitness vector (lower loss is fitter); never calls CLIP.

The shape is ask/tell as in evosax: ``select`` reads the fitness of the population and
decides, for every slot, whose genes it takes next and whether they mutate; ``reproduce``
builds that next population (and carries each parent's optimiser state along with its genes).
Another strategy only needs another ``select``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clipclop_jax.config import CollageConfig, _check_choice, _check_range
from clipclop_jax.params import Collage, CollageParams, clamp

METHODS = ("microbial", "es", "none")


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The original's genetic algorithm settings.

    Attributes:
      method: "microbial" (a random pair competes; the loser becomes a mutated copy of the
        winner: low selection pressure), "es" (every collage but the best becomes a mutant of
        the best: high pressure), or "none".
      frequency: evolve every this many optimisation steps (original: 100).
      pos_and_rot_mutation_scale: std of the Gaussian added to translation and rotation.
      scale_mutation_scale: to scale.
      distort_mutation_scale: to squeeze and shear.
      colour_mutation_scale: to the colour parameters.
      patch_mutation_probability: chance that a mutant swaps one slot's patch for a random
        library patch.
    """

    method: str = "microbial"
    frequency: int = 100
    pos_and_rot_mutation_scale: float = 0.02
    scale_mutation_scale: float = 0.02
    distort_mutation_scale: float = 0.02
    colour_mutation_scale: float = 0.02
    patch_mutation_probability: float = 1.0

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        _check_range("frequency", self.frequency, 1, 10_000_000)
        for name in ("pos_and_rot", "scale", "distort", "colour"):
            _check_range(f"{name}_mutation_scale", getattr(self, f"{name}_mutation_scale"), 0, 10)
        _check_range("patch_mutation_probability", self.patch_mutation_probability, 0.0, 1.0)


class Selection(NamedTuple):
    """What ``select`` decides: slot ``i`` takes the genes of ``parent[i]`` and mutates them
    if ``mutate[i]``."""

    parent: jax.Array  # [P] int32
    mutate: jax.Array  # [P] bool


def select(key: jax.Array, fitness: jax.Array, method: str) -> Selection:
    """Chooses parents from the fitness vector ([P] losses; NaN is treated as +inf).

    Microbial: two distinct individuals are drawn at random; the one with the higher loss
    (ties: the second drawn) is replaced by a mutant of the other. ES: every individual but
    the one with the lowest loss is replaced by a mutant of it.
    """
    size = fitness.shape[0]
    fitness = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)
    identity = jnp.arange(size, dtype=jnp.int32)
    if method == "none" or size < 2:
        return Selection(identity, jnp.zeros(size, bool))
    if method == "es":
        winner = jnp.argmin(fitness).astype(jnp.int32)
        mutate = identity != winner
        return Selection(jnp.where(mutate, winner, identity), mutate)
    pair = jax.random.choice(key, size, (2,), replace=False).astype(jnp.int32)
    first_wins = fitness[pair[0]] < fitness[pair[1]]
    winner = jnp.where(first_wins, pair[0], pair[1])
    loser = jnp.where(first_wins, pair[1], pair[0])
    parent = identity.at[loser].set(winner)
    return Selection(parent, identity == loser)


def mutate(
    key: jax.Array,
    collage: Collage,
    config: EvolutionConfig,
    collage_config: CollageConfig,
    library_size: int,
) -> Collage:
    """A mutant of one collage: Gaussian noise on the continuous genes (the depth order is
    copied unchanged, as in the original), clamped to the valid ranges, and with probability
    ``patch_mutation_probability`` one random slot showing a random library patch."""
    keys = jax.random.split(key, 9)
    p = collage.params

    def noisy(k, value, scale):
        return value + scale * jax.random.normal(k, value.shape, value.dtype)

    params = CollageParams(
        translation=noisy(keys[0], p.translation, config.pos_and_rot_mutation_scale),
        rotation=noisy(keys[1], p.rotation, config.pos_and_rot_mutation_scale),
        scale=noisy(keys[2], p.scale, config.scale_mutation_scale),
        squeeze=noisy(keys[3], p.squeeze, config.distort_mutation_scale),
        shear=noisy(keys[4], p.shear, config.distort_mutation_scale),
        colour=noisy(keys[5], p.colour, config.colour_mutation_scale),
        order=p.order,
    )
    slot = jax.random.randint(keys[6], (), 0, collage.patch_index.shape[0])
    new_patch = jax.random.randint(keys[7], (), 0, library_size, jnp.int32)
    swap = jax.random.uniform(keys[8]) < config.patch_mutation_probability
    patch_index = jnp.where(swap, collage.patch_index.at[slot].set(new_patch), collage.patch_index)
    return Collage(clamp(params, collage_config), patch_index)


def reproduce(
    key: jax.Array,
    population: Collage,
    opt_state: Any,
    selection: Selection,
    config: EvolutionConfig,
    collage_config: CollageConfig,
    library_size: int,
) -> tuple[Collage, Any]:
    """The next population and its optimiser state.

    Each slot copies its parent's genes and optimiser state; mutants then get new genes.
    Mutation keys are ``fold_in(key, slot)``, so results do not depend on how the population
    is split over devices.
    """
    children = jax.tree.map(lambda leaf: leaf[selection.parent], population)
    opt_state = jax.tree.map(lambda leaf: leaf[selection.parent], opt_state)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(selection.parent.shape[0]))
    mutants = jax.vmap(lambda k, c: mutate(k, c, config, collage_config, library_size))(
        keys, children
    )

    def choose(mutant, child):
        mask = selection.mutate.reshape(selection.mutate.shape + (1,) * (child.ndim - 1))
        return jnp.where(mask, mutant, child)

    return jax.tree.map(choose, mutants, children), opt_state


def evolve(
    key: jax.Array,
    population: Collage,
    opt_state: Any,
    fitness: jax.Array,
    config: EvolutionConfig,
    collage_config: CollageConfig,
    library_size: int,
) -> tuple[Collage, Any]:
    """``select`` then ``reproduce``: one generation."""
    select_key, mutate_key = jax.random.split(key)
    selection = select(select_key, fitness, config.method)
    return reproduce(
        mutate_key, population, opt_state, selection, config, collage_config, library_size
    )
