"""Does evolution help the gradient search? The same runs with and without it, on the demo CLIP.

Every (prompt, seed) is run once per evolution method with the same budget (population,
steps) and the same start (initial collages and step keys); a run's result is the loss of
the collage it returns, scored on its plain render (no random crops), so the numbers compare
collages and not lucky crops. Prints a markdown table for docs/evolution.md.

  python benchmarks/evolution.py                       # the test's setting, 4 seeds
  python benchmarks/evolution.py --crops 1             # fitness from one random crop
  python benchmarks/evolution.py --patches shapes --colour-space rgb
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

from clipclop_jax import (  # noqa: E402
    CollageConfig,
    EvolutionConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_library,
    load_perceptor,
    xla_options,
)
from clipclop_jax.guidance.objective import make_collage_loss  # noqa: E402
from clipclop_jax.runs.setup import prepare_run  # noqa: E402


def plain_scorer(config: GenerateConfig, resources: Resources):
    """``score(config, collage) -> float``: a collage's loss on its plain render, as the run
    computes it minus the crops. Compiled once for every run of ``config``'s shapes."""
    optim = dataclasses.replace(config.optim, use_augmentations=False)
    loss = xla_options.jit(
        make_collage_loss(config.collage, resources.perceptor, optim, config.augment)
    )

    def score(run_config: GenerateConfig, collage) -> float:
        guidance = prepare_run(run_config, resources).guidance
        collage = jax.device_get(collage)
        value, _ = loss(collage.params, collage.patch_index, jax.random.key(0), guidance)
        return float(value)

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="a red star,a blue cross,a green triangle")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--methods", default="es,microbial,none")
    parser.add_argument("--patches", default="painted")
    parser.add_argument("--colour-space", default="none")
    parser.add_argument("--num-patches", type=int, default=2)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--frequency", type=int, default=5)
    parser.add_argument("--crops", type=int, default=0, help="0: plain renders")
    args = parser.parse_args()

    library = load_library(
        args.patches, lowres_size=32, highres_size=64, cache_dir=tempfile.mkdtemp()
    )
    resources = Resources(load_perceptor("demo"), library)
    methods = args.methods.split(",")
    base = GenerateConfig(
        population=args.population,
        patches=args.patches,
        output_size=32,
        lowres_size=32,
        highres_size=64,
        collage=CollageConfig(
            canvas_height=64,
            canvas_width=64,
            num_patches=args.num_patches,
            colour_space=args.colour_space,
        ),
        optim=OptimConfig(
            steps=args.steps,
            chunk_steps=50,
            num_crops=max(args.crops, 1),
            use_augmentations=args.crops > 0,
        ),
        evolution=EvolutionConfig(frequency=args.frequency),
    )
    plain_loss = plain_scorer(base, resources)
    print("| prompt | seed | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    scores = {m: [] for m in methods}
    for prompt in args.prompts.split(","):
        for seed in range(args.seeds):
            cells = []
            for method in methods:
                config = dataclasses.replace(
                    base,
                    prompt=prompt,
                    seed=seed,
                    evolution=dataclasses.replace(base.evolution, method=method),
                )
                result = generate(config, resources=resources)
                score = plain_loss(config, result.collage)
                scores[method].append(score)
                shown = "+".join(
                    library.names[i].split("/")[-1] for i in result.collage.patch_index
                )
                cells.append(f"{score:.3f} ({shown})" if args.num_patches <= 2 else f"{score:.3f}")
            print(f"| {prompt} | {seed} | " + " | ".join(cells) + " |", flush=True)
    mean = " | ".join(f"{np.mean(scores[m]):.3f}" for m in methods)
    print(f"| **mean** | | {mean} |")
    if "none" in scores:
        base_scores = np.array(scores["none"])
        wins = " | ".join(
            f"{int(np.sum(np.array(scores[m]) < base_scores - 1e-4))}/{len(base_scores)}"
            for m in methods
        )
        print(f"| **better than none** | | {wins} |")


if __name__ == "__main__":
    main()
