"""Do collages read as their prompt to a CLIP that did not make them?

    python benchmarks/judge.py [--guide demo] [--judge benchmarks/judge_clip] [--steps 300]
        [--prompts 16] [--preset NAME] [--config FILE] [--set KEY=VALUE ...] [--out out/judge]

For ``--prompts`` N colour x shape prompts ("a red circle", stratified: prompt i has colour
i mod 8 and shape i mod 7, so every colour and shape comes up), makes a collage with the guide
at the README's default settings (``clipclop generate PROMPT --steps 300``: only the prompt
and the step count differ from ``GenerateConfig()``) or at the settings under test
(``--preset NAME``, ``--config FILE``, ``--set KEY=VALUE``, as ``clipclop generate`` takes
them), then reads each final collage with the judge, and with the guide itself, against all
56 prompts "a {colour} {shape}" (``zero_shot.read_colour_and_shape``). A guide that only
fools itself scores high on its own reading and low on the judge's.

``--guide`` takes any model spec ``--model`` does, an ensemble "demo,FOLDER:0.5" too (its
own reading is then its members' weighted logits); ``--judge`` takes one model: "demo", a
save_pretrained folder or a Hugging Face name (openai/clip-vit-base-patch32 as guide and a
larger CLIP as judge, where there is internet). The default judge, ``benchmarks/judge_clip``,
is a second demo CLIP of another seed and vision architecture (docs/demo_model.md, "The
judge"); it is never used for guidance.

Writes ``results.json`` (settings, per-prompt readings, accuracies), ``sheet.png`` (each
collage labelled with its prompt and what the judge read) and ``collages/NN.png`` (each final
collage, its prompt, guide and steps in its text chunks) into ``--out``, and prints a Markdown
table for benchmarks/README.md. ``--rejudge`` reads the collages a previous run left there
with another judge instead of making them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

from clipclop_jax import GenerateConfig, PerceptorError, generate, load_guides, load_perceptor
from clipclop_jax.guidance.demo_data.captions import COLOUR_NAMES
from clipclop_jax.guidance.demo_data.drawing import SHAPES
from clipclop_jax.guidance.demo_data.zero_shot import read_colour_and_shape, zero_shot_prompts
from clipclop_jax.io import atomic_write_bytes, png_text, read_rgba, save_png, to_uint8
from clipclop_jax.library.contact_sheet import save_contact_sheet
from clipclop_jax.runs import config_files, presets
from clipclop_jax.runs.resources import Resources, load_patch_library

JUDGE_FOLDER = pathlib.Path(__file__).resolve().parent / "judge_clip"
CLASSES = len(COLOUR_NAMES) * len(SHAPES)
SHEET_CELL = 160


def chosen_prompts(count: int) -> list[tuple[str, int, int]]:
    """(prompt, colour index, shape index) for prompt i = colour i mod 8, shape i mod 7: all
    distinct up to 56, and every colour and shape is used once ``count`` >= 8."""
    prompts = zero_shot_prompts()
    chosen = []
    for i in range(count):
        colour, shape = i % len(COLOUR_NAMES), i % len(SHAPES)
        chosen.append((prompts[colour * len(SHAPES) + shape], colour, shape))
    return chosen


class Reader:
    """One CLIP's zero-shot reading of [H, W, 3] images as (colour, shape) indices; for an
    ensemble guide, the reading of its members' weighted logits, as its loss weighs them."""

    def __init__(self, perceptor):
        members = getattr(perceptor, "members", (perceptor,))
        self.weights = getattr(perceptor, "weights", (1.0,))
        self.members = members
        self.texts = [member.embed_text(zero_shot_prompts()) for member in members]
        self.embed = jax.jit(
            lambda params, images, member: member.embed_images(params, images), static_argnums=2
        )

    def read(self, image: np.ndarray) -> tuple[int, int]:
        pixels = np.asarray(image, np.float32)[None]
        logits = 0.0
        for member, text, weight in zip(self.members, self.texts, self.weights, strict=True):
            embeds = np.asarray(self.embed(member.params, pixels, member), np.float32)
            logits = logits + weight * (embeds @ np.asarray(text, np.float32).T)
        # read_colour_and_shape takes embeddings; the identity as "text" passes logits through.
        colour, shape = read_colour_and_shape(logits, np.eye(logits.shape[1], dtype=np.float32))
        return int(colour[0]), int(shape[0])


