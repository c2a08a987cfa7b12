"""``blend_run()``: blend a finished run's best collage again, with another blend mode."""

from __future__ import annotations

import dataclasses
import json
import os

from clipclop_jax import io
from clipclop_jax.library.patch_library import (
    LibraryError,
)
from clipclop_jax.runs import run_folder
from clipclop_jax.runs.config_files import PNG_CONFIG_KEY
from clipclop_jax.runs.outputs import config_json, final_image, load_collage
from clipclop_jax.runs.resources import load_patch_library, moved_hint, relinked
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.runs.setup import run_keys
from clipclop_jax.version import __version__


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
    path = os.path.join(out_dir, run_folder.CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{out_dir!r} has no {run_folder.CONFIG_FILE}: pass a run's --out folder.")
    with open(path) as handle:
        config = GenerateConfig.from_dict(json.load(handle))
    if config.tiles is not None:
        raise ValueError("blending a tiled collage is not supported yet: blend its tiles' runs.")
    config = relinked(dataclasses.replace(config, blend=mode), patches=patches)
    collage, fingerprint = load_collage(os.path.join(out_dir, run_folder.PARAMS_FILE))
    if resources is not None:
        library = resources.library
    else:
        try:
            library = load_patch_library(config)  # the model is not needed to render
        except LibraryError as error:
            raise moved_hint(error, out_dir, "blend", patches=patches) from None
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
        text={PNG_CONFIG_KEY: config_json(config).decode(), "clipclop_jax_version": __version__},
    )
    return target
