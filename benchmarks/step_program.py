"""A fingerprint of the compiled step's program, to show that a refactor changed no computation.

    python benchmarks/step_program.py [--batchings per_collage,population]

Builds the real chunk (``optimise.make_chunk``: demo CLIP, 100 patches, 224 x 224, 4 crops,
population 2, one device), lowers it without compiling or running it, and prints the SHA-256
of its StableHLO text without debug information (no file names or line numbers). Two
checkouts that print the same hash run the same program, so they run at the same speed.
It also imports the flat layout of clipclop-jax 0.1.0 (``clipclop_jax.optimise``, ...), so it
runs unchanged in a checkout from before the package was split into subpackages.
"""

from __future__ import annotations

import argparse
import hashlib

import jax
import jax.numpy as jnp

from clipclop_jax import load_library, load_perceptor, xla_options
from clipclop_jax.config import CollageConfig, OptimConfig

try:
    from clipclop_jax.collage.params import random_population
    from clipclop_jax.guidance.augment import AugmentConfig
    from clipclop_jax.guidance.objective import Guidance
    from clipclop_jax.search.optimise import init_state, make_chunk, make_optimizer
    from clipclop_jax.search.sharding import place, population_mesh
except ImportError:  # the flat layout of 0.1.0
    from clipclop_jax.augment import AugmentConfig
    from clipclop_jax.objective import Guidance
    from clipclop_jax.optimise import init_state, make_chunk, make_optimizer
    from clipclop_jax.params import random_population
    from clipclop_jax.sharding import place, population_mesh


class _LoweringDoneError(Exception):
    """Raised instead of running the chunk, once its program text is captured."""


def program_text(batching: str) -> str:
    """The StableHLO text of the chunk ``make_chunk`` compiles for ``batching``."""
    perceptor = load_perceptor("demo")
    library = jax.tree.map(jnp.asarray, load_library("shapes").low)
    config = CollageConfig()
    optim = OptimConfig(num_crops=4, chunk_steps=2, batching=batching)
    population = random_population(jax.random.key(0), config, library.rgba.shape[0], 2)
    guidance = Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text(["a red circle"]),
        prompt_weights=jnp.ones((1,), jnp.float32),
        library=library,
        background=jnp.zeros((*config.canvas_shape, 3), jnp.float32),
    )
    state = init_state(jax.random.key(1), population, make_optimizer(optim))
    state, guidance = place(state, guidance, population_mesh(1))
    # make_chunk jits through xla_options.jit; catch the program it builds and lower it
    # rather than compile it.
    real_jit, texts = xla_options.jit, []

    def lowering_jit(fun, **kwargs):
        jitted = real_jit(fun, **kwargs)

        def call(*args):
            texts.append(jitted.lower(*args).as_text())
            raise _LoweringDoneError

        return call

    xla_options.jit = lowering_jit
    try:
        chunk = make_chunk(config, perceptor, optim, AugmentConfig())
        chunk(state, guidance, jnp.asarray(optim.chunk_steps, jnp.int32))
    except _LoweringDoneError:
        pass
    finally:
        xla_options.jit = real_jit
    return texts[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batchings", default="per_collage,population")
    args = parser.parse_args()
    for batching in args.batchings.split(","):
        text = program_text(batching)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        print(f"{batching}: {digest} ({len(text)} characters)")


if __name__ == "__main__":
    main()
