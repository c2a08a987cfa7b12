"""Command line: argv -> config -> api. Nothing below api.py knows about the terminal."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from clipclop_jax.cli_batch import add_batch_parser, run_batch
from clipclop_jax.cli_patches import add_patches_parser, run_patches
from clipclop_jax.version import __version__

GROUPS = ("translation", "rotation", "scale", "squeeze", "shear", "colour", "order")

# `generate` options that set config fields: argparse dest -> the dotted keys it sets. They
# default to None ("not given"), so a --config file's value stands unless an option is given.
CONFIG_OPTIONS = {
    "prompt": ("prompt",),
    "region_prompts": ("region_prompts",),
    "tiles": ("tiles",),
    "tile_prompts": ("tile_prompts",),
    "tile_template": ("tile_template",),
    "background_use": ("background_use",),
    "blend": ("blend",),
    "model": ("model",),
    "patches": ("patches",),
    "steps": ("optim.steps",),
    "population": ("population",),
    "num_patches": ("collage.num_patches",),
    "size": ("collage.canvas_height", "collage.canvas_width"),
    "output_size": ("output_size",),
    "seed": ("seed",),
    "render_mode": ("collage.render_mode",),
    "colour_space": ("collage.colour_space",),
    "background": ("background",),
    "optimizer": ("optim.optimizer",),
    "learning_rate": ("optim.learning_rate",),
    **{f"lr_{group}": (f"optim.lr_{group}",) for group in GROUPS},
    "num_crops": ("optim.num_crops",),
    "use_augmentations": ("optim.use_augmentations",),
    "initial_search": ("optim.initial_search_size",),
    "chunk_steps": ("optim.chunk_steps",),
    "evolution": ("evolution.method",),
    "evolution_frequency": ("evolution.frequency",),
    "num_devices": ("num_devices",),
    "max_library_patches": ("max_library_patches",),
    "lowres_size": ("lowres_size",),
    "highres_size": ("highres_size",),
    "checkpoint_every": ("output.checkpoint_every",),
    "gif": ("output.gif",),
    "mp4": ("output.mp4",),
    "frame_every": ("output.frame_every",),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipclop",
        description="CLIP-guided collage (CLIP-CLOP) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"clipclop-jax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_generate_parser(commands)
    res = commands.add_parser(
        "resume",
        help="continue an interrupted run",
        description="Continue the run in DIR from its newest checkpoint, with the settings "
        "saved there. See docs/runs.md.",
    )
    res.add_argument("dir", metavar="DIR", help="the run's output folder (its --out)")
    res.add_argument("--quiet", action="store_true", help="no progress bar")
    bl = commands.add_parser(
        "blend",
        help="blend a finished run's collage again",
        description="Render a finished run's best collage (DIR/params.npz) at its output size "
        "with gradient-domain blending of the seams; writes DIR/collage-MODE.png.",
    )
    bl.add_argument("dir", metavar="DIR", help="the run's output folder (its --out)")
    bl.add_argument("--mode", choices=("poisson", "mixed"), default="poisson", help="blend mode")
    add_batch_parser(commands)
    add_patches_parser(commands)
    return parser


def add_generate_parser(commands) -> argparse.ArgumentParser:
    gen = commands.add_parser(
        "generate",
        help="make a collage from a prompt",
        description="Optimise a population of collages towards a prompt; write the best one. "
        "Settings come from --config FILE (if given), then the options, then --set.",
    )
    gen.add_argument(
        "prompt",
        nargs="?",
        help='weighted prompts, e.g. "a cat made of leaves:1 | blurry:-0.5" (or "prompt" '
        "in --config)",
    )
    gen.add_argument("--out", required=True, help="output folder (new or empty)")
    gen.add_argument(
        "--region-prompts",
        metavar="GRID",
        help='compositional prompts, one per region: "sky | sun | sky / tree | field | chicken" '
        "(columns by '|', rows by '/'; any grid), each scored on its own crop",
    )
    gen.add_argument(
        "--tiles",
        metavar="COLSxROWS",
        help="a large collage of tiles, e.g. 3x2, each optimised with its own prompt "
        "(docs/tiles.md)",
    )
    gen.add_argument(
        "--tile-prompts",
        metavar="GRID",
        help='one prompt per tile: "a | b | c / d | e | f" (default: the prompt for every tile)',
    )
    gen.add_argument(
        "--tile-template",
        metavar="TEXT",
        help="also give each tile 3x3 region prompts from this template and its tile's prompt, "
        'e.g. "close-up of {}"',
    )
    gen.add_argument(
        "--background-use",
        choices=("global", "local"),
        help="with tiles: stretch the background over the whole collage (default) or repeat it "
        "in every tile",
    )
    gen.add_argument(
        "--blend",
        choices=("poisson", "mixed", "none"),
        help="gradient-domain blending of the seams in the final render (default none; "
        "docs/blending.md)",
    )
    gen.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML or JSON file, or from a run's config.json or collage.png",
    )
    gen.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any setting by its dotted name, e.g. --set optim.gradient_clipping=5 (repeatable)",
    )
    gen.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty --out, replacing its run"
    )
    gen.add_argument(
        "--model",
        help="CLIP: 'demo' (default; bundled, offline), a Hugging Face name such as "
        "openai/clip-vit-base-patch32, or a save_pretrained folder",
    )
    gen.add_argument(
        "--patches",
        help="patch library: 'shapes' (default), 'photos', a folder of images, or a .npz/.npy "
        "library",
    )
    gen.add_argument("--steps", type=int, help="optimisation steps (default 1000)")
    gen.add_argument("--population", type=int, help="collages optimised in parallel (default 2)")
    gen.add_argument("--num-patches", type=int, help="patches per collage (default 100)")
    gen.add_argument("--size", type=int, help="optimisation canvas side in pixels (default 224)")
    gen.add_argument(
        "--output-size", type=int, help="longest side of the final render (default: 4x --size)"
    )
    gen.add_argument("--seed", type=int, help="random seed (default 0)")
    gen.add_argument(
        "--render-mode",
        choices=("transparency", "masked_transparency", "opacity"),
        help="how overlapping patches combine (default masked_transparency)",
    )
    gen.add_argument(
        "--colour-space",
        choices=("rgb", "hsv", "none"),
        help="per-patch colour transform (default rgb)",
    )
    gen.add_argument(
        "--background",
        help="'black' (default), 'white', '#rrggbb', 'r,g,b', 'noise', or an image path",
    )
    gen.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        help="adam (default; tuned per parameter group) or sgd (the original's schedule)",
    )
    gen.add_argument(
        "--learning-rate",
        type=float,
        help="sgd: the learning rate (default 0.1, the original's); adam: a multiplier of "
        "the per-group rates (default 1)",
    )
    for group in GROUPS:
        gen.add_argument(f"--lr-{group}", type=float, help=f"Adam learning rate of {group}")
    gen.add_argument("--num-crops", type=int, help="augmented crops per step (default 4)")
    gen.add_argument(
        "--no-augment",
        dest="use_augmentations",
        action="store_const",
        const=False,
        help="score the plain render, no augmentations",
    )
    gen.add_argument(
        "--initial-search",
        type=int,
        help="random collages tried per individual before optimising (default 1: no search)",
    )
    gen.add_argument(
        "--chunk-steps", type=int, help="steps per compiled chunk (progress interval; default 10)"
    )
    gen.add_argument(
        "--evolution",
        choices=("microbial", "es", "none"),
        help="genetic algorithm across the population (default microbial; docs/evolution.md)",
    )
    gen.add_argument(
        "--evolution-frequency", type=int, help="steps between generations (default 100)"
    )
    gen.add_argument(
        "--num-devices",
        type=int,
        help="devices to split the population over (default: as many as divide it)",
    )
    gen.add_argument(
        "--max-library-patches",
        type=int,
        help="use only this many patches of a large library (seeded random choice)",
    )
    gen.add_argument(
        "--lowres-size", type=int, help="library square side for optimising (default 64)"
    )
    gen.add_argument(
        "--highres-size", type=int, help="library square side for the final render (default 256)"
    )
    gen.add_argument(
        "--checkpoint-every",
        type=int,
        help="steps between checkpoints (default 100; 0: only at the end and on Ctrl-C)",
    )
    gen.add_argument(
        "--gif", action="store_const", const=True, help="write evolution.gif of the best collage"
    )
    gen.add_argument(
        "--mp4", action="store_const", const=True, help="write evolution.mp4 of the best collage"
    )
    gen.add_argument("--frame-every", type=int, help="steps between GIF/MP4 frames (default 10)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    return gen


def config_from_args(args: argparse.Namespace):
    """The run's ``GenerateConfig``: --config FILE, then the options given, then --set."""
    from clipclop_jax import config_files
    from clipclop_jax.api import GenerateConfig

    values = {}
    if args.config:
        values = config_files.load_config_file(args.config)
        config_files.check_settings(GenerateConfig, values, source=args.config)
    overrides = {}
    for dest, keys in CONFIG_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides.update(dict.fromkeys(keys, value))
    overrides.update(config_files.assignments(args.set))
    values = config_files.merge(values, overrides)
    if values.get("prompt") is None:
        raise ValueError("no prompt: give it as the first argument or as 'prompt' in --config.")
    optim = values.get("optim")
    if isinstance(optim, dict) and optim.get("optimizer") == "sgd":
        optim.setdefault("learning_rate", 0.1)  # the original's; Adam's default is 1
    return config_files.build_config(GenerateConfig, values, source="options")


