"""What one accelerator gives: the step for both batchings and precisions, the final render,
the blend, and whether per-collage runs give the CPU's bits. One command, one table, one JSON.

    python benchmarks/device_check.py --out $OUT/device_check.json

On a GPU or TPU (full sizes, at most ~8 minutes on one chip): ViT-B/32's architecture with
random weights (nothing to download), 100 patches on the 224 x 224 canvas, K = 4 crops,
P in 2, 8, 32, 128; for each P, each ``OptimConfig.batching`` and each ``precision``:
  step     steady seconds per step of the real compiled chunk (``optimise.make_chunk``,
           placed on one device as a run places it), best of --repeats chunks;
  first    the first call: lowering, compiling and one chunk;
  CLIP     the floor, forward+backward of CLIP's image tower on the P x K crops w.r.t. the
           pixels (in that precision), and step / CLIP;
  memory   the device's peak bytes in use so far in the process (``memory_stats()``, None
           on CPU: the render, blends and smaller rows before it count too) and the chunk
           program's own size (arguments + outputs + temporaries, XLA's estimate).
Before them, the high-resolution render at 4096 x 4096 (``benchmarks/hires.py``), Poisson
blending at 2048 and 4096 (``benchmarks/blend.py``), and the bits check: a fixed-seed per-collage
float32 chunk (demo CLIP, 224 x 224, 100 patches, P = 2, 5 steps) run twice here and once
in a CPU-only subprocess (``JAX_PLATFORMS=cpu``), compared bit for bit.

On CPU (or with --small) the sizes shrink to finish in ~3 minutes on 2 cores: the demo
CLIP instead of ViT-B/32 (whose bfloat16 programs take a minute each to compile there),
P in 1, 2, 2 steps per chunk, a render at 896, blends at 512 and 1024. There the bits check compares
the CPU with itself in another process: equal bits say only that the CPU run repeats.
Rows still to run when --budget-s has passed are listed as skipped, so the command ends in
time on a slow chip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

# blend, hires and step are the sibling benchmarks this one reuses (run as a script,
# benchmarks/ is on sys.path).
import blend
import hires
import jax
import jax.numpy as jnp
import numpy as np
import step

from clipclop_jax.collage.params import random_population
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.objective import Guidance, clip_dtype
from clipclop_jax.guidance.perceptor import cast_floats, load_perceptor
from clipclop_jax.library.load import load_library
from clipclop_jax.search.optimise import init_state, make_chunk, make_optimizer
from clipclop_jax.search.sharding import place, population_mesh

BATCHINGS = ("per_collage", "population")
PRECISIONS = ("float32", "bfloat16")
MIB = 2**20


def peak_device_mib() -> float | None:
    """The default device's peak bytes in use so far, in MiB; None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / MIB


def program_mib(compiled) -> float | None:
    """XLA's estimate of a compiled program's device memory: arguments, outputs, temps."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return (total - m.alias_size_in_bytes) / MIB
    except Exception:  # not every backend or jaxlib reports it
        return None


def guidance_for(perceptor, library, precision: str, seed: int = 0) -> Guidance:
    text = jax.random.normal(jax.random.key(seed), (1, perceptor.embed_dim))
    return Guidance(
        clip_params=cast_floats(perceptor.params, clip_dtype(OptimConfig(precision=precision))),
        text_embeddings=text / jnp.linalg.norm(text),
        prompt_weights=jnp.ones((1,), jnp.float32),
        library=library,
        background=jnp.zeros((224, 224, 3), jnp.float32),
    )


def clip_floor(perceptor, guidance, population, crops, precision, repeats):
    """Seconds of CLIP's forward+backward w.r.t. the pixels of P x K crops, in ``precision``."""
    dtype = clip_dtype(OptimConfig(precision=precision))
    size = perceptor.image_size
    pixels = jax.random.uniform(jax.random.key(0), (population * crops, size, size, 3))

    def loss(params, x):
        embeddings = perceptor.embed_images(params, x, dtype=dtype)
        return -jnp.sum(embeddings @ guidance.text_embeddings.T)

    gradient = jax.grad(loss, argnums=1)
    seconds, _ = step.timed(gradient, guidance.clip_params, pixels, repeats=repeats)
    return seconds


