"""High-resolution render of one 100-patch collage at growing sizes: time and peak memory.

    python benchmarks/hires.py [--sizes 896,2048,4096] [--library shapes] [--highres 256]

Each size runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.
Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(size: int, library_name: str, highres: int) -> dict:
    import jax
    import jax.numpy as jnp

    from clipclop_jax import CollageConfig, load_library, random_population, render_high_res
    from clipclop_jax.collage.params import take

    library = load_library(library_name, highres_size=highres).high
    config = CollageConfig()
    collage = take(random_population(jax.random.key(0), config, library.num_patches, 1), 0)
    background = jnp.zeros((size, size, 3), jnp.float32)
    start = time.perf_counter()
    render_high_res(collage, library, background, config, size, size)
    first = time.perf_counter() - start
    start = time.perf_counter()
    image = render_high_res(collage, library, background, config, size, size)
    again = time.perf_counter() - start
    assert image.shape == (size, size, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "first_s": first, "again_s": again, "peak_mib": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="896,2048,4096")
    parser.add_argument("--library", default="shapes")
    parser.add_argument("--highres", type=int, default=256)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.library, args.highres)))
        return
    print(f"100 patches, library {args.library!r} at {args.highres} px, 224 px canvas config")
    print()
    print("| output | first call, with compile (s) | again (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size), "--library", args.library]
        command += ["--highres", str(args.highres)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {size}x{size} | {row['first_s']:.2f} | {row['again_s']:.2f} "
            f"| {row['peak_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
