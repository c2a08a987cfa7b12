"""``generate()`` and ``resume()``: prompt in, collage out. The orchestrator; it reads as a
table of contents of the run (check, load, set up, drive the chunks, write), each job living in
its own module of ``clipclop_jax.runs``. The CLI is a thin shell over it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import io
from clipclop_jax.runs import checkpoint, preflight, processes, run_folder, video
from clipclop_jax.runs.chunks import ProgressFn, compiled_chunk, run_chunks
from clipclop_jax.runs.interrupt import RunInterrupted
from clipclop_jax.runs.outputs import (
    GenerateResult,
    best_result,
    config_json,
    estimate_output_bytes,
)
from clipclop_jax.runs.resources import (
    Resources,
    load_resources,
    model_fingerprint,
    moved_hint,
    relinked,
    with_absolute_paths,
)
from clipclop_jax.runs.run_files import RunFiles
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.runs.setup import (
    RunSetup,
    initial_population,
    prepare_run,
    score_unstepped,
    state_template,
)
from clipclop_jax.search import sharding
from clipclop_jax.search.optimise import (
    RunState,
    init_state,
    make_optimizer,
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
    out_dir = None if out_dir is None else os.fspath(out_dir)
    with run_folder.removed_if_left_empty(out_dir):
        config, resources, run, state = start_run(
            config, out_dir, resources, overwrite, canvas_background
        )
        return drive_run(config, resources, run, state, None, out_dir, progress_fn, should_stop)


def start_run(
    config: GenerateConfig,
    out_dir: str | None,
    resources: Resources | None = None,
    overwrite: bool = False,
    canvas_background: jax.typing.ArrayLike | None = None,
) -> tuple[GenerateConfig, Resources, RunSetup, RunState]:
    """A new run up to its first step (``generate`` and a studio session share it): the
    checks before loading, the folder, the model and patches, the guidance, ``config.json``
    and the starting population. Call it inside ``run_folder.removed_if_left_empty``.

    Returns:
      The config (paths made absolute), resources, setup and fresh run state.
    """
    config = with_absolute_paths(config)
    preflight.check_run(config)
    if out_dir is not None:
        video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
        # Checked (and with overwrite emptied) by process 0 alone, before any process writes
        # there; its refusal stops every process.
        needed = estimate_output_bytes(config)
        processes.on_writer(
            "clipclop-folder-ready",
            lambda: run_folder.prepare_output_folder(
                out_dir, overwrite=overwrite, needed_bytes=needed
            ),
        )
    resources = resources or load_resources(config)
    run = prepare_run(config, resources, canvas_background)
    if out_dir is not None and processes.is_writer():
        # Only now: a typo in the patches or background leaves the folder empty for a retry.
        config_path = os.path.join(out_dir, run_folder.CONFIG_FILE)
        io.atomic_write_bytes(config_path, config_json(config))
    population = initial_population(run.population_key, config, resources.perceptor, run.guidance)
    state = init_state(run.run_key, population, make_optimizer(config.optim))
    return config, resources, run, state


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
      ValueError: no readable checkpoint; a check made before loading failed
        (``preflight.check_run``: memory on this machine, library source, background, video
        writers, disk); the saved library or model cannot be loaded (the message says how
        to give their new place); or ``resources`` (or what the config loads now) has
        another patch library or CLIP model than the run started with.
      RunInterrupted: ``should_stop`` asked to stop again.
    """
    out_dir = os.fspath(out_dir)
    config, resources, run, state, saved = open_run(
        out_dir, patches=patches, model=model, resources=resources
    )
    return drive_run(
        config, resources, run, state, saved.history, out_dir, progress_fn, should_stop
    )


def open_run(
    out_dir: str,
    *,
    patches: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    resources: Resources | None = None,
) -> tuple[GenerateConfig, Resources, RunSetup, RunState, checkpoint.Checkpoint]:
    """A run folder's newest checkpoint, ready to continue (``resume`` and a studio session
    share it): the checks, the model and patches (relinked if moved), the guidance, the
    restored state and the checkpoint it came from (its loss history, its meta record).
    Raises as ``resume``."""
    saved = checkpoint.load_latest(out_dir)
    original = GenerateConfig.from_dict(saved.config)
    config = relinked(original, patches=patches, model=model)
    # Before the model loads, as for generate: this machine may hold less than the one the
    # run started on, and the library or background image may have gone.
    try:
        preflight.check_run(config, library=resources is None)
    except ValueError as error:
        raise moved_hint(error, out_dir, "resume", patches=patches, model=model) from None
    video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
    run_folder.check_output_folder(out_dir, needed_bytes=estimate_output_bytes(config))
    if resources is None:
        try:
            resources = load_resources(config)
        except ValueError as error:
            raise moved_hint(error, out_dir, "resume", patches=patches, model=model) from None
    checkpoint.check_fingerprints(
        saved,
        library_fingerprint=resources.library.fingerprint,
        model_fingerprint=model_fingerprint(resources.perceptor),
    )
    run = prepare_run(config, resources)
    # Read straight into this run's shardings: the run may continue on another device or
    # process count than it was saved on.
    state = checkpoint.restore_state(saved, state_template(config), mesh=run.mesh)
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
            extra_meta=checkpoint.extra_meta(saved),
        )
    return config, resources, run, state, saved


def drive_run(
    config: GenerateConfig,
    resources: Resources,
    run: RunSetup,
    state: RunState,
    history: np.ndarray | None,
    out_dir: str | None,
    progress_fn: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
) -> GenerateResult:
    """Places the run state on the run's mesh, drives it to ``optim.steps`` and writes the
    run's files."""
    run, state, files, chunk = place_run(config, resources, run, state, out_dir)
    should_stop = processes.agreed(should_stop)
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
    return finish_run(config, resources, run, state, history, files, out_dir)


def place_run(
    config: GenerateConfig,
    resources: Resources,
    run: RunSetup,
    state: RunState,
    out_dir: str | None,
) -> tuple[RunSetup, RunState, RunFiles | None, Callable]:
    """The run on its mesh, its file writer (None without a folder) and its compiled chunk
    (shared with every run of the same shapes: ``compiled_chunk``)."""
    state, guidance = sharding.place(state, run.guidance, run.mesh)
    run = run._replace(guidance=guidance)
    files = None if out_dir is None else RunFiles(out_dir, config, resources, run, state)
    chunk = compiled_chunk(
        config.collage,
        resources.perceptor,
        config.optim,
        config.augment,
        config.evolution,
        resources.library.num_patches,
        config.regions,
    )
    if jax.process_count() > 1:
        # Compiled before any process runs it, then started together: gloo, the CPU
        # collectives, gives up on a peer more than 30 s late, as a slower compile can be.
        chunk.lower(state, run.guidance, jnp.asarray(1, jnp.int32)).compile()
        processes.sync("clipclop-chunk-compiled")
    return run, state, files, chunk


def finish_run(
    config: GenerateConfig,
    resources: Resources,
    run: RunSetup,
    state: RunState,
    history: np.ndarray,
    files: RunFiles | None,
    out_dir: str | None,
) -> GenerateResult:
    """The end of a run: its best collage written (or returned); ``RunInterrupted`` if it
    stopped before ``optim.steps``."""
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
            else os.path.join(out_dir, run_folder.COLLAGE_FILE),
            result=result._replace(out_dir=out_dir),
        )
    if files is not None:
        files.finish_videos(state)
        result = result._replace(out_dir=out_dir)
    return result