def chunk_row(perceptor, library, population, optim, repeats):
    """Steady seconds per step, first-call seconds and program MiB of the compiled chunk."""
    config = CollageConfig()
    guidance = guidance_for(perceptor, library, optim.precision)
    optimizer = make_optimizer(optim)
    collages = random_population(jax.random.key(0), config, library.num_patches, population)
    state, guidance = place(
        init_state(jax.random.key(1), collages, optimizer), guidance, population_mesh(1)
    )
    chunk = make_chunk(config, perceptor, optim, AugmentConfig())
    steps = jnp.asarray(optim.chunk_steps, jnp.int32)
    start = time.perf_counter()
    compiled = chunk.lower(state, guidance, steps).compile()
    state, losses = compiled(state, guidance, steps)
    jax.block_until_ready(losses)
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, losses = compiled(state, guidance, steps)
        jax.block_until_ready(losses)
        best = min(best, (time.perf_counter() - start) / optim.chunk_steps)
    finite = bool(np.all(np.isfinite(np.asarray(losses))))
    return dict(step_s=best, first_s=first, program_mib=program_mib(compiled), finite=finite)


def step_rows(args, deadline):
    perceptor = step.vit_b32_perceptor() if args.model == "vit-b32" else load_perceptor(args.model)
    library = jax.tree.map(jnp.asarray, load_library("shapes").low)
    rows = []
    for population in args.populations:
        floors = {}
        for precision in PRECISIONS:
            for batching in BATCHINGS:
                row = dict(P=population, K=args.crops, batching=batching, precision=precision)
                if time.perf_counter() > deadline:
                    rows.append(dict(row, skipped="time budget spent"))
                    continue
                if precision not in floors:
                    guidance = guidance_for(perceptor, library, precision)
                    floors[precision] = clip_floor(
                        perceptor, guidance, population, args.crops, precision, args.repeats
                    )
                optim = OptimConfig(
                    num_crops=args.crops,
                    chunk_steps=args.chunk_steps,
                    batching=batching,
                    precision=precision,
                )
                row.update(chunk_row(perceptor, library, population, optim, args.repeats))
                row.update(
                    clip_s=floors[precision],
                    ratio=row["step_s"] / floors[precision],
                    peak_mib=peak_device_mib(),
                )
                rows.append(row)
                print_step_row(row)
    return rows


def print_step_row(row):
    def mib(value):
        return "-" if value is None else f"{value:.0f}"

    print(
        f"| {row['P']} | {row['K']} | {row['batching']} | {row['precision']} "
        f"| {row['step_s']:.4f} | {row['first_s']:.1f} | {row['clip_s']:.4f} "
        f"| {row['ratio']:.2f} | {mib(row['peak_mib'])} | {mib(row['program_mib'])} |",
        flush=True,
    )


def hires_rows(sizes, deadline):
    rows = []
    for size in sizes:
        if time.perf_counter() > deadline:
            rows.append(dict(size=size, skipped="time budget spent"))
            continue
        row = hires.measure(size, "shapes", 256)
        row["peak_rss_mib"] = row.pop("peak_mib")
        row["peak_device_mib"] = peak_device_mib()
        rows.append(row)
    return rows


def blend_rows(sizes, repeats, deadline):
    library = blend.patch_library()
    options = types.SimpleNamespace(
        patches=100,
        seed=0,
        repeats=repeats,
        plain_max_iterations=200,
        plain_max_iterations_2048=200,
    )
    rows = []
    for size in sizes:
        if time.perf_counter() > deadline:
            rows.append(dict(size=size, skipped="time budget spent"))
            continue
        layers_s, layers_compile_s, solves, _ = blend.benchmark_size(size, library, options)
        for name, seconds, compile_s, iterations, residual in solves:
            rows.append(
                dict(
                    size=size,
                    layers_s=layers_s,
                    layers_compile_s=layers_compile_s,
                    solver=name,
                    solve_s=seconds,
                    compile_s=compile_s,
                    iterations=iterations,
                    residual=residual,
                    peak_device_mib=peak_device_mib(),
                )
            )
    return rows


