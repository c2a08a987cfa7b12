"""The per-collage optimiser: group learning rates, the SGD schedule, non-finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipclop_jax.collage.params import random_population
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.search.optimise import make_optimizer

CONFIG = CollageConfig(num_patches=5)


def population(size=3):
    return random_population(jax.random.key(0), CONFIG, 10, size).params


def test_a_non_finite_gradient_never_corrupts_its_collage_nor_the_others():
    params = population()
    optimizer = make_optimizer(OptimConfig())
    state = jax.vmap(optimizer.init)(params)
    grads = jax.tree.map(jnp.ones_like, params)
    grads = grads._replace(scale=grads.scale.at[1, 2].set(jnp.nan))
    updates, state = jax.vmap(optimizer.update)(grads, state, params)
    new = jax.vmap(optax.apply_updates)(params, updates)
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(before[1], after[1])  # the NaN collage is untouched
        assert np.all(np.isfinite(after))
        assert not np.allclose(before[0], after[0])  # the others moved


def test_adam_moves_each_group_by_its_own_learning_rate():
    optim = OptimConfig(lr_translation=0.1, lr_rotation=0.01, lr_shear=0.0)
    params = population(1)
    optimizer = make_optimizer(optim)
    state = jax.vmap(optimizer.init)(params)
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
    updates, _ = jax.vmap(optimizer.update)(grads, state, params)
    # Adam's first step is -lr * sign(grad), whatever the gradient's size.
    np.testing.assert_allclose(updates.translation, -0.1, rtol=1e-3)
    np.testing.assert_allclose(updates.rotation, -0.01, rtol=1e-3)
    np.testing.assert_allclose(updates.shear, 0.0)


def test_sgd_halves_its_learning_rate_at_one_and_two_thirds():
    optim = OptimConfig(optimizer="sgd", learning_rate=0.1, steps=9, gradient_clipping=1e9)
    params = population(1)
    optimizer = make_optimizer(optim)
    state = jax.vmap(optimizer.init)(params)
    grads = jax.tree.map(jnp.ones_like, params)
    sizes = []
    for _ in range(9):
        updates, state = jax.vmap(optimizer.update)(grads, state, params)
        sizes.append(float(-updates.scale[0, 0]))
    np.testing.assert_allclose(sizes, [0.1] * 3 + [0.05] * 3 + [0.025] * 3, rtol=1e-5)


def test_gradient_norm_is_clipped_per_collage():
    optim = OptimConfig(optimizer="sgd", learning_rate=1.0, gradient_clipping=10.0)
    params = population(2)
    optimizer = make_optimizer(optim)
    state = jax.vmap(optimizer.init)(params)
    grads = jax.tree.map(jnp.ones_like, params)
    grads = jax.tree.map(lambda g: g.at[0].multiply(1000.0), grads)
    updates, _ = jax.vmap(optimizer.update)(grads, state, params)
    norms = [float(optax.tree.norm(jax.tree.map(lambda u, i=i: u[i], updates))) for i in range(2)]
    assert abs(norms[0] - 10.0) < 1e-3
    assert norms[1] < 10.0  # the small one is not scaled up
