"""Driving the compiled chunks: one jitted program of ``chunk_steps`` steps, called until
``optim.steps``; metrics reach the host only between chunks (``run_chunks``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from clipclop_jax.config import (
    CollageConfig,
    OptimConfig,
)
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.ensemble import Guides
from clipclop_jax.guidance.objective import (
    NO_REGIONS,
    Guidance,
    RegionConfig,
)
from clipclop_jax.search.evolution import EvolutionConfig
from clipclop_jax.search.optimise import (
    RunState,
    make_chunk,
    make_evolution_step,
)

ProgressFn = Callable[[int, dict[str, float]], None]


@functools.lru_cache(maxsize=8)
def compiled_chunk(
    collage: CollageConfig,
    perceptor: Guides,
    optim: OptimConfig,
    augment: AugmentConfig,
    evolution: EvolutionConfig,
    library_size: int,
    regions: RegionConfig = NO_REGIONS,
):
    """The run's compiled chunk, shared by every run of the same shapes and settings (a batch
    of prompts compiles once: prompts, library and weights are arguments, not constants)."""
    after_step = make_evolution_step(evolution, collage, library_size)
    return make_chunk(collage, perceptor, optim, augment, after_step=after_step, regions=regions)


def run_chunks(
    chunk,
    state: RunState,
    guidance: Guidance,
    optim: OptimConfig,
    progress_fn,
    *,
    history: np.ndarray | None = None,
    after_chunk: Callable[[RunState, int, list[np.ndarray]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    until: int | None = None,
) -> tuple[RunState, np.ndarray]:
    """Drives the compiled chunks from ``state.step`` until ``optim.steps`` (or ``until``);
    metrics reach the host per chunk.

    Chunks end at multiples of ``optim.chunk_steps`` (or at ``until``), so a resumed run
    runs the same chunks, and a run stepped by hand (a studio session) the same ones as far
    as its stops allow; the stops change no result (steps are keyed by their index).

    Args:
      history: [state.step, P] losses of the steps already done (resuming), if any.
      after_chunk: host hook after each chunk, ``after_chunk(state, step, rows)`` with the
        history so far as a list of [n, P] rows (checkpoints, frames).
      should_stop: checked before each chunk; True ends the loop early.
      until: the step to stop at (default ``optim.steps``; may be past it).

    Returns:
      The state and the [steps done, P] history.
    """
    rows = [] if history is None else [np.asarray(history, np.float32)]
    done = int(state.step)
    until = optim.steps if until is None else until
    while done < until:
        if should_stop is not None and should_stop():
            break
        count = min(optim.chunk_steps - done % optim.chunk_steps, until - done)
        start = time.perf_counter()
        state, losses = chunk(state, guidance, jnp.asarray(count, jnp.int32))
        losses = np.asarray(losses)[:count]
        elapsed = time.perf_counter() - start
        done += count
        rows.append(losses)
        if after_chunk is not None:
            after_chunk(state, done, rows)
        if progress_fn is not None:
            progress_fn(
                done,
                {
                    "best_loss": float(state.best_loss),
                    "mean_loss": float(np.mean(losses[-1])),
                    "steps_per_second": count / max(elapsed, 1e-9),
                },
            )
    size = state.losses.shape[0]
    history = np.concatenate(rows) if rows else np.zeros((0, size), np.float32)
    return state, history
