"""Command line: argv -> config -> api. Nothing below api.py knows about the terminal."""

from __future__ import annotations

import argparse
import sys

from clipclop_jax.cli_patches import add_patches_parser, run_patches
from clipclop_jax.version import __version__

GROUPS = ("translation", "rotation", "scale", "squeeze", "shear", "colour", "order")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipclop",
        description="CLIP-guided collage (CLIP-CLOP) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"clipclop-jax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = commands.add_parser(
        "generate",
        help="make a collage from a prompt",
        description="Optimise a population of collages towards a prompt; write the best one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("prompt", help='weighted prompts, e.g. "a cat made of leaves:1 | blurry:-0.5"')
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument(
        "--model",
        default="demo",
        help="CLIP: 'demo' (bundled, offline), a Hugging Face name such as "
        "openai/clip-vit-base-patch32, or a save_pretrained folder",
    )
    gen.add_argument(
        "--patches",
        default="shapes",
        help="patch library: 'shapes', 'photos', a folder of images, or a .npz/.npy library",
    )
    gen.add_argument("--steps", type=int, default=1000, help="optimisation steps")
    gen.add_argument("--population", type=int, default=2, help="collages optimised in parallel")
    gen.add_argument("--num-patches", type=int, default=100, help="patches per collage")
    gen.add_argument("--size", type=int, default=224, help="optimisation canvas side (pixels)")
    gen.add_argument(
        "--output-size",
        type=int,
        default=None,
        help="longest side of the final render (default: 4x --size)",
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument(
        "--render-mode",
        default="masked_transparency",
        choices=("transparency", "masked_transparency", "opacity"),
        help="how overlapping patches combine",
    )
    gen.add_argument(
        "--colour-space",
        default="rgb",
        choices=("rgb", "hsv", "none"),
        help="per-patch colour transform",
    )
    gen.add_argument(
        "--background",
        default="black",
        help="'black', 'white', '#rrggbb', 'r,g,b', 'noise', or an image path",
    )
    gen.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "sgd"),
        help="adam (tuned per parameter group) or sgd (the original's schedule)",
    )
    gen.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="sgd: the learning rate (default 0.1, the original's); adam: a multiplier of "
        "the per-group rates (default 1)",
    )
    for group in GROUPS:
        gen.add_argument(
            f"--lr-{group}", type=float, default=None, help=f"Adam learning rate of {group}"
        )
    gen.add_argument("--num-crops", type=int, default=4, help="augmented crops per step")
    gen.add_argument(
        "--no-augment", action="store_true", help="score the plain render, no augmentations"
    )
    gen.add_argument(
        "--initial-search",
        type=int,
        default=1,
        help="random collages tried per individual before optimising (1: no search)",
    )
    gen.add_argument(
        "--chunk-steps", type=int, default=10, help="steps per compiled chunk (progress interval)"
    )
    gen.add_argument(
        "--evolution",
        default="microbial",
        choices=("microbial", "es", "none"),
        help="genetic algorithm across the population (see docs/evolution.md)",
    )
    gen.add_argument(
        "--evolution-frequency", type=int, default=100, help="steps between generations"
    )
    gen.add_argument(
        "--num-devices",
        type=int,
        default=None,
        help="devices to split the population over (default: as many as divide it)",
    )
    gen.add_argument(
        "--max-library-patches",
        type=int,
        default=None,
        help="use only this many patches of a large library (seeded random choice)",
    )
    gen.add_argument(
        "--lowres-size", type=int, default=64, help="library square side for optimising"
    )
    gen.add_argument(
        "--highres-size", type=int, default=256, help="library square side for the final render"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    add_patches_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace):
    from clipclop_jax.api import GenerateConfig
    from clipclop_jax.config import CollageConfig, OptimConfig
    from clipclop_jax.evolution import EvolutionConfig

    collage = CollageConfig(
        canvas_height=args.size,
        canvas_width=args.size,
        num_patches=args.num_patches,
        render_mode=args.render_mode,
        colour_space=args.colour_space,
    )
    optim_values = dict(
        optimizer=args.optimizer,
        steps=args.steps,
        num_crops=args.num_crops,
        use_augmentations=not args.no_augment,
        initial_search_size=args.initial_search,
        chunk_steps=args.chunk_steps,
    )
    if args.learning_rate is not None:
        optim_values["learning_rate"] = args.learning_rate
    elif args.optimizer == "sgd":
        optim_values["learning_rate"] = 0.1
    for group in GROUPS:
        value = getattr(args, f"lr_{group}")
        if value is not None:
            optim_values[f"lr_{group}"] = value
    evolution = EvolutionConfig(method=args.evolution, frequency=args.evolution_frequency)
    return GenerateConfig(
        prompt=args.prompt,
        model=args.model,
        patches=args.patches,
        population=args.population,
        seed=args.seed,
        output_size=args.output_size,
        background=args.background,
        num_devices=args.num_devices,
        max_library_patches=args.max_library_patches,
        lowres_size=args.lowres_size,
        highres_size=args.highres_size,
        collage=collage,
        evolution=evolution,
        optim=OptimConfig(**optim_values),
    )


def progress_bar(total: int, enabled: bool):
    """A tqdm bar driven by the API's progress callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)

    def update(step: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(
            best=f"{metrics['best_loss']:.4f}", speed=f"{metrics['steps_per_second']:.2f}/s"
        )

    return bar, update


def run_generate(args: argparse.Namespace) -> int:
    from clipclop_jax.api import generate

    config = config_from_args(args)
    bar, update = progress_bar(config.optim.steps, not args.quiet)
    with bar:
        result = generate(config, out_dir=args.out, progress_fn=update)
    print(f"best loss {result.loss:.4f}; wrote {result.out_dir}/collage.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "patches":
            return run_patches(args)
    except (ValueError, OSError) as error:
        # Our errors are one line that names the problem and the fix; say just that.
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"clipclop: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipclop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
