"""``generate()``: prompt in, collage out. The one orchestrator; the CLI is a thin shell."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import io, sharding, xla_options
from clipclop_jax.augment import AugmentConfig
from clipclop_jax.background import make_background
from clipclop_jax.config import CollageConfig, OptimConfig, _check_range, from_dict, to_dict
from clipclop_jax.evolution import EvolutionConfig
from clipclop_jax.hires import render_high_res
from clipclop_jax.library import Library, load_library
from clipclop_jax.objective import Guidance, make_collage_loss
from clipclop_jax.optimise import (
    RunState,
    init_state,
    make_chunk,
    make_evolution_step,
    make_optimizer,
)
from clipclop_jax.params import Collage, CollageParams, random_population, stack, take
from clipclop_jax.patch_sources import load_library_subset
from clipclop_jax.perceptor import Perceptor, load_perceptor
from clipclop_jax.prompts import parse_prompts
from clipclop_jax.version import __version__


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides a run's result; saved as ``config.json`` beside it.

    Attributes:
      prompt: weighted prompts, "a cat made of leaves:1 | blurry:-0.5".
      model: "demo", a Hugging Face CLIP name, or a save_pretrained folder.
      patches: "shapes", "photos", a folder of images, or a library .npz/.npy.
      population: collages optimised in parallel.
      seed: the run's PRNG seed.
      output_size: longest side of the final render in pixels (default: the canvas times
        ``high_res_multiplier``).
      high_res_multiplier: the original's 4.
      background: "black", "#rrggbb", "r,g,b", "noise", or an image path.
      num_devices: devices the population is split over (None: as many as divide it).
      max_library_patches: use only this many library patches (a seeded random choice), to
        keep a large library's footprint small (None: all).
      lowres_size, highres_size: library square sides for optimising and for the final render.
      collage, optim, augment, evolution: see their classes.
    """

    prompt: str = "a red circle"
    model: str = "demo"
    patches: str = "shapes"
    population: int = 2
    seed: int = 0
    output_size: int | None = None
    high_res_multiplier: int = 4
    background: str = "black"
    num_devices: int | None = None
    max_library_patches: int | None = None
    lowres_size: int = 64
    highres_size: int = 256
    collage: CollageConfig = dataclasses.field(default_factory=CollageConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    evolution: EvolutionConfig = dataclasses.field(default_factory=EvolutionConfig)

    def __post_init__(self):
        if not self.prompt.strip():
            raise ValueError("prompt is empty: give the text the collage should show.")
        _check_range("population", self.population, 1, 100_000)
        _check_range("seed", self.seed, 0, 2**32 - 1)
        _check_range("high_res_multiplier", self.high_res_multiplier, 1, 64)
        if self.output_size is not None:
            _check_range("output_size", self.output_size, 8, 32768)
        _check_range("lowres_size", self.lowres_size, 8, 1024)
        _check_range("highres_size", self.highres_size, 8, 8192)
        if self.num_devices is not None:
            _check_range("num_devices", self.num_devices, 1, 65536)
        if self.max_library_patches is not None:
            _check_range("max_library_patches", self.max_library_patches, 1, 10_000_000)

    def output_shape(self) -> tuple[int, int]:
        height, width = self.collage.canvas_shape
        if self.output_size is None:
            return height * self.high_res_multiplier, width * self.high_res_multiplier
        ratio = self.output_size / max(height, width)
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerateConfig:
        values = dict(values)
        nested = {
            "collage": CollageConfig,
            "optim": OptimConfig,
            "augment": AugmentConfig,
            "evolution": EvolutionConfig,
        }
        for key, sub in nested.items():
            if isinstance(values.get(key), dict):
                values[key] = from_dict(sub, values[key])
        return from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


class GenerateResult(NamedTuple):
    """What ``generate`` returns.

    Attributes:
      image: [H, W, 3] float32 in [0, 1], the best collage at the output size.
      collage: its parameters (no population axis).
      loss: its loss (lower is better; minus the weighted CLIP similarity).
      history: [steps, P] each collage's loss at each step.
      out_dir: where the files were written, or None.
    """

    image: np.ndarray
    collage: Collage
    loss: float
    history: np.ndarray
    out_dir: str | None


ProgressFn = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass
class Resources:
    """Loaded once and reused across ``generate`` calls of a batch."""

    perceptor: Perceptor
    library: Library


def load_resources(config: GenerateConfig) -> Resources:
    """The run's CLIP model and patch library.

    A library ``.npz`` is read one square at a time (``patch_sources.load_library_subset``),
    and with ``max_library_patches`` only a seeded random subset of it, so a library of
    thousands of patches never sits whole in memory.
    """
    perceptor = load_perceptor(config.model)
    sizes = dict(lowres_size=config.lowres_size, highres_size=config.highres_size)
    if str(config.patches).lower().endswith(".npz"):
        library = load_library_subset(
            config.patches, max_patches=config.max_library_patches, seed=config.seed, **sizes
        )
    else:
        library = load_library(config.patches, **sizes)
        if config.max_library_patches is not None:
            count = min(config.max_library_patches, library.num_patches)
            chosen = np.random.default_rng(config.seed).choice(
                library.num_patches, count, replace=False
            )
            library = library.subset(np.sort(chosen))
    return Resources(perceptor, library)


def generate(
    config: GenerateConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    progress_fn: ProgressFn | None = None,
    resources: Resources | None = None,
) -> GenerateResult:
    """Optimises a population of collages towards the prompt and renders the best one.

    Args:
      config: the run's settings.
      out_dir: if given, writes ``collage.png`` (with the config in its text chunks),
        ``params.npz`` (the winning collage, its loss, the library fingerprint) and
        ``config.json`` there.
      progress_fn: called after each compiled chunk as ``progress_fn(step, metrics)`` with
        metrics ``best_loss``, ``mean_loss``, ``steps_per_second``.
      resources: a perceptor and library already loaded (``load_resources``), for batches.

    Returns:
      A ``GenerateResult``.
    """
    resources = resources or load_resources(config)
    perceptor, library = resources.perceptor, resources.library
    collage_config, optim = config.collage, config.optim
    prompts = parse_prompts(config.prompt)
    key = jax.random.key(config.seed)
    background_key, population_key, run_key = jax.random.split(key, 3)
    low = jax.tree.map(jnp.asarray, library.low)
    guidance = Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text([p.text for p in prompts]),
        prompt_weights=jnp.asarray([p.weight for p in prompts], jnp.float32),
        library=low,
        background=make_background(
            config.background, *collage_config.canvas_shape, key=background_key
        ),
    )
    population = initial_population(population_key, config, perceptor, guidance)
    mesh = sharding.mesh_for_population(config.population, config.num_devices)
    state = init_state(run_key, population, make_optimizer(optim))
    state, guidance = sharding.place(state, guidance, mesh)
    chunk = compiled_chunk(
        collage_config, perceptor, optim, config.augment, config.evolution, library.num_patches
    )
    state, history = run_chunks(chunk, state, guidance, optim, progress_fn)

    best = state.best if bool(jnp.isfinite(state.best_loss)) else take(state.population, 0)
    height, width = config.output_shape()
    background = make_background(config.background, height, width, key=background_key)
    image = render_high_res(best, library.high, background, collage_config, height, width)
    result = GenerateResult(image, best, float(state.best_loss), history, None)
    if out_dir is not None:
        write_outputs(os.fspath(out_dir), config, result, library)
        result = result._replace(out_dir=os.fspath(out_dir))
    return result


