"""``generate()``: prompt in, collage out. The one orchestrator; the CLI is a thin shell."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import time
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import checkpoint, io, preflight, safe_npy, sharding, video, xla_options
from clipclop_jax.augment import AugmentConfig
from clipclop_jax.background import make_background, parse_colour
from clipclop_jax.blend import BLEND_MODES, blend_collage
from clipclop_jax.config import (
    CollageConfig,
    OptimConfig,
    _check_choice,
    _check_range,
    check_field_types,
    from_dict,
    to_dict,
)
from clipclop_jax.config_files import PNG_CONFIG_KEY
from clipclop_jax.evolution import EvolutionConfig
from clipclop_jax.hires import render_high_res
from clipclop_jax.interrupt import FinalRenderError, RunInterrupted
from clipclop_jax.library import BUILTIN, Library, LibraryError, PatchLibrary, load_library
from clipclop_jax.objective import (
    DEFAULT_REGION_WEIGHT,
    NO_REGIONS,
    Guidance,
    RegionConfig,
    make_collage_loss,
)
from clipclop_jax.optimise import (
    RunState,
    init_state,
    make_chunk,
    make_evolution_step,
    make_optimizer,
)
from clipclop_jax.params import Collage, CollageParams, random_population, stack, take
from clipclop_jax.patch_sources import load_library_subset
from clipclop_jax.perceptor import DEMO, Perceptor, PerceptorError, load_perceptor
from clipclop_jax.prompts import format_prompts, parse_grid, parse_prompts
from clipclop_jax.tiles import TileGrid
from clipclop_jax.version import __version__


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What a run writes to its folder besides the collage (only with ``out_dir``).

    Files are written at the end of a compiled chunk: at the first chunk end at or after each
    multiple of ``checkpoint_every`` / ``frame_every`` steps, and at the end of the run.

    Attributes:
      checkpoint_every: steps between checkpoints (0: only at the end and when stopped).
        Each checkpoint also rewrites collage.png and params.npz with the best collage so far.
      keep_checkpoints: how many of the newest checkpoints to keep.
      gif, mp4: write evolution.gif / evolution.mp4 of the best collage as it evolves.
      frame_every: steps between frames of the GIF and MP4.
      fps: their frames per second.
    """

    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    gif: bool = False
    mp4: bool = False
    frame_every: int = 10
    fps: float = 10.0

    def __post_init__(self):
        check_field_types(self)
        _check_range("checkpoint_every", self.checkpoint_every, 0, 10_000_000)
        _check_range("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        _check_range("frame_every", self.frame_every, 1, 10_000_000)
        _check_range("fps", self.fps, 0.1, 120.0)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides a run's result; saved as ``config.json`` beside it.

    Attributes:
      prompt: weighted prompts, "a cat made of leaves:1 | blurry:-0.5".
      region_prompts: compositional prompts, a grid "sky | sun | sky / tree | field | chicken"
        (columns by '|', rows by '/'), each region scored on its own crop; a cell may carry
        a weight, "sun:2", multiplying the region's base weight (the original's 1/5).
      tiles: "COLSxROWS" for a tiled collage (``tiled.generate_tiled``; docs/tiles.md), or
        None for one canvas.
      tile_prompts: a grid of one prompt per tile (None: ``prompt`` for every tile).
      tile_template: e.g. "close-up of {}": every tile also gets 3 x 3 region prompts, this
        template filled with its tile's prompt.
      blend: "poisson" or "mixed" smooths the seams between patches of the final render in
        the gradient domain (``blend.blend_collage``, docs/blending.md); "none" does not.
      background_use: with tiles, "global" stretches the background over the whole collage,
        "local" repeats it in every tile (the original's ``background_use``).
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
      collage, optim, augment, evolution, regions, output: see their classes (the regions'
        rows and columns follow ``region_prompts``); a dict of settings is converted with
        ``from_dict``.

    Every field's type is checked (``config.check_field_types``): a wrong one is a one-line
    ``ConfigTypeError`` (a ``TypeError`` and a ``ValueError``) naming field, value and type.
    """

    prompt: str = "a red circle"
    region_prompts: str | None = None
    tiles: str | None = None
    tile_prompts: str | None = None
    tile_template: str | None = None
    background_use: str = "global"
    blend: str = "none"
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
    regions: RegionConfig = dataclasses.field(default_factory=RegionConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def __post_init__(self):
        check_field_types(self)
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
        if self.tiles is not None:
            grid = TileGrid.parse(self.tiles)
            if self.tile_prompts is not None:
                parse_grid(self.tile_prompts, rows=grid.rows, cols=grid.cols)
        elif self.tile_prompts is not None or self.tile_template is not None:
            raise ValueError("tile_prompts/tile_template need tiles: set tiles, e.g. '3x2'.")
        if self.tile_template is not None:
            format_prompts(self.tile_template, "x")
        _check_choice("background_use", self.background_use, ("global", "local"))
        _check_choice("blend", self.blend, BLEND_MODES)
        rows, cols = 0, 0
        if self.region_prompts is not None:
            grid = parse_grid(self.region_prompts)
            rows, cols = len(grid), len(grid[0])
        if (self.regions.rows, self.regions.cols) != (rows, cols):
            # Derived from the prompts, so a config file need not repeat the grid's size.
            regions = dataclasses.replace(self.regions, rows=rows, cols=cols)
            object.__setattr__(self, "regions", regions)

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
            "regions": RegionConfig,
            "output": OutputConfig,
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
    """The run's CLIP model and patch library (``load_patch_library``).

    The library loads first, so that a problem with it shows before the (slow) model loads.
    """
    library = load_patch_library(config)
    return Resources(load_perceptor(config.model), library)


def load_patch_library(config: GenerateConfig) -> Library:
    """The run's patch library.

    A library ``.npz`` is read one square at a time (``patch_sources.load_library_subset``),
    and with ``max_library_patches`` only a seeded random subset of it, so a library of
    thousands of patches never sits whole in memory.
    """
    sizes = dict(lowres_size=config.lowres_size, highres_size=config.highres_size)
    if str(config.patches).lower().endswith(".npz"):
        return load_library_subset(
            config.patches, max_patches=config.max_library_patches, seed=config.seed, **sizes
        )
    library = load_library(config.patches, **sizes)
    if config.max_library_patches is not None:
        count = min(config.max_library_patches, library.num_patches)
        chosen = np.random.default_rng(config.seed).choice(
            library.num_patches, count, replace=False
        )
        library = library.subset(np.sort(chosen))
    return library


def with_absolute_paths(config: GenerateConfig) -> GenerateConfig:
    """``config`` with the patch library, model folder and background image that are files or
    folders here given as absolute paths, so the config a run saves loads from any working
    directory. Built-in libraries ("shapes"), "demo", hub names and colours stay as they are."""
    changes = {}
    patches = os.path.expanduser(config.patches)
    if config.patches not in BUILTIN and os.path.exists(patches):
        changes["patches"] = os.path.abspath(patches)
    if config.model != DEMO and os.path.isdir(config.model):
        changes["model"] = os.path.abspath(config.model)
    background = config.background
    is_image = parse_colour(background) is None and background.strip().lower() != "noise"
    if is_image and os.path.isfile(background):
        changes["background"] = os.path.abspath(background)
    return dataclasses.replace(config, **changes) if changes else config


def _relinked(config: GenerateConfig, **moved) -> GenerateConfig:
    """The saved ``config`` with the library or model at the places given (None: as saved)."""
    moved = {key: os.fspath(value) for key, value in moved.items() if value is not None}
    return with_absolute_paths(dataclasses.replace(config, **moved)) if moved else config


def _moved_hint(error: ValueError, out_dir: str, command: str, **given) -> ValueError:
    """``error`` (the saved library or model failed to load) with how to point the run at
    their new place, unless the caller already gave one."""
    if isinstance(error, LibraryError):
        option, what = "patches", "patch library"
    elif isinstance(error, PerceptorError):
        option, what = "model", "CLIP model"
    else:
        return error
    if option not in given or given[option] is not None:
        return error
    message = str(error).strip().splitlines()[0].rstrip(".")
    return ValueError(
        f"{message}. If the run's {what} moved, give its new place: clipclop {command} "
        f"{shlex.quote(out_dir)} --{option} PATH ({command}(..., {option}=PATH))."
    )


def generate(
    config: GenerateConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    progress_fn: ProgressFn | None = None,
    resources: Resources | None = None,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
    canvas_background: jax.typing.ArrayLike | None = None,
) -> GenerateResult:
    """Optimises a population of collages towards the prompt and renders the best one.

    Args:
      config: the run's settings.
      out_dir: if given, the run's folder (docs/runs.md): ``config.json`` once the model
        and patches load; checkpoints, ``collage.png`` (the config in its text chunks) and
        ``params.npz`` (the best collage so far) every ``config.output.checkpoint_every``
        steps and at the end; frames and ``evolution.gif``/``.mp4`` if asked for. It must be
        new or empty unless ``overwrite``; it is checked for writability and free space
        before anything is loaded.
      progress_fn: called after each compiled chunk as ``progress_fn(step, metrics)`` with
        metrics ``best_loss``, ``mean_loss``, ``steps_per_second``.
      resources: a perceptor and library already loaded (``load_resources``), for batches.
      overwrite: reuse a non-empty ``out_dir``, removing the previous run's files there.
      should_stop: checked before each chunk (e.g. ``interrupt.StopOnSignal().is_set``);
        when it returns True the run writes a checkpoint and its best collage and raises
        ``RunInterrupted``.
      canvas_background: [H, W, 3] float32 background to optimise over instead of
        ``config.background`` (a tile's part of a larger background); the final render
        still uses ``config.background``.

    Returns:
      A ``GenerateResult``.

    Raises:
      RunInterrupted: ``should_stop`` asked to stop; ``resume(out_dir)`` continues the run.
      ValueError: ``config.tiles`` is set: use ``tiled.generate_tiled``; a check made
        before loading failed (``preflight.check_run``: prompts, patch library, background,
        memory); or every loss of the run was NaN or infinite.
    """
    if config.tiles is not None:
        raise ValueError("config.tiles is set: make tiled collages with tiled.generate_tiled.")
    config = with_absolute_paths(config)
    preflight.check_run(config)
    created = out_dir is not None and not os.path.exists(out_dir)
    try:
        if out_dir is not None:
            out_dir = os.fspath(out_dir)
            video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
            checkpoint.prepare_output_folder(
                out_dir, overwrite=overwrite, needed_bytes=estimate_output_bytes(config)
            )
        resources = resources or load_resources(config)
        run = _prepare(config, resources, canvas_background)
        if out_dir is not None:
            # Only now: a typo in the patches or background leaves the folder empty for a retry.
            config_path = os.path.join(out_dir, checkpoint.CONFIG_FILE)
            io.atomic_write_bytes(config_path, _config_json(config))
        population = initial_population(
            run.population_key, config, resources.perceptor, run.guidance
        )
        state = init_state(run.run_key, population, make_optimizer(config.optim))
        return _run(config, resources, run, state, None, out_dir, progress_fn, should_stop)
    except BaseException:
        if created:
            # A folder this call made and nothing was written to goes; a user's never does.
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise


def resume(
    out_dir: str | os.PathLike,
    *,
    patches: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    progress_fn: ProgressFn | None = None,
    resources: Resources | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerateResult:
    """Continues the run in ``out_dir`` from its newest checkpoint, with the config saved there.

    On the same machine (same devices and JAX version) the result is bit-identical to the
    run never having stopped: per-step randomness is ``fold_in(key, step)`` and chunks keep
    their boundaries. A finished run just writes its outputs again.

    Args:
      out_dir: a folder ``generate`` wrote with checkpoints.
      patches: where the run's patch library is now, if it moved (default: where the saved
        config says). Accepted only if it is the same library (fingerprint checked); the
        newest checkpoint then records the new place.
      model: likewise for a CLIP model folder that moved.
      progress_fn, resources, should_stop: as for ``generate``.

    Raises:
      ValueError: no readable checkpoint, the saved library or model cannot be loaded (the
        message says how to give their new place), or ``resources`` (or what the config
        loads now) has another patch library or CLIP model than the run started with.
      RunInterrupted: ``should_stop`` asked to stop again.
    """
    out_dir = os.fspath(out_dir)
    saved = checkpoint.load_latest(out_dir)
    original = GenerateConfig.from_dict(saved.config)
    config = _relinked(original, patches=patches, model=model)
    video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
    checkpoint.check_output_folder(out_dir, needed_bytes=estimate_output_bytes(config))
    if resources is None:
        try:
            resources = load_resources(config)
        except ValueError as error:
            raise _moved_hint(error, out_dir, "resume", patches=patches, model=model) from None
    checkpoint.check_fingerprints(
        saved,
        library_fingerprint=resources.library.fingerprint,
        model_fingerprint=model_fingerprint(resources.perceptor),
    )
    run = _prepare(config, resources)
    state = checkpoint.restore_state(saved, state_template(config))
    checkpoint.discard_newer(out_dir, saved.step)
    if config != original:
        # Relinked: the checkpoint records the new place at once, so that the next resume
        # (even of a finished run, which writes no new checkpoint) needs no option.
        checkpoint.save_checkpoint(
            out_dir,
            state,
            saved.history,
            config=config.to_dict(),
            library_fingerprint=saved.meta["library_fingerprint"],
            model_fingerprint=saved.meta["model_fingerprint"],
            keep=config.output.keep_checkpoints,
        )
    return _run(config, resources, run, state, saved.history, out_dir, progress_fn, should_stop)


class _Run(NamedTuple):
    guidance: Guidance
    background: jax.Array  # [H, W, 3] the canvas background, before placement
    background_key: jax.Array
    population_key: jax.Array
    run_key: jax.Array
    mesh: Any


def _prepare(
    config: GenerateConfig,
    resources: Resources,
    canvas_background: jax.typing.ArrayLike | None = None,
) -> _Run:
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
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text([p.text for p in prompts]),
        prompt_weights=jnp.asarray([p.weight for p in prompts], jnp.float32),
        library=jax.tree.map(jnp.asarray, library.low),
        background=background,
        **region_guidance(config, perceptor),
    )
    mesh = sharding.mesh_for_population(config.population, config.num_devices)
    return _Run(guidance, background, background_key, population_key, run_key, mesh)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The run's background, population and step keys, split from ``key(seed)``."""
    background_key, population_key, run_key = jax.random.split(jax.random.key(seed), 3)
    return background_key, population_key, run_key


def region_guidance(config: GenerateConfig, perceptor: Perceptor) -> dict[str, jax.Array]:
    """The region prompts' embeddings [R, D] and weights [R], row by row (none: {})."""
    if config.region_prompts is None:
        return {}
    cells = [cell for row in parse_grid(config.region_prompts) for cell in row]
    prompts = [parse_prompts(cell)[0] for cell in cells]
    weights = [DEFAULT_REGION_WEIGHT * p.weight for p in prompts]
    return dict(
        region_embeddings=perceptor.embed_text([p.text for p in prompts]),
        region_weights=jnp.asarray(weights, jnp.float32),
    )


def _run(
    config: GenerateConfig,
    resources: Resources,
    run: _Run,
    state: RunState,
    history: np.ndarray | None,
    out_dir: str | None,
    progress_fn: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> GenerateResult:
    """Places the run state on the run's mesh, drives it to ``optim.steps`` and writes the
    run's files."""
    state, guidance = sharding.place(state, run.guidance, run.mesh)
    run = run._replace(guidance=guidance)
    files = None if out_dir is None else _RunFiles(out_dir, config, resources, run, state)
    chunk = compiled_chunk(
        config.collage,
        resources.perceptor,
        config.optim,
        config.augment,
        config.evolution,
        resources.library.num_patches,
        config.regions,
    )
    state, history = run_chunks(
        chunk,
        state,
        run.guidance,
        config.optim,
        progress_fn,
        history=history,
        after_chunk=None if files is None else files.after_chunk,
        should_stop=should_stop,
    )
    if config.optim.steps == 0 and not bool(jnp.isfinite(state.best_loss)):
        state = score_unstepped(config, resources.perceptor, run.guidance, state)
    step = int(state.step)
    finished = step >= config.optim.steps
    scored = bool(jnp.isfinite(state.best_loss))
    if finished and not scored:
        raise ValueError(
            f"every loss of this run was NaN or infinite ({step} steps x {config.population} "
            "collages), so no collage was scored: lower the learning rates, check the prompt "
            "weights and background, or try another seed."
        )
    if files is None:
        result = best_result(config, resources, state, history, run.background_key)
    else:
        saved, result = files.save(state, history)
    if not finished:
        raise RunInterrupted(
            step,
            config.optim.steps,
            out_dir=out_dir,
            checkpoint=None if files is None else saved,
            collage=None
            if files is None or not scored
            else os.path.join(out_dir, checkpoint.COLLAGE_FILE),
            result=result._replace(out_dir=out_dir),
        )
    if files is not None:
        files.finish_videos(state)
        result = result._replace(out_dir=out_dir)
    return result


def score_unstepped(
    config: GenerateConfig, perceptor: Perceptor, guidance: Guidance, state: RunState
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


def best_result(
    config: GenerateConfig,
    resources: Resources,
    state: RunState,
    history: np.ndarray,
    background_key: jax.Array,
) -> GenerateResult:
    """The best collage so far, rendered (and blended, if asked) at the output size."""
    best = best_collage(state)
    image = final_image(config, resources.library, best, background_key)
    return GenerateResult(image, best, float(state.best_loss), history, None)


def final_image(
    config: GenerateConfig, library: Library, collage: Collage, background_key: jax.Array
) -> np.ndarray:
    """One collage at ``config.output_shape()`` from the high-resolution patches, blended
    when ``config.blend`` asks for it."""
    height, width = config.output_shape()
    # The background the collage was optimised over, enlarged (a noise field is the same one).
    background = make_background(
        config.background,
        height,
        width,
        key=background_key,
        field_shape=config.collage.canvas_shape,
    )
    if config.blend == "none":
        return render_high_res(collage, library.high, background, config.collage, height, width)
    image, _ = blend_collage(
        collage,
        PatchLibrary(*(jnp.asarray(a) for a in library.high)),
        jnp.asarray(background, jnp.float32),
        config.collage.resized(height, width),
        mode=config.blend,
    )
    return np.asarray(image)


def blend_run(
    out_dir: str | os.PathLike,
    mode: str = "poisson",
    *,
    patches: str | os.PathLike | None = None,
    resources=None,
) -> str:
    """Blends a finished run's best collage (``params.npz``) again, with ``mode``.

    Writes ``collage-<mode>.png`` beside ``collage.png`` (config in its text chunks) and
    returns its path. The run's library must still be what it was (fingerprint checked);
    ``patches`` gives its new place if it moved.
    """
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, checkpoint.CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{out_dir!r} has no {checkpoint.CONFIG_FILE}: pass a run's --out folder.")
    with open(path) as handle:
        config = GenerateConfig.from_dict(json.load(handle))
    if config.tiles is not None:
        raise ValueError("blending a tiled collage is not supported yet: blend its tiles' runs.")
    config = _relinked(dataclasses.replace(config, blend=mode), patches=patches)
    collage, fingerprint = load_collage(os.path.join(out_dir, checkpoint.PARAMS_FILE))
    if resources is not None:
        library = resources.library
    else:
        try:
            library = load_patch_library(config)  # the model is not needed to render
        except LibraryError as error:
            raise _moved_hint(error, out_dir, "blend", patches=patches) from None
    if fingerprint != library.fingerprint:
        raise ValueError(
            f"the patch library {config.patches!r} is not the one this run used (fingerprint "
            f"{library.fingerprint} != {fingerprint}): restore that library."
        )
    image = final_image(config, library, collage, run_keys(config.seed)[0])
    target = os.path.join(out_dir, f"collage-{mode}.png")
    io.save_png(
        target,
        image,
        text={PNG_CONFIG_KEY: _config_json(config).decode(), "clipclop_jax_version": __version__},
    )
    return target


def best_collage(state: RunState) -> Collage:
    """The best collage seen, or the first individual before any has been scored."""
    return state.best if bool(jnp.isfinite(state.best_loss)) else take(state.population, 0)


class _RunFiles:
    """Writes a run's checkpoints, best collage and frames at chunk ends."""

    def __init__(self, out_dir, config, resources, run: _Run, state: RunState):
        self.out_dir = out_dir
        self.config = config
        self.resources = resources
        self.run = run
        self.previous = int(state.step)
        self.saved_step = self.previous if checkpoint.latest_checkpoint(out_dir) else -1
        output = config.output
        self.frames = output.gif or output.mp4

    def after_chunk(self, state: RunState, step: int, rows: list[np.ndarray]) -> None:
        output, previous = self.config.output, self.previous
        self.previous = step
        if self.frames and step // output.frame_every > previous // output.frame_every:
            self.save_frame(state, step)
        every = output.checkpoint_every
        if every and step // every > previous // every and step < self.config.optim.steps:
            self.save(state, np.concatenate(rows))

    def save(self, state: RunState, history: np.ndarray) -> tuple[str, GenerateResult]:
        """A checkpoint (unless this step has one), then the best collage so far.

        The checkpoint and ``params.npz`` are on disk before the final render starts, so a
        render that fails (e.g. out of memory at a huge output size) loses nothing: the
        render can be redone from them (``blend_run``, ``resume``). Before any collage has
        been scored only the checkpoint is written.

        Returns:
          The checkpoint's path and the best collage's ``GenerateResult``.
        """
        step = int(state.step)
        path = checkpoint.checkpoint_path(self.out_dir, step)
        if step != self.saved_step:
            path = checkpoint.save_checkpoint(
                self.out_dir,
                state,
                history,
                config=self.config.to_dict(),
                library_fingerprint=self.resources.library.fingerprint,
                model_fingerprint=model_fingerprint(self.resources.perceptor),
                keep=self.config.output.keep_checkpoints,
            )
            self.saved_step = step
        best, loss = best_collage(state), float(state.best_loss)
        scored = bool(np.isfinite(loss))
        if scored:
            write_params(self.out_dir, self.config, best, loss, self.resources.library)
        try:
            image = final_image(self.config, self.resources.library, best, self.run.background_key)
        except Exception as error:
            height, width = self.config.output_shape()
            params = os.path.join(self.out_dir, checkpoint.PARAMS_FILE)
            raise FinalRenderError(
                f"{width}x{height}",
                error,
                out_dir=self.out_dir,
                saved=[params, path] if scored else [path],
            ) from error
        result = GenerateResult(image, best, loss, history, None)
        if scored:
            write_image(self.out_dir, self.config, image)
        return path, result

    def save_frame(self, state: RunState, step: int) -> None:
        """The best collage as CLIP sees it (canvas size, low-res library)."""
        height, width = self.config.collage.canvas_shape
        image = render_high_res(
            best_collage(state),
            self.resources.library.low,
            self.run.background,
            self.config.collage,
            height,
            width,
        )
        video.save_frame(os.path.join(self.out_dir, checkpoint.FRAME_DIR), step, image)

    def finish_videos(self, state: RunState) -> None:
        """The last frame and the videos, once the final collage is saved."""
        output, step = self.config.output, int(state.step)
        if not self.frames:
            return
        folder = os.path.join(self.out_dir, checkpoint.FRAME_DIR)
        last = video.list_frames(folder)[-1:]
        if not last or not last[0].endswith(f"step-{step:09d}.png"):
            self.save_frame(state, step)
        frames = video.list_frames(folder)
        if output.gif:
            video.write_gif(os.path.join(self.out_dir, checkpoint.GIF_FILE), frames, fps=output.fps)
        if output.mp4:
            video.write_mp4(os.path.join(self.out_dir, checkpoint.MP4_FILE), frames, fps=output.fps)


@functools.lru_cache(maxsize=8)
def model_fingerprint(perceptor: Perceptor) -> str:
    """``checkpoint.model_fingerprint`` of a perceptor's weights, computed once per perceptor."""
    return checkpoint.model_fingerprint(perceptor.params)


def state_template(config: GenerateConfig) -> RunState:
    """The run state's structure, shapes and dtypes for ``config`` (no arrays computed)."""

    def fresh(key):
        population = random_population(key, config.collage, 1, config.population)
        return init_state(key, population, make_optimizer(config.optim))

    return jax.eval_shape(fresh, jax.random.key(0))


def estimate_output_bytes(config: GenerateConfig) -> int:
    """About the most disk a run's folder needs: checkpoints, images and frames."""
    output = config.output
    history = config.optim.steps * config.population * 4
    state = checkpoint.state_nbytes(state_template(config)) + history + 65536
    height, width = config.output_shape()
    images = 2 * height * width * 3 + state
    frames = 0
    if output.gif or output.mp4:
        count = config.optim.steps // output.frame_every + 2
        pixels = count * config.collage.canvas_height * config.collage.canvas_width
        frames = pixels * 3 + pixels * output.gif + pixels * output.mp4
    return (output.keep_checkpoints + 1) * state + images + frames + 2**20


@functools.lru_cache(maxsize=8)
def compiled_chunk(
    collage: CollageConfig,
    perceptor: Perceptor,
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
) -> tuple[RunState, np.ndarray]:
    """Drives the compiled chunks from ``state.step`` until ``optim.steps``; metrics reach the
    host per chunk.

    Chunks start at multiples of ``optim.chunk_steps``, so a resumed run runs the same chunks.

    Args:
      history: [state.step, P] losses of the steps already done (resuming), if any.
      after_chunk: host hook after each chunk, ``after_chunk(state, step, rows)`` with the
        history so far as a list of [n, P] rows (checkpoints, frames).
      should_stop: checked before each chunk; True ends the loop early.

    Returns:
      The state and the [steps done, P] history.
    """
    rows = [] if history is None else [np.asarray(history, np.float32)]
    done = int(state.step)
    while done < optim.steps:
        if should_stop is not None and should_stop():
            break
        count = min(optim.chunk_steps, optim.steps - done)
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
    losses = plain_losses(config, perceptor, guidance, candidates)
    best = np.argsort(losses, kind="stable")[:size]
    return stack([take(candidates, int(i)) for i in best])


def plain_losses(
    config: GenerateConfig, perceptor: Perceptor, guidance: Guidance, collages: Collage
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


def write_outputs(
    out_dir: str, config: GenerateConfig, result: GenerateResult, library: Library
) -> None:
    """Writes params.npz, config.json and collage.png (the config in its text chunks)
    atomically, the parameters first."""
    write_params(out_dir, config, result.collage, result.loss, library)
    write_image(out_dir, config, result.image)


def write_params(
    out_dir: str, config: GenerateConfig, collage: Collage, loss: float, library: Library
) -> None:
    """Writes params.npz and config.json atomically: enough to render the collage again."""
    os.makedirs(out_dir, exist_ok=True)
    save_collage(os.path.join(out_dir, checkpoint.PARAMS_FILE), collage, loss, library)
    io.atomic_write_bytes(os.path.join(out_dir, checkpoint.CONFIG_FILE), _config_json(config))


def write_image(out_dir: str, config: GenerateConfig, image: np.ndarray) -> None:
    """Writes collage.png atomically, the config in its text chunks."""
    io.save_png(
        os.path.join(out_dir, checkpoint.COLLAGE_FILE),
        image,
        text={PNG_CONFIG_KEY: _config_json(config).decode(), "clipclop_jax_version": __version__},
    )


def _config_json(config: GenerateConfig) -> bytes:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True).encode()


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
    """Reads ``save_collage``'s file: the collage and its library's fingerprint.

    Raises:
      ValueError: the file is missing or damaged (one line naming it; nothing is unpickled).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            params = CollageParams(
                **{k: jnp.asarray(data[f"params/{k}"]) for k in CollageParams._fields}
            )
            collage = Collage(params, jnp.asarray(data["patch_index"]))
            return collage, str(data["library_fingerprint"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{os.fspath(path)}: not a readable collage ({safe_npy.load_error_reason(error)}): "
            "resume the run to write it again, or start a new run."
        ) from None