def name(colour: int, shape: int) -> str:
    return f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guide", default="demo", help="CLIP that makes the collages")
    parser.add_argument("--judge", default=str(JUDGE_FOLDER), help="CLIP that reads them")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps per collage")
    parser.add_argument("--prompts", type=int, default=16, help=f"how many prompts (1-{CLASSES})")
    parser.add_argument("--out", default="out/judge", help="folder for results.json, sheet.png")
    parser.add_argument(
        "--preset", help="settings under test: a preset of generate's, e.g. original"
    )
    parser.add_argument("--config", help="settings under test: a JSON/YAML file of generate's")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting under test by its dotted name, e.g. --set optim.num_crops=8 (repeatable)",
    )
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="read the collages a previous run with the same guide, steps and prompts saved in "
        "--out/collages instead of making them",
    )
    args = parser.parse_args(argv)
    try:
        args.base = settings_under_test(args)
    except ValueError as error:
        parser.error(str(error))
    if not 1 <= args.prompts <= CLASSES:
        parser.error(f"--prompts {args.prompts}: give 1 to {CLASSES} (there are {CLASSES}).")
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: give at least 1.")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a file: give a folder.")
    # Fails here, before any model loads, if the folder cannot be written.
    os.makedirs(args.out, exist_ok=True)
    if not os.access(args.out, os.W_OK):
        parser.error(f"--out {args.out!r} is not writable: give another folder.")
    if args.rejudge:
        for index, (prompt, _, _) in enumerate(chosen_prompts(args.prompts)):
            path = collage_path(args.out, index)
            if not path.is_file() or not made_with(png_text(path), args.base, prompt):
                parser.error(
                    f"--rejudge: {path} is missing or was not made by guide {args.guide} with "
                    f"these settings for {prompt!r}: run once without --rejudge."
                )
    return args


def collage_path(out: str, index: int) -> pathlib.Path:
    return pathlib.Path(out) / "collages" / f"{index:02d}.png"


def settings_under_test(args: argparse.Namespace) -> GenerateConfig:
    """GenerateConfig(): then --preset, then --guide and --steps, then --config FILE, then
    each --set."""
    values = presets.preset_settings(args.preset) if args.preset else {}
    values = config_files.merge_nested(
        values, {"model": args.guide, "optim": {"steps": args.steps}}
    )
    if args.config:
        values = config_files.merge_nested(values, config_files.load_config_file(args.config))
    values = config_files.merge(values, config_files.assignments(args.set))
    return config_files.build_config(GenerateConfig, values, source="--config/--set")


def collage_text(config: GenerateConfig, prompt: str) -> dict[str, str]:
    """What a saved collage records of how it was made, to check before ``--rejudge``."""
    settings = dataclasses.replace(config, prompt=prompt).to_dict()
    return {"guide": config.model, "prompt": prompt, "settings": json.dumps(settings)}


def made_with(text: dict[str, str], config: GenerateConfig, prompt: str) -> bool:
    """Whether a collage's text chunks say it was made with ``config`` for ``prompt``; its
    settings are read as a config file is, so a setting added since takes its default."""
    try:
        saved = GenerateConfig.from_dict(json.loads(text.get("settings", "null")))
    except (TypeError, ValueError):
        return False
    return text.get("prompt") == prompt and saved == dataclasses.replace(config, prompt=prompt)


