"""What a run hands back and writes: the best collage, rendered at the output size
(``final_image``), ``collage.png``, ``params.npz`` and ``config.json``.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import io, safe_npy
from clipclop_jax.blend.seams import blend_collage
from clipclop_jax.collage.background import make_background
from clipclop_jax.collage.hires import render_high_res
from clipclop_jax.collage.params import Collage, CollageParams, take
from clipclop_jax.library.patch_library import (
    Library,
    PatchLibrary,
)
from clipclop_jax.runs import run_folder
from clipclop_jax.runs.config_files import PNG_CONFIG_KEY
from clipclop_jax.runs.resources import Resources
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.runs.setup import state_template
from clipclop_jax.search.optimise import (
    RunState,
)
from clipclop_jax.version import __version__


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


def best_collage(state: RunState) -> Collage:
    """The best collage seen, or the first individual before any has been scored."""
    return state.best if bool(jnp.isfinite(state.best_loss)) else take(state.population, 0)


def estimate_output_bytes(config: GenerateConfig) -> int:
    """About the most disk a run's folder needs: checkpoints, images and frames."""
    output = config.output
    history = config.optim.steps * config.population * 4
    state = run_folder.state_nbytes(state_template(config)) + history + 65536
    height, width = config.output_shape()
    images = 2 * height * width * 3 + state
    frames = 0
    if output.gif or output.mp4:
        count = config.optim.steps // output.frame_every + 2
        pixels = count * config.collage.canvas_height * config.collage.canvas_width
        frames = pixels * 3 + pixels * output.gif + pixels * output.mp4
    return (output.keep_checkpoints + 1) * state + images + frames + 2**20


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
    save_collage(os.path.join(out_dir, run_folder.PARAMS_FILE), collage, loss, library)
    io.atomic_write_bytes(os.path.join(out_dir, run_folder.CONFIG_FILE), config_json(config))


def write_image(out_dir: str, config: GenerateConfig, image: np.ndarray) -> None:
    """Writes collage.png atomically, the config in its text chunks."""
    io.save_png(
        os.path.join(out_dir, run_folder.COLLAGE_FILE),
        image,
        text={PNG_CONFIG_KEY: config_json(config).decode(), "clipclop_jax_version": __version__},
    )


def config_json(config: GenerateConfig) -> bytes:
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
