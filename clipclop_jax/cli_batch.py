"""``clipclop batch PROMPTS.txt --out DIR``: argv -> ``batch.generate_batch``, with a progress bar.

``cli.py`` adds the subcommand with ``add_batch_parser(subparsers)`` and runs it with
``run_batch(args)``; errors are ``ValueError``/``OSError`` with one-line messages. Settings
come as for ``clipclop generate``: ``--config FILE``, then the options below, then ``--set
KEY=VALUE`` (any setting by its dotted name).
"""

from __future__ import annotations

import argparse
import sys

# Options that set config fields: argparse dest -> the dotted keys it sets. They default to
# None ("not given"), so a --config file's value stands unless an option is given.
CONFIG_OPTIONS = {
    "model": ("model",),
    "patches": ("patches",),
    "steps": ("optim.steps",),
    "population": ("population",),
    "num_patches": ("collage.num_patches",),
    "size": ("collage.canvas_height", "collage.canvas_width"),
    "output_size": ("output_size",),
    "seed": ("seed",),
    "num_crops": ("optim.num_crops",),
    "chunk_steps": ("optim.chunk_steps",),
    "evolution": ("evolution.method",),
    "evolution_frequency": ("evolution.frequency",),
    "num_devices": ("num_devices",),
    "lowres_size": ("lowres_size",),
    "highres_size": ("highres_size",),
}


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``batch`` to the ``clipclop`` subcommands; returns its parser."""
    batch = subparsers.add_parser(
        "batch",
        help="make one collage per prompt of a file",
        description="Make one collage per line of PROMPTS (blank lines and # comments "
        "skipped), all with the same settings and one compiled program. Each prompt gets a "
        "folder DIR/NNN-slug; DIR/summary.csv and summary.json list prompt, status, loss, "
        "image and time. A failing prompt is recorded and the others go on. Settings come "
        "from --config FILE (if given), then the options, then --set.",
    )
    batch.set_defaults(command="batch")
    batch.add_argument("prompts", metavar="PROMPTS", help="text file, one prompt per line")
    batch.add_argument("--out", required=True, help="output folder")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="reuse the prompts' folders of an earlier batch in --out, replacing their runs",
    )
    batch.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML or JSON file, or from a run's config.json or collage.png "
        "(its prompt is ignored)",
    )
    batch.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any setting by its dotted name, e.g. --set optim.num_crops=2 (repeatable)",
    )
    batch.add_argument("--model", help="CLIP: 'demo' (default), a hub name or a folder")
    batch.add_argument("--patches", help="patch library (default 'shapes')")
    batch.add_argument("--steps", type=int, help="optimisation steps per prompt (default 1000)")
    batch.add_argument("--population", type=int, help="collages optimised in parallel (default 2)")
    batch.add_argument("--num-patches", type=int, help="patches per collage (default 100)")
    batch.add_argument("--size", type=int, help="optimisation canvas side in pixels (default 224)")
    batch.add_argument(
        "--output-size", type=int, help="longest side of the final render (default: 4x --size)"
    )
    batch.add_argument("--seed", type=int, help="random seed, the same for every prompt")
    batch.add_argument("--num-crops", type=int, help="augmented crops per step (default 4)")
    batch.add_argument("--chunk-steps", type=int, help="steps per compiled chunk (default 10)")
    batch.add_argument(
        "--evolution",
        choices=("microbial", "es", "none"),
        help="genetic algorithm across the population (default microbial; docs/evolution.md)",
    )
    batch.add_argument(
        "--evolution-frequency", type=int, help="steps between generations (default 100)"
    )
    batch.add_argument(
        "--num-devices",
        type=int,
        help="devices to split the population over (default: as many as divide it)",
    )
    batch.add_argument("--lowres-size", type=int, help="library side for optimising (default 64)")
    batch.add_argument(
        "--highres-size", type=int, help="library side for the final render (default 256)"
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    return batch


# The template config's prompt; generate_batch puts each prompt of the file in its place.
PLACEHOLDER_PROMPT = "placeholder"


def config_from_args(args: argparse.Namespace):
    """The batch's settings as a ``GenerateConfig`` whose prompt is a placeholder."""
    from clipclop_jax import config_files
    from clipclop_jax.api import GenerateConfig

    values = config_files.load_config_file(args.config) if args.config else {}
    overrides = {}
    for dest, keys in CONFIG_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides.update(dict.fromkeys(keys, value))
    overrides.update(config_files.assignments(args.set))
    overrides["prompt"] = PLACEHOLDER_PROMPT  # the prompts come from the file
    values = config_files.merge(values, overrides)
    optim = values.get("optim")
    if isinstance(optim, dict) and optim.get("optimizer") == "sgd":
        optim.setdefault("learning_rate", 0.1)  # the original's; Adam's default is 1
    return config_files.build_config(GenerateConfig, values, source=args.config or "settings")


def run_batch(args: argparse.Namespace) -> int:
    """Runs the batch; 0 if every prompt succeeded, 1 if any failed."""
    from tqdm.auto import tqdm

    from clipclop_jax.batch import SUMMARY_CSV, generate_batch, read_prompts

    prompts = read_prompts(args.prompts)
    config = config_from_args(args)
    steps = config.optim.steps
    bar = tqdm(total=steps * len(prompts), unit="step", disable=args.quiet, dynamic_ncols=True)

    def update(index: int, step: int, metrics: dict[str, float]) -> None:
        bar.update(index * steps + step - bar.n)
        bar.set_postfix(
            prompt=f"{index + 1}/{len(prompts)}",
            best=f"{metrics['best_loss']:.4f}",
            speed=f"{metrics['steps_per_second']:.2f}/s",
        )

    with bar:
        items = generate_batch(
            prompts, config, args.out, progress_fn=update, overwrite=args.overwrite
        )
    failed = [item for item in items if not item.ok]
    for item in failed:
        print(f"clipclop: prompt {item.index + 1} {item.prompt!r}: {item.error}", file=sys.stderr)
    done = len(items) - len(failed)
    summary = f"{args.out}/{SUMMARY_CSV}"
    print(f"{done} of {len(items)} prompts made collages; summary in {summary}")
    return 1 if failed else 0
