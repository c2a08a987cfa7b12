"""Tunes the Adam learning rates per parameter group with the demo CLIP.

    python benchmarks/tune_lr.py [--steps 100] [--prompts "a red circle|a blue square"]

Runs the same small collage problem (seeded) with
  1. the original's SGD (learning rate 0.1, halved at 1/3 and 2/3 of the run), for reference;
  2. Adam with every group's rate scaled by a global multiplier;
  3. at the best multiplier, each group's rate halved and doubled in turn;
and prints a Markdown table of the final best loss (mean over prompts and seeds; lower is
better) for benchmarks/README.md. The defaults in ``OptimConfig`` come from this table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from clipclop_jax import (
    CollageConfig,
    EvolutionConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_library,
    load_perceptor,
)
from clipclop_jax.config import PARAMETER_GROUPS


def score(base: GenerateConfig, optim: OptimConfig, prompts, seeds, resources) -> float:
    losses = []
    for prompt in prompts:
        for seed in seeds:
            config = dataclasses.replace(base, prompt=prompt, seed=seed, optim=optim)
            losses.append(generate(config, resources=resources).loss)
    return float(np.mean(losses))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--prompts", default="a red circle|a blue square|a yellow star")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--multipliers", default="0.25,0.5,1,2,4")
    parser.add_argument("--groups", default="translation,rotation,scale,colour")
    args = parser.parse_args()

    prompts = args.prompts.split("|")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = GenerateConfig(
        population=2,
        output_size=112,
        lowres_size=32,
        highres_size=64,
        collage=CollageConfig(canvas_height=112, canvas_width=112, num_patches=40),
        evolution=EvolutionConfig(method="none"),
    )
    start = time.time()
    library = load_library("shapes", lowres_size=32, highres_size=64)
    resources = Resources(load_perceptor("demo"), library)
    optim = OptimConfig(steps=args.steps, chunk_steps=25, num_crops=2)
    rows = []

    def run(label, optim):
        value = score(base, optim, prompts, seeds, resources)
        rows.append((label, value))
        print(f"| {label} | {value:.4f} |", flush=True)
        return value

    print(
        f"{len(prompts)} prompts x {len(seeds)} seeds, {args.steps} steps, population 2, "
        "112x112 canvas, 40 shapes, 2 crops, demo CLIP"
    )
    print()
    print("| optimiser | final best loss (mean) |")
    print("|---|---|")
    run(
        "sgd lr 0.1 (original schedule)",
        dataclasses.replace(optim, optimizer="sgd", learning_rate=0.1),
    )
    results = {}
    for multiplier in map(float, args.multipliers.split(",")):
        results[multiplier] = run(
            f"adam x{multiplier:g}", dataclasses.replace(optim, learning_rate=multiplier)
        )
    best = min(results, key=results.get)
    for group in args.groups.split(","):
        if group not in PARAMETER_GROUPS:
            raise SystemExit(f"unknown group {group!r}: use {', '.join(PARAMETER_GROUPS)}")
        default = getattr(optim, f"lr_{group}")
        for factor in (0.5, 2.0):
            changed = dataclasses.replace(
                optim, learning_rate=best, **{f"lr_{group}": default * factor}
            )
            run(f"adam x{best:g}, lr_{group} x{factor:g}", changed)
    print(f"\n{time.time() - start:.0f} s in all")


if __name__ == "__main__":
    main()
