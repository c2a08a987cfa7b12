"""Spread the population axis over devices: one mesh axis, "pop".

The run state (population, optimiser state, latest losses) is split over the devices along its
leading [P] axis; everything else (CLIP weights, patch library, prompts, the best collage so
far, the key, the step) is replicated. The same code runs on one CPU, eight simulated CPU
devices, a GPU box or a multi-host TPU pod slice (every host runs the same program; see
docs/devices.md).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "pop"


def population_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all of them).

    With several processes (``jax.distributed.initialize()``), ``jax.devices()`` lists every
    host's devices, and the mesh must span all of them: each host runs the same program and
    holds its share of the population.
    """
    devices = jax.devices()
    count = len(devices) if num_devices is None else num_devices
    if not 1 <= count <= len(devices):
        raise ValueError(
            f"num_devices={count} but {len(devices)} device(s) are visible: use 1..{len(devices)}."
        )
    if jax.process_count() > 1 and count != len(devices):
        raise ValueError(
            f"num_devices={count} but this is a {jax.process_count()}-process run over "
            f"{len(devices)} devices: leave num_devices unset or use {len(devices)}."
        )
    return Mesh(np.asarray(devices[:count]), (AXIS,))


def mesh_for_population(population_size: int, num_devices: int | None = None) -> Mesh:
    """The mesh a population runs on.

    Args:
      population_size: P, the collages optimised together.
      num_devices: how many devices to use; None takes the most devices (up to all visible
        ones) that split P evenly, or, in a multi-process run, all of them.

    Raises:
      ValueError: ``num_devices`` is more than are visible, or does not divide P.
    """
    if num_devices is None:
        visible = len(jax.devices())
        if jax.process_count() > 1:
            num_devices = visible
        else:
            num_devices = max(d for d in range(1, visible + 1) if population_size % d == 0)
    mesh = population_mesh(num_devices)
    check_population_fits(population_size, mesh)
    return mesh


def check_population_fits(population_size: int, mesh: Mesh) -> None:
    """Raises a one-line ValueError unless the population divides evenly over the mesh."""
    devices = mesh.devices.size
    if population_size % devices:
        lower = population_size - population_size % devices
        suggestion = f"{lower} or {lower + devices}" if lower else f"{devices}"
        raise ValueError(
            f"population {population_size} does not divide over {devices} devices: use a "
            f"population of {suggestion}, or fewer devices."
        )


def population_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh; the rest whole."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_run_state(state, mesh: Mesh):
    """Places a ``RunState``: population, optimiser state and losses split on their leading
    axis; the key, step and best-so-far replicated."""
    check_population_fits(state.losses.shape[0], mesh)
    return put(state, run_state_shardings(state, mesh))


def run_state_shardings(state, mesh: Mesh):
    """The ``NamedSharding`` of every leaf of a ``RunState`` (or of its ``jax.eval_shape``),
    as ``shard_run_state`` places it; a checkpoint restores straight into these."""
    split, whole = population_sharding(mesh), replicated(mesh)
    return state._replace(
        population=jax.tree.map(lambda _: split, state.population),
        opt_state=jax.tree.map(lambda leaf: split if np.ndim(leaf) else whole, state.opt_state),
        key=whole,
        step=whole,
        losses=split,
        best=jax.tree.map(lambda _: whole, state.best),
        best_loss=whole,
        frozen=split,
        hidden=split,
    )


def place(state, guidance, mesh: Mesh):
    """Puts a run on the mesh: the state split over the population axis, the guidance (CLIP
    weights, library, prompts) on every device.

    Every array ends up committed to a ``NamedSharding``, as the compiled chunk's outputs are,
    so the second chunk call hits the first call's compilation instead of compiling again.
    """
    return shard_run_state(state, mesh), replicate(guidance, mesh)


def replicate(tree, mesh: Mesh):
    """Copies a pytree (CLIP weights, patch library, text embeddings) to every device."""
    return put(tree, replicated(mesh))


def put(tree, shardings):
    """``jax.device_put`` that also places onto devices of other processes.

    ``jax.device_put`` refuses a sharding over non-addressable devices (a multi-process
    run's mesh). There every process holds the same whole value (each computed it, or read
    it, itself), so each builds its own shards from it: ``jax.make_array_from_callback``.
    An array already placed as asked stays as it is.

    Args:
      tree: a pytree of arrays (typed PRNG keys too); ``shardings``: one sharding, or a
        pytree of them with ``tree``'s structure.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(_put_leaf, tree, shardings)


def _put_leaf(leaf, sharding: jax.sharding.Sharding):
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        data = _put_leaf(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
