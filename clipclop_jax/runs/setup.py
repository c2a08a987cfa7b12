"""What a run starts from: its keys, guidance (CLIP weights, prompts, library, background),
mesh, and starting population (``prepare_run``, ``initial_population``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import xla_options
from clipclop_jax.collage.background import make_background
from clipclop_jax.collage.params import Collage, random_population, stack, take
from clipclop_jax.guidance.ensemble import Guides
from clipclop_jax.guidance.objective import (
    DEFAULT_REGION_WEIGHT,
    Guidance,
    clip_dtype,
    make_collage_loss,
)
from clipclop_jax.guidance.perceptor import cast_floats
from clipclop_jax.guidance.prompts import parse_grid, parse_prompts
from clipclop_jax.runs.resources import Resources
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.search import sharding
from clipclop_jax.search.optimise import (
    RunState,
    init_state,
    make_optimizer,
)


class RunSetup(NamedTuple):
    guidance: Guidance
    background: jax.Array  # [H, W, 3] the canvas background, before placement
    background_key: jax.Array
    population_key: jax.Array
    run_key: jax.Array
    mesh: Any


def prepare_run(
    config: GenerateConfig,
    resources: Resources,
    canvas_background: jax.typing.ArrayLike | None = None,
) -> RunSetup:
    """The run's guidance (CLIP weights, prompts, library, background), keys and mesh."""
    perceptor, library = resources.perceptor, resources.library
    prompts = parse_prompts(config.prompt)
    background_key, population_key, run_key = run_keys(config.seed)
    if canvas_background is None:
        background = make_background(
            config.background, *config.collage.canvas_shape, key=background_key
        )
    else:
        background = jnp.asarray(canvas_background, jnp.float32)
        if background.shape != (*config.collage.canvas_shape, 3):
            raise ValueError(
                f"canvas_background has shape {background.shape}; expected "
                f"{(*config.collage.canvas_shape, 3)} for this canvas."
            )
    guidance = Guidance(
        # In CLIP's compute dtype already: bfloat16 weights take half the device memory and
        # half the transfer (the prompts are embedded from the float32 weights). An
        # ensemble's weights and embeddings are tuples, one entry per model.
        clip_params=cast_floats(perceptor.params, clip_dtype(config.optim)),
        text_embeddings=perceptor.embed_text([p.text for p in prompts]),
        prompt_weights=jnp.asarray([p.weight for p in prompts], jnp.float32),
        library=jax.tree.map(jnp.asarray, library.low),
        background=background,
        **region_guidance(config, perceptor),
    )
    mesh = sharding.mesh_for_population(config.population, config.num_devices)
    return RunSetup(guidance, background, background_key, population_key, run_key, mesh)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The run's background, population and step keys, split from ``key(seed)``."""
    background_key, population_key, run_key = jax.random.split(jax.random.key(seed), 3)
    return background_key, population_key, run_key


def region_guidance(config: GenerateConfig, perceptor: Guides) -> dict[str, Any]:
    """The region prompts' embeddings [R, D] (an ensemble's: one per model) and weights [R],
    row by row (none: {})."""
    if config.region_prompts is None:
        return {}
    cells = [cell for row in parse_grid(config.region_prompts) for cell in row]
    prompts = [parse_prompts(cell)[0] for cell in cells]
    weights = [DEFAULT_REGION_WEIGHT * p.weight for p in prompts]
    return dict(
        region_embeddings=perceptor.embed_text([p.text for p in prompts]),
        region_weights=jnp.asarray(weights, jnp.float32),
    )


def score_unstepped(
    config: GenerateConfig, perceptor: Guides, guidance: Guidance, state: RunState
) -> RunState:
    """A run of 0 steps: its population scored once (the plain render, as the initial
    search scores), so that the collage it writes has a real loss."""
    losses = plain_losses(config, perceptor, guidance, state.population)
    best = int(np.argmin(losses))
    return state._replace(
        losses=jnp.asarray(losses, jnp.float32),
        best=take(state.population, best),
        best_loss=jnp.asarray(losses[best], jnp.float32),
    )


def state_template(config: GenerateConfig) -> RunState:
    """The run state's structure, shapes and dtypes for ``config`` (no arrays computed)."""

    def fresh(key):
        population = random_population(key, config.collage, 1, config.population)
        return init_state(key, population, make_optimizer(config.optim))

    return jax.eval_shape(fresh, jax.random.key(0))


def initial_population(
    key: jax.Array, config: GenerateConfig, perceptor: Guides, guidance: Guidance
) -> Collage:
    """The starting population; with ``initial_search_size > 1`` the best of that many random
    collages for each individual (scored by CLIP on the plain render)."""
    size = config.population
    search = config.optim.initial_search_size
    num_library = guidance.library.rgba.shape[0]
    candidates = random_population(key, config.collage, num_library, size * search)
    if search == 1:
        return candidates
    losses = plain_losses(config, perceptor, guidance, candidates)
    best = np.argsort(losses, kind="stable")[:size]
    return stack([take(candidates, int(i)) for i in best])


def plain_losses(
    config: GenerateConfig, perceptor: Guides, guidance: Guidance, collages: Collage
) -> np.ndarray:
    """[C] float32 losses of a stack of collages on their plain render (no augmentations),
    ``config.population`` at a time; NaN becomes +inf."""
    size = config.population
    no_augment = dataclasses.replace(config.optim, use_augmentations=False)
    loss = make_collage_loss(config.collage, perceptor, no_augment, config.augment, config.regions)
    score = xla_options.jit(
        jax.vmap(
            lambda c, g: loss(c.params, c.patch_index, jax.random.key(0), g)[0], in_axes=(0, None)
        )
    )
    count = collages.patch_index.shape[0]
    losses = np.concatenate(
        [
            np.asarray(score(take(collages, slice(i, i + size)), guidance))
            for i in range(0, count, size)
        ]
    )
    return np.where(np.isnan(losses), np.inf, losses).astype(np.float32)