def main(argv=None) -> None:
    args = parse_args(argv)
    base = args.base
    start = time.time()
    try:
        judge = Reader(load_perceptor(args.judge))
        guide = load_guides(base.model)
    except PerceptorError as error:
        sys.exit(f"judge.py: {error}")
    # Loaded once: every prompt's run shares the model, library and compiled programs.
    resources = Resources(guide, load_patch_library(base))
    guide_reader = Reader(guide)
    print(f"loaded guide {args.guide} and judge {args.judge} in {time.time() - start:.1f} s")

    rows, images = [], []
    for index, (prompt, colour, shape) in enumerate(chosen_prompts(args.prompts)):
        began = time.time()
        path = collage_path(args.out, index)
        if args.rejudge:
            image = read_rgba(path)[0][..., :3].astype(np.float32) / 255.0
            loss, seconds = float(png_text(path)["loss"]), float(png_text(path)["seconds"])
        else:
            result = generate(dataclasses.replace(base, prompt=prompt), resources=resources)
            image, loss, seconds = result.image, float(result.loss), time.time() - began
            made = collage_text(base, prompt)
            save_png(path, image, text=dict(made, loss=repr(loss), seconds=f"{seconds:.1f}"))
            # Read as saved (8 bits), so --rejudge of this collage reads the same pixels.
            image = to_uint8(image).astype(np.float32) / 255.0
        judged, own = judge.read(image), guide_reader.read(image)
        rows.append(
            dict(
                prompt=prompt,
                colour=COLOUR_NAMES[colour],
                shape=SHAPES[shape],
                judge=name(*judged),
                guide=name(*own),
                judge_colour_ok=judged[0] == colour,
                judge_shape_ok=judged[1] == shape,
                guide_colour_ok=own[0] == colour,
                guide_shape_ok=own[1] == shape,
                loss=loss,
                seconds=round(seconds, 1),
            )
        )
        images.append(image)
        print(
            f"[{index + 1}/{args.prompts}] {prompt!r}: judge reads {name(*judged)!r}, guide "
            f"reads {name(*own)!r} ({seconds:.1f} s)",
            flush=True,
        )

    def accuracy(key: str) -> float:
        return float(np.mean([row[key] for row in rows]))

    summary = {
        f"{who}_{what}": accuracy(f"{who}_{what}_ok")
        for who in ("judge", "guide")
        for what in ("colour", "shape")
    }
    results = dict(
        guide=args.guide,
        judge=args.judge,
        steps=base.optim.steps,
        prompts=args.prompts,
        settings_under_test=dict(preset=args.preset, config=args.config, set=args.set),
        config=base.to_dict(),
        accuracy=summary,
        seconds=round(time.time() - start, 1),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.default_backend()})",
        rows=rows,
    )
    out = pathlib.Path(args.out)
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    squares = [
        np.concatenate([to_uint8(image), np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
        for image in images
    ]
    captions = [f"{row['prompt']}\njudge: {row['judge']}" for row in rows]
    save_contact_sheet(out / "sheet.png", squares, len(squares), cell=SHEET_CELL, captions=captions)

    print()
    tested = " ".join(
        ([f"--preset {args.preset}"] if args.preset else [])
        + ([f"--config {args.config}"] if args.config else [])
        + [f"--set {a}" for a in args.set]
    )
    print(
        f"guide {args.guide}, judge {args.judge}, {base.optim.steps} steps, {args.prompts} prompts"
        + (f", {tested}" if tested else ", README defaults")
    )
    print()
    print("| reader | colour top-1 | shape top-1 |")
    print("|---|---|---|")
    for who in ("judge", "guide"):
        print(f"| {who} | {summary[who + '_colour']:.0%} | {summary[who + '_shape']:.0%} |")
    print()
    print("| prompt | judge reads | guide reads |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['prompt']} | {row['judge']} | {row['guide']} |")
    print(
        f"\n{time.time() - start:.0f} s in all; wrote {out / 'results.json'}, {out / 'sheet.png'}"
    )


if __name__ == "__main__":
    main()
