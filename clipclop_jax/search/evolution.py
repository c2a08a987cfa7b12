"""Selection and mutation on a fitness vector (lower loss is fitter); never calls CLIP.

The shape is ask/tell as in evosax, for a population that gradients also move:

* ``select(key, fitness, method)`` is the *tell*: it reads the [P] fitness vector and decides,
  for every slot, whose genes it holds next (``Selection.parent``) and whether they mutate
  (``Selection.mutate``). Each method is one function ``(key, fitness) -> Selection`` in
  ``SELECTIONS``; another strategy (tournament, truncation, ...) is another entry there.
* ``reproduce(key, population, opt_state, selection, ...)`` is the *ask*: it builds the next
  population from the selection, moving each parent's optimiser state along with its genes.
* ``evolve`` is both: one generation.

All of it is pure and jittable; ``optimise.make_evolution_step`` runs it inside the compiled
chunk. docs/evolution.md states the exact rules and where they differ from the original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clipclop_jax.collage.params import Collage, CollageParams, clamp, where
from clipclop_jax.config import CollageConfig, _check_choice, _check_range, check_field_types

METHODS = ("microbial", "es", "none")


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The original's genetic algorithm settings (``config.yaml`` defaults).

    Attributes:
      method: "microbial" (a random pair competes; the loser becomes a mutated copy of the
        winner: low selection pressure), "es" (every collage but the best becomes a mutant of
        the best: high pressure), or "none".
      frequency: evolve after every step whose 0-based index is a positive multiple of this
        (original ``evolution_frequency``: 100).
      pos_and_rot_mutation_scale: std of the Gaussian added to translation (half-canvas
        units) and rotation (radians).
      scale_mutation_scale: std added to scale.
      distort_mutation_scale: std added to squeeze and shear.
      colour_mutation_scale: std added to each colour parameter.
      patch_mutation_probability: chance that a mutant shows a random library patch in one
        random slot.
    """

    method: str = "microbial"
    frequency: int = 100
    pos_and_rot_mutation_scale: float = 0.02
    scale_mutation_scale: float = 0.02
    distort_mutation_scale: float = 0.02
    colour_mutation_scale: float = 0.02
    patch_mutation_probability: float = 1.0

    def __post_init__(self):
        check_field_types(self)
        _check_choice("method", self.method, METHODS)
        _check_range("frequency", self.frequency, 1, 10_000_000)
        for name in ("pos_and_rot", "scale", "distort", "colour"):
            _check_range(f"{name}_mutation_scale", getattr(self, f"{name}_mutation_scale"), 0, 10)
        _check_range("patch_mutation_probability", self.patch_mutation_probability, 0.0, 1.0)


class Selection(NamedTuple):
    """What ``select`` decides: slot ``i`` takes the genes (and optimiser state) of
    ``parent[i]`` and mutates them if ``mutate[i]``."""

    parent: jax.Array  # [P] int32
    mutate: jax.Array  # [P] bool


def _keep_everyone(size: int) -> Selection:
    return Selection(jnp.arange(size, dtype=jnp.int32), jnp.zeros(size, bool))


def select_none(key: jax.Array, fitness: jax.Array) -> Selection:
    """Everyone keeps their own genes."""
    del key
    return _keep_everyone(fitness.shape[0])


def select_microbial(key: jax.Array, fitness: jax.Array) -> Selection:
    """Two distinct individuals drawn uniformly; the one with the higher loss is replaced by
    a mutant of the other (on a tie the first drawn loses, as in the original). Everyone else
    is untouched."""
    size = fitness.shape[0]
    identity = jnp.arange(size, dtype=jnp.int32)
    pair = jax.random.choice(key, size, (2,), replace=False).astype(jnp.int32)
    first_wins = fitness[pair[0]] < fitness[pair[1]]
    winner = jnp.where(first_wins, pair[0], pair[1])
    loser = jnp.where(first_wins, pair[1], pair[0])
    return Selection(identity.at[loser].set(winner), identity == loser)


