"""clipclop-jax: CLIP-guided collage (CLIP-CLOP) in JAX."""

from clipclop_jax.api import (
    GenerateConfig,
    GenerateResult,
    OutputConfig,
    Resources,
    generate,
    load_collage,
    load_resources,
    resume,
)
from clipclop_jax.augment import AugmentConfig
from clipclop_jax.batch import BatchItem, generate_batch
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.evolution import EvolutionConfig
from clipclop_jax.hires import render_high_res
from clipclop_jax.interrupt import RunInterrupted, StopOnSignal
from clipclop_jax.library import Library, LibraryError, PatchLibrary, load_library, save_library
from clipclop_jax.params import Collage, CollageParams, random_population
from clipclop_jax.perceptor import Perceptor, PerceptorError, PromptError, load_perceptor
from clipclop_jax.render import render, render_population
from clipclop_jax.tiled import generate_tiled
from clipclop_jax.version import __version__

__all__ = [
    "AugmentConfig",
    "BatchItem",
    "Collage",
    "CollageConfig",
    "CollageParams",
    "EvolutionConfig",
    "GenerateConfig",
    "GenerateResult",
    "Library",
    "LibraryError",
    "OptimConfig",
    "OutputConfig",
    "PatchLibrary",
    "Perceptor",
    "PerceptorError",
    "PromptError",
    "Resources",
    "RunInterrupted",
    "StopOnSignal",
    "__version__",
    "generate",
    "generate_batch",
    "generate_tiled",
    "load_collage",
    "load_library",
    "load_perceptor",
    "load_resources",
    "random_population",
    "render",
    "render_high_res",
    "render_population",
    "resume",
    "save_library",
]
