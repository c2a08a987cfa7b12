"""``clipclop batch PROMPTS.txt --out DIR``: argv -> ``batch.generate_batch``, with a progress bar.

``main.py`` adds the subcommand with ``add_batch_parser(subparsers)`` and runs it with
``run_batch(args)``; errors are ``ValueError``/``OSError`` with one-line messages. Settings
come as for ``clipclop generate``: ``--config FILE``, then the options below, then ``--set
KEY=VALUE`` (any setting by its dotted name).
"""

from __future__ import annotations

import argparse
import sys

from clipclop_jax.cli.options import add_config_options, settings_from_args


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
    batch.add_argument(
        "prompts", metavar="PROMPTS", nargs="?", help="text file, one prompt per line"
    )
    batch.add_argument("--out", required=True, help="output folder")
    batch.add_argument(
        "--overwrite",
        action="store_true",
        help="run every prompt again, replacing the runs of an earlier batch in --out "
        "(without it, finished prompts are skipped and stopped ones resumed)",
    )
    batch.add_argument(
        "--shard",
        metavar="I/N",
        help="run only part I of N (counted from 0): prompts I, I+N, I+2N, ... For job "
        "arrays (SLURM --array=0-N-1 with --shard $SLURM_ARRAY_TASK_ID/N); each part writes "
        "summary-shard-I-of-N.csv/.json; then --merge",
    )
    batch.add_argument(
        "--merge",
        action="store_true",
        help="gather the shards' summaries in --out into summary.csv, summary.json and "
        "contact-sheet.png (no PROMPTS needed)",
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(batch)
    return batch


# The template config's prompt; generate_batch puts each prompt of the file in its place.
PLACEHOLDER_PROMPT = "placeholder"


def config_from_args(args: argparse.Namespace):
    """The batch's settings as a ``GenerateConfig`` whose prompt is a placeholder."""
    config = settings_from_args(args, prompt=PLACEHOLDER_PROMPT)
    if config.tiles is not None:
        raise ValueError("a batch makes single-canvas collages: drop --tiles (or 'tiles').")
    return config


def run_batch(args: argparse.Namespace) -> int:
    """Runs the batch; 0 if every prompt succeeded, 1 if any failed."""
    from tqdm.auto import tqdm

    from clipclop_jax.runs.batch import (
        SUMMARY_CSV,
        generate_batch,
        merge_shards,
        parse_shard,
        read_prompts,
    )

    if args.merge:
        if args.shard is not None:
            raise ValueError("--merge gathers every shard: drop --shard.")
        items = merge_shards(args.out)
        failed = sum(not item.ok for item in items)
        print(
            f"{len(items) - failed} of {len(items)} prompts made collages; summary in "
            f"{args.out}/{SUMMARY_CSV}"
        )
        return 1 if failed else 0
    shard = None if args.shard is None else parse_shard(args.shard)  # before any work
    if args.prompts is None:
        raise ValueError("clipclop batch needs PROMPTS (a text file), or --merge.")
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
            prompts,
            config,
            args.out,
            progress_fn=update,
            overwrite=args.overwrite,
            shard=shard,
        )
    failed = [item for item in items if not item.ok]
    for item in failed:
        print(f"clipclop: prompt {item.index + 1} {item.prompt!r}: {item.error}", file=sys.stderr)
    done = len(items) - len(failed)
    name = SUMMARY_CSV if shard is None else f"summary{shard.suffix}.csv"
    summary = f"{args.out}/{name}"
    print(f"{done} of {len(items)} prompts made collages; summary in {summary}")
    return 1 if failed else 0