@functools.lru_cache(maxsize=8)
def compiled_chunk(
    collage: CollageConfig,
    perceptor: Perceptor,
    optim: OptimConfig,
    augment: AugmentConfig,
    evolution: EvolutionConfig,
    library_size: int,
):
    """The run's compiled chunk, shared by every run of the same shapes and settings (a batch
    of prompts compiles once: prompts, library and weights are arguments, not constants)."""
    after_step = make_evolution_step(evolution, collage, library_size)
    return make_chunk(collage, perceptor, optim, augment, after_step=after_step)


def run_chunks(
    chunk, state: RunState, guidance: Guidance, optim: OptimConfig, progress_fn
) -> tuple[RunState, np.ndarray]:
    """Drives the compiled chunks until ``optim.steps``; metrics reach the host per chunk."""
    rows = []
    done = 0
    while done < optim.steps:
        count = min(optim.chunk_steps, optim.steps - done)
        start = time.perf_counter()
        state, losses = chunk(state, guidance, jnp.asarray(count, jnp.int32))
        losses = np.asarray(losses)[:count]
        elapsed = time.perf_counter() - start
        done += count
        rows.append(losses)
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


def initial_population(
    key: jax.Array, config: GenerateConfig, perceptor: Perceptor, guidance: Guidance
) -> Collage:
    """The starting population; with ``initial_search_size > 1`` the best of that many random
    collages for each individual (scored by CLIP on the plain render)."""
    size = config.population
    search = config.optim.initial_search_size
    num_library = guidance.library.rgba.shape[0]
    candidates = random_population(key, config.collage, num_library, size * search)
    if search == 1:
        return candidates
    no_augment = dataclasses.replace(config.optim, use_augmentations=False)
    loss = make_collage_loss(config.collage, perceptor, no_augment, config.augment)
    score = xla_options.jit(
        jax.vmap(
            lambda c, g: loss(c.params, c.patch_index, jax.random.key(0), g)[0], in_axes=(0, None)
        )
    )
    losses = np.concatenate(
        [
            np.asarray(score(take(candidates, slice(i, i + size)), guidance))
            for i in range(0, size * search, size)
        ]
    )
    losses = np.where(np.isnan(losses), np.inf, losses)
    best = np.argsort(losses, kind="stable")[:size]
    return stack([take(candidates, int(i)) for i in best])


def write_outputs(
    out_dir: str, config: GenerateConfig, result: GenerateResult, library: Library
) -> None:
    """Writes collage.png, params.npz and config.json atomically."""
    os.makedirs(out_dir, exist_ok=True)
    config_json = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    io.save_png(
        os.path.join(out_dir, "collage.png"),
        result.image,
        text={"clipclop_jax_config": config_json, "clipclop_jax_version": __version__},
    )
    save_collage(os.path.join(out_dir, "params.npz"), result.collage, result.loss, library)
    io.atomic_write_bytes(os.path.join(out_dir, "config.json"), config_json.encode())


def save_collage(path: str, collage: Collage, loss: float, library: Library) -> None:
    """One collage's parameters as .npz, with the fingerprint of the library it indexes."""
    arrays = {f"params/{k}": np.asarray(v) for k, v in collage.params._asdict().items()}
    io.save_npz_atomic(
        path,
        **arrays,
        patch_index=np.asarray(collage.patch_index),
        loss=np.asarray(loss, np.float32),
        library_fingerprint=np.asarray(library.fingerprint),
    )


def load_collage(path: str | os.PathLike) -> tuple[Collage, str]:
    """Reads ``save_collage``'s file: the collage and its library's fingerprint."""
    with np.load(path) as data:
        params = CollageParams(
            **{k: jnp.asarray(data[f"params/{k}"]) for k in CollageParams._fields}
        )
        collage = Collage(params, jnp.asarray(data["patch_index"]))
        return collage, str(data["library_fingerprint"])