def progress_bar(total: int, enabled: bool, *, initial: int = 0):
    """A tqdm bar driven by the API's progress callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True)

    def update(step: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(
            best=f"{metrics['best_loss']:.4f}", speed=f"{metrics['steps_per_second']:.2f}/s"
        )

    return bar, update


def run_generate(args: argparse.Namespace) -> int:
    from clipclop_jax.api import generate
    from clipclop_jax.tiled import generate_tiled
    from clipclop_jax.tiles import TileGrid

    config = config_from_args(args)
    tiles = 1 if config.tiles is None else TileGrid.parse(config.tiles).count
    run = generate if config.tiles is None else generate_tiled
    return drive(
        lambda progress_fn, should_stop: run(
            config,
            out_dir=args.out,
            progress_fn=progress_fn,
            overwrite=args.overwrite,
            should_stop=should_stop,
        ),
        total=config.optim.steps * tiles,
        quiet=args.quiet,
    )


def run_blend(args: argparse.Namespace) -> int:
    from clipclop_jax.api import blend_run

    path = blend_run(args.dir, args.mode)
    print(f"wrote {path}")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from clipclop_jax.api import resume
    from clipclop_jax.checkpoint import latest_checkpoint, read_meta

    total, initial = None, 0
    path = latest_checkpoint(args.dir)
    if path is not None:
        try:
            meta = read_meta(path)
            total, initial = meta["config"]["optim"]["steps"], meta["step"]
        except Exception:  # resume() says what is wrong with the file; the bar has no total
            pass
    return drive(
        lambda progress_fn, should_stop: resume(
            args.dir, progress_fn=progress_fn, should_stop=should_stop
        ),
        total=total,
        initial=initial,
        quiet=args.quiet,
    )


def drive(call, *, total: int | None, initial: int = 0, quiet: bool = False) -> int:
    """Runs ``call(progress_fn, should_stop)`` under a progress bar; the first Ctrl-C or
    SIGTERM stops it after the current chunk (a checkpoint is written), the second at once."""
    from clipclop_jax.interrupt import RunInterrupted, StopOnSignal

    bar, update = progress_bar(total, not quiet, initial=initial)
    with StopOnSignal(on_first=_say_stopping) as stop, bar:
        try:
            result = call(update, stop.is_set)
        except RunInterrupted as stopped:
            bar.close()
            _report_stop(stopped, stop.signum)
            return stop.exit_code
    print(f"best loss {result.loss:.4f}; wrote {result.out_dir}/collage.png")
    return 0


def _say_stopping(signum: int) -> None:
    # Runs beside the main thread (interrupt.StopOnSignal): a plain write, no print().
    name = signal.Signals(signum).name
    os.write(2, f"\nclipclop: {name}: stopping after this chunk; again to quit at once.\n".encode())


def _report_stop(stopped, signum: int | None) -> None:
    name = f" ({signal.Signals(signum).name})" if signum else ""
    lines = [f"stopped at step {stopped.step} of {stopped.total}{name}."]
    if stopped.checkpoint:
        lines.append(f"checkpoint: {stopped.checkpoint}")
        lines.append(f"best collage so far: {stopped.collage}")
        lines.append(f"continue with: clipclop resume {shlex.quote(stopped.out_dir)}")
    for line in lines:
        print(f"clipclop: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "resume":
            return run_resume(args)
        if args.command == "blend":
            return run_blend(args)
        if args.command == "batch":
            return run_batch(args)
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
