"""Gradient optimisation of a population: optax per collage, steps scanned inside one jit."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clipclop_jax import xla_options
from clipclop_jax.collage.params import Collage, CollageParams, clamp, population_size, take
from clipclop_jax.config import PARAMETER_GROUPS, CollageConfig, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.objective import NO_REGIONS, Guidance, RegionConfig, make_collage_loss
from clipclop_jax.search.evolution import EvolutionConfig, evolve


class RunState(NamedTuple):
    """Everything a run needs to continue; a checkpoint stores exactly this.

    Attributes:
      population: [P] collages.
      opt_state: the optimiser state of each collage ([P] leading axis).
      key: the run's typed PRNG key; step ``s`` uses ``fold_in(key, s)``.
      step: int32 scalar, steps done.
      losses: [P] each collage's loss at its latest evaluation (+inf before the first).
      best: the best collage seen so far (no population axis).
      best_loss: float32 scalar, its loss.
      frozen: [P, N] bool, slots the artist froze (``clipclop_jax.studio``): their
        parameters and patch index never change, neither by a step nor by evolution.
      hidden: [P, N] bool, slots the artist hid: they draw nothing (the loss sees
        ``visible(population, hidden)``) and evolution never changes their patch index.

    The masks live here rather than in the session so that they are checkpointed (a resumed
    run keeps them) and enter the compiled chunk as data: changing them never recompiles. A
    fresh run has them all False, which leaves every step's arithmetic as without them.
    """

    population: Collage
    opt_state: Any
    key: jax.Array
    step: jax.Array
    losses: jax.Array
    best: Collage
    best_loss: jax.Array
    frozen: jax.Array
    hidden: jax.Array


# Leaves newer than the first checkpoint format: a checkpoint without them restores them as
# zeros (all False), which is what the run that wrote it had (``checkpoint.restore_state``).
OPTIONAL_LEAVES = (".frozen", ".hidden")


def visible(population: Collage, hidden: jax.Array) -> Collage:
    """The population as drawn: hidden slots get patch index -1, which draws nothing
    (``render.sample_bilinear``)."""
    index = jnp.where(hidden, jnp.asarray(-1, population.patch_index.dtype), population.patch_index)
    return population._replace(patch_index=index)


def keep_slots(mask: jax.Array, old, new):
    """Per-slot select between two collage pytrees of the same shape: ``old`` where ``mask``
    ([..., N] bool, the leaves' leading axes) is True."""

    def select(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(select, old, new)


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """The optimiser of one collage (vmap it over a population).

    Adam with a learning rate per parameter group, or the original's SGD whose rate halves at
    1/3 and 2/3 of the run; both after clipping the collage's gradient norm. A step whose
    gradient is not finite is skipped (``apply_if_finite``), so one bad collage never
    corrupts its parameters or stops the others.
    """
    if optim.optimizer == "sgd":
        third = max(1, optim.steps // 3)
        schedule = optax.piecewise_constant_schedule(
            optim.learning_rate, {third: 0.5, 2 * third: 0.5}
        )
        inner = optax.sgd(schedule)
    else:
        rates = optim.group_learning_rates()
        labels = CollageParams(*PARAMETER_GROUPS)
        inner = optax.multi_transform({g: optax.adam(rates[g]) for g in PARAMETER_GROUPS}, labels)
    chain = optax.chain(optax.clip_by_global_norm(optim.gradient_clipping), inner)
    return optax.apply_if_finite(chain, max_consecutive_errors=2**31 - 1)


def init_state(key: jax.Array, population: Collage, optimizer) -> RunState:
    """A fresh run state for ``population`` ([P] collages)."""
    size = population_size(population)
    shape = population.patch_index.shape
    return RunState(
        population=population,
        opt_state=jax.vmap(optimizer.init)(population.params),
        key=key,
        step=jnp.zeros((), jnp.int32),
        losses=jnp.full((size,), jnp.inf, jnp.float32),
        best=take(population, 0),
        best_loss=jnp.asarray(jnp.inf, jnp.float32),
        # Two arrays, not one: the chunk donates the state, and a buffer cannot go twice.
        frozen=jnp.zeros(shape, bool),
        hidden=jnp.zeros(shape, bool),
    )


def individual_keys(key: jax.Array, step: jax.Array, size: int) -> jax.Array:
    """[P] keys for one step: ``fold_in(fold_in(key, step), i)``, independent of sharding."""
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(size))


def make_step(
    config: CollageConfig,
    perceptor,
    optim: OptimConfig,
    augment: AugmentConfig,
    regions: RegionConfig = NO_REGIONS,
    mesh: Mesh | None = None,
):
    """``step(state, guidance) -> (state, losses [P])``: one gradient step of every collage.

    Each collage's loss, gradient, optax update and clamp, either one collage after another on
    each device of ``mesh`` or vmapped over the population (``optim.batching``). Not jitted:
    ``make_chunk`` loops it inside one compiled program.
    """
    collage_loss = make_collage_loss(config, perceptor, optim, augment, regions)
    value_and_grad = jax.value_and_grad(collage_loss, has_aux=True)
    optimizer = make_optimizer(optim)

    def update_one(params, patch_index, frozen, key, opt_state, guidance):
        (loss, _), grads = value_and_grad(params, patch_index, key, guidance)
        # A frozen slot neither takes a share of the clipped gradient norm nor moves: its
        # gradient is zeroed, and its parameters are put back after the update and clamp
        # (Adam's momentum would move it even with a zero gradient). All False: unchanged.
        grads = keep_slots(frozen, jax.tree.map(jnp.zeros_like, grads), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        new = clamp(optax.apply_updates(params, updates), config)
        return loss, keep_slots(frozen, params, new), opt_state

    if per_collage(optim):
        update_all = one_collage_at_a_time(update_one, mesh)
    else:
        update_all = jax.vmap(update_one, in_axes=(0, 0, 0, 0, 0, None))

    def step(state: RunState, guidance: Guidance) -> tuple[RunState, jax.Array]:
        population = visible(state.population, state.hidden)
        keys = individual_keys(state.key, state.step, population_size(population))
        losses, params, opt_state = update_all(
            population.params,
            population.patch_index,
            state.frozen,
            keys,
            state.opt_state,
            guidance,
        )
        # The losses score the parameters before this update: those are the ones to keep.
        fitness = jnp.where(jnp.isnan(losses), jnp.inf, losses)
        leader = jnp.argmin(fitness)
        improved = fitness[leader] < state.best_loss
        best = jax.tree.map(
            lambda new, old: jnp.where(improved, new, old), take(population, leader), state.best
        )
        new_state = state._replace(
            population=state.population._replace(params=params),
            opt_state=opt_state,
            key=state.key,
            step=state.step + 1,
            losses=fitness,
            best=best,
            best_loss=jnp.minimum(fitness[leader], state.best_loss),
        )
        return new_state, fitness

    return step


def per_collage(optim: OptimConfig) -> bool:
    """Whether steps run one collage at a time (``optim.batching``, "auto" resolved)."""
    if optim.batching == "auto":
        return jax.default_backend() == "cpu"
    return optim.batching == "per_collage"


def one_collage_at_a_time(update_one, mesh: Mesh | None):
    """``update_one`` over the leading [P] axis of all its arguments but the last, one
    collage after another on each device (the last, the guidance, is shared).

    Why not ``vmap``: XLA compiles a batch of 8 collages differently from a batch of 1 (other
    matrix-product kernels, other fusions), so the last bits of a collage's gradient would
    depend on how many collages share its device. A loop whose trip count XLA cannot see
    compiles one collage's arithmetic, the same whatever the device count, once the program
    is also compiled with ``xla_options``' device-count-invariant options (docs/devices.md).
    """

    def loop(*arguments):
        inputs, guidance = arguments[:-1], arguments[-1]
        size = jax.tree.leaves(inputs)[0].shape[0]
        first = jax.tree.map(lambda x: x[0], inputs)
        shapes = jax.eval_shape(lambda one: update_one(*one, guidance), first)
        outputs = jax.tree.map(lambda s: jnp.zeros((size, *s.shape), s.dtype), shapes)

        def body(i, outputs):
            one = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), inputs)
            result = update_one(*one, guidance)
            return jax.tree.map(
                lambda out, value: jax.lax.dynamic_update_index_in_dim(out, value, i, 0),
                outputs,
                result,
            )

        # Hidden from XLA, so a loop of one collage is not unrolled into a different program.
        count = jax.lax.optimization_barrier(jnp.int32(size))
        return jax.lax.fori_loop(0, count, body, outputs)

    if mesh is None or mesh.devices.size == 1:
        return loop
    split = PartitionSpec(mesh.axis_names[0])

    # Every leaf of the population, masks, keys and optimiser state has the [P] axis
    # (``init_state`` vmaps the optimiser's init); the guidance is on every device.
    return jax.shard_map(
        loop,
        mesh=mesh,
        in_specs=(split,) * 5 + (PartitionSpec(),),
        out_specs=split,
        check_vma=False,
    )


# Evolution draws its randomness from its own stream of the run key.
EVOLUTION_STREAM = 0x45564F


def evolution_due(step: jax.Array, frequency: int) -> jax.Array:
    """Whether a generation follows the step with 0-based index ``step``: as in the
    original, after steps ``frequency``, ``2 * frequency``, ... (never after step 0)."""
    return (step > 0) & (step % frequency == 0)


def make_evolution_step(evolution: EvolutionConfig, config: CollageConfig, library_size: int):
    """``after_step(state) -> state``: a generation of ``evolution`` when one is due after the
    gradient step just taken, else the state unchanged; None for method "none".

    The fitness is ``state.losses``, the losses that step measured (of the parameters before
    its update, as in the original); the genes copied are the updated ones. The generation
    after step ``t`` (0-based) has the key ``fold_in(fold_in(run_key, EVOLUTION_STREAM), t)``,
    so a resumed run evolves exactly as an uninterrupted one. docs/evolution.md has the rules.
    """
    if evolution.method == "none":
        return None

    def after_step(state: RunState) -> RunState:
        done = state.step - 1  # 0-based index of the step just taken

        def generation(state):
            key = jax.random.fold_in(jax.random.fold_in(state.key, EVOLUTION_STREAM), done)
            population, opt_state = evolve(
                key,
                state.population,
                state.opt_state,
                state.losses,
                evolution,
                config,
                library_size,
            )
            # The artist's masks hold through generations: a frozen slot keeps its genes and
            # cut-out, a hidden one its cut-out (so "show" brings back what was hidden).
            population = keep_slots(state.frozen, state.population, population)
            index = jnp.where(state.hidden, state.population.patch_index, population.patch_index)
            population = population._replace(patch_index=index)
            return state._replace(population=population, opt_state=opt_state)

        return jax.lax.cond(
            evolution_due(done, evolution.frequency), generation, lambda s: s, state
        )

    return after_step


def make_chunk(
    config: CollageConfig,
    perceptor,
    optim: OptimConfig,
    augment: AugmentConfig,
    *,
    after_step=None,
    regions: RegionConfig = NO_REGIONS,
):
    """A compiled ``chunk(state, guidance, num_steps) -> (state, losses)``.

    Runs ``num_steps <= optim.chunk_steps`` steps in one compiled loop (``lax.fori_loop``),
    each followed by ``after_step(state) -> state`` (e.g. evolution); ``num_steps`` is a
    traced argument, so a shorter last chunk does not recompile. ``losses`` is
    [optim.chunk_steps, P], NaN in the rows of steps not run. The state is donated.

    When the state is placed on a mesh (``sharding.shard_run_state``), the program is
    compiled for that placement: the returned state keeps exactly the input's shardings (so
    the next call reuses the program) and ``losses`` comes back replicated (so every host of a
    multi-host run can read it). With per-collage batching (``optim.batching``) each device
    loops over its own collages (``one_collage_at_a_time``) and the program is compiled with
    ``xla_options``' device-count-invariant options.
    """
    length = optim.chunk_steps

    def make_program(mesh):
        step = make_step(config, perceptor, optim, augment, regions, mesh)

        def chunk(state: RunState, guidance: Guidance, num_steps: jax.Array):
            size = population_size(state.population)

            def body(i, carry):
                state, history = carry
                state, losses = step(state, guidance)
                if after_step is not None:
                    state = after_step(state)
                return state, history.at[i].set(losses)

            history = jnp.full((length, size), jnp.nan, jnp.float32)
            count = jnp.minimum(num_steps, length)
            return jax.lax.fori_loop(0, count, body, (state, history))

        return chunk

    jit = functools.partial(xla_options.jit, device_count_invariant=per_collage(optim))

    whole = make_program(None)
    unplaced = jit(whole, donate_argnums=0)
    placed = {}  # input shardings -> program that keeps them

    def program_for(state: RunState):
        shardings = [getattr(leaf, "sharding", None) for leaf in jax.tree.leaves(state)]
        if not all(isinstance(s, NamedSharding) for s in shardings):
            return unplaced
        layout = (jax.tree.structure(state), tuple(shardings))
        if layout not in placed:
            mesh = shardings[0].mesh
            out_shardings = (
                jax.tree.unflatten(layout[0], shardings),
                NamedSharding(mesh, PartitionSpec()),
            )
            placed[layout] = jit(make_program(mesh), donate_argnums=0, out_shardings=out_shardings)
        return placed[layout]

    @functools.wraps(whole)
    def run(state: RunState, guidance: Guidance, num_steps):
        return program_for(state)(state, guidance, num_steps)

    # ``run.lower(state, guidance, num_steps)``: the program a call would run, lowered
    # (its text, its compiled cost), without running it.
    run.lower = lambda state, guidance, num_steps: program_for(state).lower(
        state, guidance, num_steps
    )
    return run