def select_es(key: jax.Array, fitness: jax.Array) -> Selection:
    """The individual with the lowest loss (ties: the lowest index) stays; every other slot
    becomes a mutant of it."""
    del key
    size = fitness.shape[0]
    identity = jnp.arange(size, dtype=jnp.int32)
    winner = jnp.argmin(fitness).astype(jnp.int32)
    mutate = identity != winner
    return Selection(jnp.where(mutate, winner, identity), mutate)


# method name -> (key, fitness [P] with no NaN) -> Selection.
SELECTIONS: dict[str, Callable[[jax.Array, jax.Array], Selection]] = {
    "microbial": select_microbial,
    "es": select_es,
    "none": select_none,
}


def select(key: jax.Array, fitness: jax.Array, method: str) -> Selection:
    """Chooses parents from the fitness vector.

    Args:
      key: randomness of the choice (microbial's pair).
      fitness: [P] losses, lower is fitter; NaN counts as +inf (here, and only here), so a
        NaN collage never wins against a finite one.
      method: a key of ``SELECTIONS``.

    Returns:
      A ``Selection``. A population of one is never changed.
    """
    if method not in SELECTIONS:
        raise ValueError(f"method={method!r} is not valid: choose one of {', '.join(SELECTIONS)}.")
    if fitness.ndim != 1:
        raise ValueError(f"fitness has shape {fitness.shape}; expected [P].")
    if fitness.shape[0] < 2:
        return _keep_everyone(fitness.shape[0])
    fitness = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)
    return SELECTIONS[method](key, fitness)


def mutate(
    key: jax.Array,
    collage: Collage,
    config: EvolutionConfig,
    collage_config: CollageConfig,
    library_size: int,
) -> Collage:
    """A mutant of one collage.

    Every continuous gene gets independent Gaussian noise of its group's scale (translation
    and rotation: ``pos_and_rot``; scale; squeeze and shear: ``distort``; colour), and the
    result is clamped to the valid ranges. The depth ``order`` is copied unchanged, as in the
    original. With probability ``patch_mutation_probability`` one slot, drawn uniformly,
    shows a library patch drawn uniformly (possibly the one it had).
    """
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
    new_patch = jax.random.randint(keys[7], (), 0, library_size, collage.patch_index.dtype)
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

    Each slot copies its parent's genes and optimiser state (Adam moments, step counts: the
    state belongs to the genes, not to the slot); mutants then get new genes. Slot ``i``
    mutates with ``fold_in(key, i)``, so results do not depend on how the population is
    split over devices.

    Args:
      key: the generation's mutation key.
      population: [P] collages.
      opt_state: a pytree whose every leaf has the leading [P] axis.
      selection: from ``select``.
      config, collage_config, library_size: mutation scales, valid ranges, patch count.

    Returns:
      ``(population, opt_state)``, same shapes.
    """
    children = jax.tree.map(lambda leaf: leaf[selection.parent], population)
    opt_state = jax.tree.map(lambda leaf: leaf[selection.parent], opt_state)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(selection.parent.shape[0]))
    mutants = jax.vmap(lambda k, c: mutate(k, c, config, collage_config, library_size))(
        keys, children
    )
    return where(selection.mutate, mutants, children), opt_state


def evolve(
    key: jax.Array,
    population: Collage,
    opt_state: Any,
    fitness: jax.Array,
    config: EvolutionConfig,
    collage_config: CollageConfig,
    library_size: int,
) -> tuple[Collage, Any]:
    """One generation: ``select`` on ``fitness`` ([P]), then ``reproduce``."""
    select_key, mutate_key = jax.random.split(key)
    selection = select(select_key, fitness, config.method)
    return reproduce(
        mutate_key, population, opt_state, selection, config, collage_config, library_size
    )
