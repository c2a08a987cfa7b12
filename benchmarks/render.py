"""Renderer speed: forward and forward+gradient, windowed vs full canvas, per render mode.

    python benchmarks/render.py [--population 4] [--patches 100] [--size 224] [--repeats 5]

Prints a Markdown table for benchmarks/README.md. Compile time is reported apart from the
steady-state time; memory is XLA's temporary buffer size for the compiled program.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from clipclop_jax import xla_options
from clipclop_jax.collage.params import Collage, random_population
from clipclop_jax.collage.render import render
from clipclop_jax.collage.transforms import window_shape
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.load import load_library


def measure(fun, args, repeats):
    start = time.perf_counter()
    compiled = xla_options.jit(fun).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    memory = compiled.memory_analysis()
    temp_mib = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else float("nan")
    return min(times), compile_s, temp_mib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--library", default="shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default="transparency,masked_transparency,opacity")
    args = parser.parse_args()

    library = load_library(args.library).low
    library = jax.tree.map(jnp.asarray, library)
    print(
        f"backend {jax.default_backend()}, {jax.device_count()} device(s); library "
        f"{args.library} {tuple(library.rgba.shape)}; population {args.population} x "
        f"{args.patches} patches at {args.size}x{args.size}"
    )
    print()
    print(
        "| mode | renderer | window | forward (s) | forward+grad (s) | compile f+g (s) "
        "| temp memory f+g (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        config = CollageConfig(
            canvas_height=args.size,
            canvas_width=args.size,
            num_patches=args.patches,
            render_mode=mode,
        )
        population = random_population(
            jax.random.key(0), config, library.num_patches, args.population
        )
        background = jnp.zeros((args.size, args.size, 3), jnp.float32)
        for windowed in (True, False):

            def images(
                params,
                windowed=windowed,
                config=config,
                patch_index=population.patch_index,
                background=background,
            ):
                collages = Collage(params, patch_index)
                return jax.vmap(
                    lambda c: render(c, library, background, config, windowed=windowed)
                )(collages)

            def loss(params, images=images):
                return jnp.mean(images(params) ** 2)

            forward, _, _ = measure(images, (population.params,), args.repeats)
            both, compile_s, temp = measure(
                jax.value_and_grad(loss), (population.params,), args.repeats
            )
            window = window_shape(config, library.side) if windowed else config.canvas_shape
            name = "windowed" if windowed else "full canvas"
            print(
                f"| {mode} | {name} | {window[0]}x{window[1]} | {forward:.3f} | {both:.3f} "
                f"| {compile_s:.1f} | {temp:.0f} |"
            )


if __name__ == "__main__":
    main()
