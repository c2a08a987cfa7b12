"""Runs over several processes (``jax.distributed.initialize``): who writes, and waiting
for one another.

Every process of a multi-process run runs the same program (docs/devices.md). Checkpoints
are written by all of them together (each its share of the population, through orbax); the
run folder's other files (``config.json``, ``collage.png``, ``params.npz``, frames, videos)
and its housekeeping (``--overwrite``, removing stale checkpoints) are process 0's alone,
and ``sync`` keeps the others from running ahead of it.
"""

from __future__ import annotations

import jax


def is_writer() -> bool:
    """True in the process that writes the run folder's shared files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process has reached the point called ``name`` (nothing to wait for
    in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
