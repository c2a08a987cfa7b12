"""The settings options that ``clipclop generate`` and ``clipclop batch`` share.

Each option defaults to None ("not given"), so a ``--config`` file's value stands unless the
option is given; ``--set key=value`` comes last.
"""

from __future__ import annotations

import argparse

GROUPS = ("translation", "rotation", "scale", "squeeze", "shear", "colour", "order")

# Options that set config fields: argparse dest -> the dotted keys it sets. They
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
    "batching": ("optim.batching",),
    "precision": ("optim.precision",),
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


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Adds --config, --set and every option that sets a ``GenerateConfig`` field."""
    gen = parser
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
        "--preset",
        metavar="NAME",
        help="a named set of settings, applied before --config: 'original' puts back the "
        "original CLIP-CLOP's values of the defaults this project changed (docs/quality.md)",
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
        "--model",
        help="CLIP: 'demo' (default; bundled, offline), a Hugging Face name such as "
        "openai/clip-vit-base-patch32, or a save_pretrained folder; several, comma-separated, "
        "each with an optional :WEIGHT (e.g. demo,PATH:0.5), guide together",
    )
    gen.add_argument(
        "--patches",
        help="patch library: 'shapes' (default), 'painted', 'photos', a folder of images, or a "
        ".npz/.npy library",
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
    gen.add_argument(
        "--num-crops", type=int, help="augmented crops per step (default 8; the original's 4)"
    )
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
        "--batching",
        choices=("auto", "per_collage", "population"),
        help="each device's collages one at a time (same result on any device count) or in "
        "one batch (faster on GPU/TPU); default auto: per_collage on CPU (docs/devices.md)",
    )
    gen.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        help="CLIP's weights and matrix products; the renderer and optimiser stay float32 "
        "(default auto: float32 on CPU, bfloat16 on GPU/TPU; docs/devices.md)",
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


def settings_from_args(args: argparse.Namespace, *, prompt: str | None = None):
    """The run's ``GenerateConfig``: --preset, then --config FILE, then the options given, then
    --set.

    Args:
      args: parsed by a parser with ``add_config_options``.
      prompt: if given, replaces whatever prompt the file or the options carry (a batch
        puts each of its prompts there later).
    """
    from clipclop_jax.runs import config_files, presets
    from clipclop_jax.runs.settings import GenerateConfig

    values = {}
    if args.preset:
        values = presets.preset_settings(args.preset)
    if args.config:
        from_file = config_files.load_config_file(args.config)
        config_files.check_settings(GenerateConfig, from_file, source=args.config)
        values = config_files.merge_nested(values, from_file)
    overrides = {}
    for dest, keys in CONFIG_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.update(dict.fromkeys(keys, value))
    overrides.update(config_files.assignments(args.set))
    if prompt is not None:
        overrides["prompt"] = prompt
    values = config_files.merge(values, overrides)
    if values.get("prompt") is None:
        raise ValueError("no prompt: give it as the first argument or as 'prompt' in --config.")
    optim = values.get("optim")
    if isinstance(optim, dict) and optim.get("optimizer") == "sgd":
        optim.setdefault("learning_rate", 0.1)  # the original's; Adam's default is 1
    return config_files.build_config(GenerateConfig, values, source="options")
