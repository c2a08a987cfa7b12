"""Runs over several processes (``jax.distributed.initialize``): who writes, and waiting
for one another.

Every process of a multi-process run runs the same program (docs/devices.md). Checkpoints
are written by all of them together (each its share of the population, through orbax); the
run folder's other files (``config.json``, ``collage.png``, ``params.npz``, frames, videos)
and its housekeeping (``--overwrite``, removing stale checkpoints) are process 0's alone,
and ``sync`` keeps the others from running ahead of it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np


def is_writer() -> bool:
    """True in the process that writes the run folder's shared files (process 0)."""
    return jax.process_index() == 0


# How long a process waits for the others at a ``sync``: model loading and compiling may
# take minutes on a busy host.
SYNC_TIMEOUT_S = 1800


def sync(name: str) -> None:
    """Waits until every process has reached the point called ``name`` (nothing to wait for
    in a one-process run).

    Note: a barrier of the coordination service, not a collective over the devices: gloo,
    the CPU collectives, gives up on a peer that is more than 30 s late, which start-up and
    compiling can be on a busy machine.
    """
    if jax.process_count() > 1:
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier(_fresh_key(name), SYNC_TIMEOUT_S * 1000)


_counts: dict[str, int] = {}


def _fresh_key(name: str) -> str:
    """A coordination-service key for the next meeting at ``name``: a barrier's or a
    key's name is used once, and every process counts its meetings alike."""
    _counts[name] = _counts.get(name, 0) + 1
    return f"clipclop:{name}:{_counts[name]}"


def on_writer(name: str, work: Callable[[], None]) -> None:
    """Runs ``work()`` in process 0 alone while the others wait for it; a ``ValueError`` or
    ``OSError`` it raises is raised in every process, with its one-line message (so a
    refused run folder stops the whole run at once, not after the others time out)."""
    if jax.process_count() == 1:
        work()
        return
    from jax._src import distributed

    client = distributed.global_state.client
    key = _fresh_key(name)
    if is_writer():
        try:
            work()
        except (ValueError, OSError) as error:
            client.key_value_set(key, f"error:{error}")
            raise
        client.key_value_set(key, "ok")
        return
    outcome = client.blocking_key_value_get(key, SYNC_TIMEOUT_S * 1000)
    if outcome != "ok":
        raise ValueError(outcome.removeprefix("error:"))


def agreed(should_stop: Callable[[], bool] | None) -> Callable[[], bool] | None:
    """``should_stop`` asked of every process together: True in all of them as soon as it is
    True in any (a preemption's SIGTERM reaches hosts at different instants, and a process
    that stopped alone would leave the others waiting in the next chunk's collectives)."""
    if should_stop is None or jax.process_count() == 1:
        return should_stop
    from jax.experimental import multihost_utils

    def any_process() -> bool:
        flags = multihost_utils.process_allgather(np.asarray([should_stop()], np.int32))
        return bool(np.any(flags))

    return any_process
