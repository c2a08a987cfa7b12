"""Steps per second against population size and device count (the population axis sharded).

    python benchmarks/population.py [--populations 1,2,4,8,16] [--devices 1,2,4,8]
        [--size 64] [--patches 24] [--crops 2] [--chunk 10] [--repeats 3] [--cpu-devices 8]

For every population P and device count D that divides it, it compiles the real chunk
(``optimise.make_chunk`` with microbial evolution every 10 steps, as ``generate`` runs it),
places the run state with ``sharding.place`` on D devices, and times whole chunks after the
first (the first chunk's time, compilation included, is reported apart). Work per step is
P collages: P renders and P * crops CLIP forward+backward passes.
On a CPU, ``--cpu-devices`` simulated devices share the same cores, so D > 1 measures the
cost of partitioning, not a speed-up; on a machine with D real devices the same program
spreads the population over them. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", default="1,2,4,8,16")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    parser.add_argument("--patches", type=int, default=24, help="patches per collage")
    parser.add_argument("--crops", type=int, default=2, help="augmented crops per collage")
    parser.add_argument("--chunk", type=int, default=10, help="steps per compiled chunk")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks (best is kept)")
    parser.add_argument(
        "--cpu-devices", type=int, default=8, help="simulated CPU devices (CPU only)"
    )
    args = parser.parse_args()

    import jax

    # Before JAX starts its backends; it only shapes the CPU backend (GPUs/TPUs are real).
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    import jax.numpy as jnp

    from clipclop_jax.collage.params import random_population
    from clipclop_jax.config import CollageConfig, OptimConfig
    from clipclop_jax.guidance.augment import AugmentConfig
    from clipclop_jax.guidance.objective import Guidance
    from clipclop_jax.guidance.perceptor import load_perceptor
    from clipclop_jax.library.load import load_library
    from clipclop_jax.search.evolution import EvolutionConfig
    from clipclop_jax.search.optimise import (
        init_state,
        make_chunk,
        make_evolution_step,
        make_optimizer,
    )
    from clipclop_jax.search.sharding import place, population_mesh

    perceptor = load_perceptor("demo")
    library = load_library("shapes", lowres_size=32, highres_size=64)
    collage = CollageConfig(
        canvas_height=args.size, canvas_width=args.size, num_patches=args.patches
    )
    optim = OptimConfig(num_crops=args.crops, chunk_steps=args.chunk)
    evolution = EvolutionConfig(method="microbial", frequency=10)
    chunk = make_chunk(
        collage,
        perceptor,
        optim,
        AugmentConfig(),
        after_step=make_evolution_step(evolution, collage, library.num_patches),
    )
    guidance = Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text(["a red circle"]),
        prompt_weights=jnp.ones((1,), jnp.float32),
        library=jax.tree.map(jnp.asarray, library.low),
        background=jnp.zeros((*collage.canvas_shape, 3), jnp.float32),
    )
    devices = jax.devices()
    print(
        f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind}, {os.cpu_count()} "
        f"CPU cores; demo CLIP, {args.size}x{args.size} canvas, {args.patches} patches, "
        f"{args.crops} crops, microbial evolution every 10 steps, {args.chunk} steps per chunk"
    )
    print()
    print(
        "| P | devices | first chunk (s) | step (ms) | steps/s | collage-steps/s "
        "| ms per collage-step | CLIP passes per step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    steps = jnp.asarray(args.chunk, jnp.int32)
    for size in map(int, args.populations.split(",")):
        for count in map(int, args.devices.split(",")):
            if count > len(devices) or size % count:
                continue
            key = jax.random.key(0)
            population = random_population(key, collage, library.num_patches, size)
            state = init_state(key, population, make_optimizer(optim))
            state, placed = place(state, guidance, population_mesh(count))
            start = time.perf_counter()
            state, losses = chunk(state, placed, steps)
            jax.block_until_ready(losses)
            compile_s = time.perf_counter() - start
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                state, losses = chunk(state, placed, steps)
                jax.block_until_ready(losses)
                best = min(best, (time.perf_counter() - start) / args.chunk)
            print(
                f"| {size} | {count} | {compile_s:.1f} | {1000 * best:.0f} | {1 / best:.2f} "
                f"| {size / best:.1f} | {1000 * best / size:.1f} | {size * args.crops} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
