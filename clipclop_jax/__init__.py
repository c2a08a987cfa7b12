"""clipclop-jax: CLIP-guided collage (CLIP-CLOP) in JAX."""

from clipclop_jax.collage.hires import render_high_res
from clipclop_jax.collage.params import Collage, CollageParams, random_population
from clipclop_jax.collage.render import render, render_population
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.ensemble import PerceptorEnsemble, load_guides
from clipclop_jax.guidance.perceptor import Perceptor, PerceptorError, PromptError, load_perceptor
from clipclop_jax.library.file_formats import save_library
from clipclop_jax.library.load import load_library
from clipclop_jax.library.patch_library import Library, LibraryError, PatchLibrary
from clipclop_jax.runs.batch import BatchItem, generate_batch
from clipclop_jax.runs.generate import generate, resume
from clipclop_jax.runs.interrupt import RunInterrupted, StopOnSignal
from clipclop_jax.runs.outputs import GenerateResult, load_collage
from clipclop_jax.runs.resources import Resources, load_resources
from clipclop_jax.runs.settings import GenerateConfig, OutputConfig
from clipclop_jax.runs.tiled import generate_tiled
from clipclop_jax.search.evolution import EvolutionConfig
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
    "PerceptorEnsemble",
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
    "load_guides",
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