def bits_run() -> dict[str, np.ndarray]:
    """A fixed-seed per-collage float32 chunk: its losses and final parameters."""
    perceptor = load_perceptor("demo")
    library = jax.tree.map(jnp.asarray, load_library("shapes").low)
    config = CollageConfig()
    optim = OptimConfig(num_crops=4, chunk_steps=5, batching="per_collage", precision="float32")
    guidance = Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text(["a red circle"]),
        prompt_weights=jnp.ones((1,), jnp.float32),
        library=library,
        background=jnp.zeros((224, 224, 3), jnp.float32),
    )
    collages = random_population(jax.random.key(0), config, library.num_patches, 2)
    state = init_state(jax.random.key(1), collages, make_optimizer(optim))
    state, guidance = place(state, guidance, population_mesh(1))
    chunk = make_chunk(config, perceptor, optim, AugmentConfig())
    state, losses = chunk(state, guidance, jnp.asarray(optim.chunk_steps, jnp.int32))
    result = {"losses": np.asarray(losses)}
    for name, leaf in zip(state.population.params._fields, state.population.params, strict=True):
        result[name] = np.asarray(leaf)
    return result


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    same = all(a[k].tobytes() == b[k].tobytes() for k in a)
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
    return dict(same_bits=same, max_abs_difference=worst)


def bits_check() -> dict:
    here = [bits_run(), bits_run()]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cpu.npz")
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        command = [sys.executable, __file__, "--bits-reference", path]
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        with np.load(path) as saved:
            cpu = {k: saved[k] for k in saved.files}
    result = dict(
        device=jax.devices()[0].device_kind,
        repeats_on_device=compare(here[0], here[1]),
        against_cpu_process=compare(here[0], cpu),
        final_loss_device=float(np.nanmin(here[0]["losses"][-1])),
        final_loss_cpu=float(np.nanmin(cpu["losses"][-1])),
    )
    if jax.default_backend() == "cpu":
        result["note"] = "this run is on CPU: the reference is the same backend in a new process"
    return result


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--small", action="store_true", help="the CPU sizes (the default on a CPU backend)"
    )
    parser.add_argument("--model", help="vit-b32 (random weights; small: demo) or a CLIP")
    parser.add_argument("--populations", help="comma-separated P (default 2,8,32,128; small 1,2)")
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--chunk-steps", type=int, help="steps per timed chunk (3; small 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hires-sizes", help="default 4096; small 896")
    parser.add_argument("--blend-sizes", help="default 2048,4096; small 512,1024")
    parser.add_argument("--budget-s", type=float, default=390.0, help="skip rows after this")
    parser.add_argument("--no-bits", action="store_true", help="skip the bits check")
    parser.add_argument("--bits-reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    small = args.small or jax.default_backend() == "cpu"
    args.small = small

    def sizes(value, full, reduced):
        return [int(s) for s in (value or (reduced if small else full)).split(",") if s]

    args.populations = sizes(args.populations, "2,8,32,128", "1,2")
    args.hires_sizes = sizes(args.hires_sizes, "4096", "896")
    args.blend_sizes = sizes(args.blend_sizes, "2048,4096", "512,1024")
    args.chunk_steps = args.chunk_steps or (2 if small else 3)
    args.model = args.model or ("demo" if small else "vit-b32")
    return args


def main():
    args = parse_args()
    if args.bits_reference:
        np.savez(args.bits_reference, **bits_run())
        return
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = jax.devices()[0]
    machine = dict(
        backend=jax.default_backend(),
        device=device.device_kind,
        devices=jax.device_count(),
        jax=jax.__version__,
        cpus=os.cpu_count(),
        host=platform.processor() or platform.machine(),
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        small=args.small,
        model=args.model,
    )
    print(json.dumps(machine))
    bits = None if args.no_bits else bits_check()
    if bits is not None:
        print("bits:", json.dumps(bits), flush=True)
    # The render and the blends first: they are quick on an accelerator, and the step
    # table's largest populations are what the time budget may cut.
    renders = hires_rows(args.hires_sizes, deadline)
    for row in renders:
        print("hires:", json.dumps(row), flush=True)
    blends = blend_rows(args.blend_sizes, args.repeats, deadline)
    for row in blends:
        print("blend:", json.dumps(row), flush=True)
    print()
    print(
        "| P | K | batching | precision | step (s) | first call (s) | CLIP f+b (s) "
        "| step / CLIP | peak device (MiB) | program (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    steps = step_rows(args, deadline)
    for row in steps:
        if "skipped" in row:
            print(f"| {row['P']} | {row['K']} | {row['batching']} | {row['precision']} | skipped |")
    results = dict(
        machine=machine,
        steps=steps,
        hires=renders,
        blend=blends,
        bits=bits,
        elapsed_s=time.perf_counter() - started,
    )
    print(f"elapsed {results['elapsed_s']:.0f} s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
