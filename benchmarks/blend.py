"""Poisson blending: time, CG iterations and residual, with and without the preconditioner.

    python benchmarks/blend.py [--sizes 512,1024,2048] [--patches 100] [--repeats 3]
        [--plain-max-iterations 2000] [--before docs/images/blend_before.png
         --after docs/images/blend_after.png --image-size 384]

For each canvas size it renders one random collage of ``--patches`` patches from the
"photos" library ("shapes" without scikit-image), builds its layers and guidance field
(``blend.collage_layers`` + ``collage_guidance``, timed as "layers"), then times the
compiled screened-Poisson solve (``poisson.poisson_blend``, 1e-5 relative residual):
  * DCT-PCG: the default system (constant data weight), CG preconditioned by the DCT solve;
  * plain CG: the same system unpreconditioned, capped at ``--plain-max-iterations``
    (``--plain-max-iterations-2048`` at 2048 and above, where one iteration is slow);
  * bg x10: the background held 10x more firmly (a varying weight: CG does real work).
Times are the best of ``--repeats`` steady-state calls; compile times are printed apart.
``--before/--after`` write a render and its default blend as PNGs.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clipclop_jax import xla_options
from clipclop_jax.blend.poisson import poisson_blend
from clipclop_jax.blend.seams import BACKGROUND, blend_collage, collage_guidance, collage_layers
from clipclop_jax.collage.params import random_collage
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.load import load_library
from clipclop_jax.library.patch_library import PatchLibrary

PAPER = (0.93, 0.91, 0.85)  # background colour


def timed(fun, *args, repeats: int):
    """(best seconds per call, compile seconds, last output) of a compiled ``fun``."""
    start = time.perf_counter()
    compiled = xla_options.jit(fun).lower(*args).compile()
    compile_s = time.perf_counter() - start
    output = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return min(times), compile_s, output


def patch_library() -> PatchLibrary:
    try:
        library = load_library("photos").high
    except ValueError:  # no scikit-image
        library = load_library("shapes").high
    return PatchLibrary(jnp.asarray(library.rgba), jnp.asarray(library.sizes))


def paper(height: int, width: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(PAPER, jnp.float32), (height, width, 3))


def benchmark_size(size, library, args):
    config = CollageConfig(canvas_height=size, canvas_width=size, num_patches=args.patches)
    collage = random_collage(jax.random.key(args.seed), config, library.num_patches)
    background = paper(size, size)

    def layers_and_guidance(collage, library, background):
        rendered, layers = collage_layers(collage, library, background, config)
        guidance = collage_guidance(rendered, layers, background)
        return rendered, guidance, layers.top == BACKGROUND

    layers_s, layers_compile_s, (rendered, guidance, shows_background) = timed(
        layers_and_guidance, collage, library, background, repeats=args.repeats
    )
    screening = 1.0 / (0.05 * size) ** 2  # blend_collage's default radius
    constant = jnp.full((size, size), screening, jnp.float32)
    firm = screening * jnp.where(shows_background, 10.0, 1.0)
    cap = args.plain_max_iterations if size < 2048 else args.plain_max_iterations_2048
    rows = []
    for name, weight, precondition, max_iterations in (
        ("DCT-PCG", constant, True, 100),
        ("plain CG", constant, False, cap),
        ("bg x10, DCT-PCG", firm, True, 100),
    ):
        solve = functools.partial(
            poisson_blend, precondition=precondition, max_iterations=max_iterations
        )
        seconds, compile_s, (_, info) = timed(
            solve, rendered, *guidance, weight, repeats=1 if not precondition else args.repeats
        )
        rows.append((name, seconds, compile_s, int(info.iterations), float(info.residual)))
    return layers_s, layers_compile_s, rows, cap


def write_images(library, args):
    size = args.image_size
    config = CollageConfig(canvas_height=size, canvas_width=size, num_patches=args.patches)
    collage = random_collage(jax.random.key(args.seed), config, library.num_patches)
    background = paper(size, size)
    before, _ = blend_collage(collage, library, background, config, mode="none")
    after, info = blend_collage(collage, library, background, config)
    for path, image in ((args.before, before), (args.after, after)):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        pixels = np.round(np.asarray(image) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, optimize=True)
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")
    print(f"blend: {int(info.iterations)} iteration(s), residual {float(info.residual):.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain-max-iterations", type=int, default=2000)
    parser.add_argument("--plain-max-iterations-2048", type=int, default=400)
    parser.add_argument(
        "--before", help="PNG path for the render, e.g. docs/images/blend_before.png"
    )
    parser.add_argument("--after", help="PNG path for the blend, e.g. docs/images/blend_after.png")
    parser.add_argument("--image-size", type=int, default=384)
    args = parser.parse_args()

    library = patch_library()
    print(
        f"backend {jax.default_backend()}, {os.cpu_count()} CPU(s), jax {jax.__version__}; "
        f"library {tuple(library.rgba.shape)} {library.rgba.dtype}; {args.patches} patches; "
        "tolerance 1e-5 relative residual"
    )
    if args.before and args.after:
        write_images(library, args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes:
        return
    print()
    print(
        "| canvas | layers + guidance (s) | solver | solve (s) | iterations | residual "
        "| compile (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        layers_s, layers_compile_s, rows, cap = benchmark_size(size, library, args)
        for i, (name, seconds, compile_s, iterations, residual) in enumerate(rows):
            first = f"{size}x{size} | {layers_s:.2f} (compile {layers_compile_s:.1f})"
            capped = " (cap)" if name == "plain CG" and iterations >= cap else ""
            print(
                f"| {first if i == 0 else ' | '} | {name} | {seconds:.3f} | "
                f"{iterations}{capped} | {residual:.1e} | {compile_s:.1f} |"
            )


if __name__ == "__main__":
    main()
