"""What a run loads before it starts: its CLIP model and patch library (``Resources``).

Also where saved paths are made absolute and a moved library or model is relinked, so a run
folder resumes from anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shlex

import numpy as np

from clipclop_jax.collage.background import parse_colour
from clipclop_jax.guidance.ensemble import (
    Guides,
    PerceptorEnsemble,
    format_model_spec,
    load_guides,
    parse_model_spec,
)
from clipclop_jax.guidance.perceptor import DEMO, PerceptorError
from clipclop_jax.library.load import BUILTIN, load_library
from clipclop_jax.library.npz_reader import load_library_subset
from clipclop_jax.library.patch_library import Library, LibraryError
from clipclop_jax.runs import checkpoint
from clipclop_jax.runs.settings import GenerateConfig


@dataclasses.dataclass
class Resources:
    """Loaded once and reused across ``generate`` calls of a batch."""

    perceptor: Guides  # one CLIP, or an ensemble of them (``--model A,B:0.5``)
    library: Library


def load_resources(config: GenerateConfig) -> Resources:
    """The run's CLIP model (or models: ``ensemble.load_guides``) and patch library
    (``load_patch_library``).

    The library loads first, so that a problem with it shows before the (slow) model loads.
    """
    library = load_patch_library(config)
    return Resources(load_guides(config.model), library)


def load_patch_library(config: GenerateConfig) -> Library:
    """The run's patch library.

    A library ``.npz`` is read one square at a time (``npz_reader.load_library_subset``),
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
    directory. Built-in libraries ("shapes"), "demo", hub names and colours stay as they are;
    each folder of a model ensemble is made absolute, its weight kept."""
    changes = {}
    patches = os.path.expanduser(config.patches)
    if config.patches not in BUILTIN and os.path.exists(patches):
        changes["patches"] = os.path.abspath(patches)
    model = _absolute_model_spec(config.model)
    if model != config.model:
        changes["model"] = model
    background = config.background
    is_image = parse_colour(background) is None and background.strip().lower() != "noise"
    if is_image and os.path.isfile(background):
        changes["background"] = os.path.abspath(background)
    return dataclasses.replace(config, **changes) if changes else config


def _absolute_model_spec(spec: str) -> str:
    """``spec`` with the model folders in it made absolute (unchanged where none is relative)."""
    if spec != DEMO and os.path.isdir(spec):
        return os.path.abspath(spec)
    members = parse_model_spec(spec)
    absolute = [
        (os.path.abspath(name) if name != DEMO and os.path.isdir(name) else name, weight)
        for name, weight in members
    ]
    return spec if absolute == members else format_model_spec(absolute)


def relinked(config: GenerateConfig, **moved) -> GenerateConfig:
    """The saved ``config`` with the library or model at the places given (None: as saved)."""
    moved = {key: os.fspath(value) for key, value in moved.items() if value is not None}
    return with_absolute_paths(dataclasses.replace(config, **moved)) if moved else config


def moved_hint(error: ValueError, out_dir: str, command: str, **given) -> ValueError:
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


@functools.lru_cache(maxsize=8)
def model_fingerprint(perceptor: Guides) -> str:
    """``checkpoint.model_fingerprint`` of a perceptor's weights, computed once per perceptor.

    An ensemble's covers every member's fingerprint, in order, and its normalised weights: a
    run resumed with other models, another order or other weights is refused.
    """
    if isinstance(perceptor, PerceptorEnsemble):
        parts = [
            f"{model_fingerprint(member)}:{weight!r}"
            for member, weight in zip(perceptor.members, perceptor.weights, strict=True)
        ]
        return hashlib.sha256(";".join(parts).encode()).hexdigest()[:32]
    return checkpoint.model_fingerprint(perceptor.params)
