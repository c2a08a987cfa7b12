"""``clipclop patches build``: argv -> ``maker.build_library``, with a progress bar.

``main.py`` adds the subcommand with ``add_patches_parser(subparsers)`` and runs it with
``run_patches(args)``; errors are ``ValueError``/``OSError`` with one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys

from clipclop_jax.library.segment import MODEL_PREFIX, SEGMENTATIONS

# Skipped images listed on the terminal; --skipped-log gets them all.
MAX_LISTED = 20


class PatchesCommandError(ValueError):
    """A ``clipclop patches`` option is wrong; the message says how to fix it."""


def add_patches_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``patches`` (with ``build``) to the ``clipclop`` subcommands; returns its parser."""
    patches = subparsers.add_parser(
        "patches",
        help="make patch libraries",
        description="Make and inspect patch libraries (.npz) for --patches.",
    )
    patches.set_defaults(command="patches", patches_help=patches.print_help)
    actions = patches.add_subparsers(dest="patches_command", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build a library from photos, folders or TFDS datasets",
        description="Segment images into cut-outs, curate them and write a library .npz that "
        "`clipclop generate --patches LIB.npz` loads. See docs/libraries.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a folder, image files, an original Arnheim .npy patch file, a library .npz, or "
        "tfds:NAME[:SPLIT] (e.g. tfds:oxford_flowers102:train[:500])",
    )
    build.add_argument("--out", required=True, help="library file to write (.npz)")
    seg = build.add_argument_group("segmentation")
    seg.add_argument(
        "--segmentation",
        default="auto",
        metavar="{" + ",".join(SEGMENTATIONS) + ",model:NAME_OR_PATH}",
        help="auto: the file's alpha, else background removal if the border is one colour, "
        "else superpixels; alpha: the file's transparency; background: remove a uniform "
        "background; superpixels: SLIC regions; graph: Felzenszwalb regions; whole: keep "
        "each image as a rectangle; model:NAME_OR_PATH: a Hugging Face segmentation model by "
        "hub name (e.g. model:nvidia/segformer-b0-finetuned-ade-512-512) or save_pretrained "
        "folder, one cut-out per object (needs pip install 'clipclop-jax[segment]')",
    )
    seg.add_argument(
        "--classes",
        default=None,
        metavar="NAME,NAME",
        help="with model:...: only these classes of the model (e.g. person,dog); default: "
        "every class but background",
    )
    seg.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="with model:...: objects the model is less sure of (0-1) are dropped; 0.5 if "
        "not given",
    )
    seg.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="with model:...: images per forward pass (on the GPU when there is one); 8 if "
        "not given",
    )
    seg.add_argument(
        "--model",
        default=None,
        metavar="MODULE:NAME",
        help="a learned segmentation model to use instead: a callable (or a class to "
        "instantiate) in an importable module or a .py file, called with an [H, W, 3] uint8 "
        "image and returning masks or a label map",
    )
    seg.add_argument(
        "--model-threshold",
        type=float,
        default=0.5,
        help="mask probability from which a pixel is in a model's mask (--model, model:...)",
    )
    seg.add_argument("--segments", type=int, default=24, help="superpixels: regions made per image")
    seg.add_argument(
        "--max-per-image", type=int, default=10, help="superpixels: regions kept per image"
    )
    seg.add_argument(
        "--min-solidity",
        type=float,
        default=0.6,
        help="superpixels: least area / convex-hull area of a region (compactness)",
    )
    seg.add_argument(
        "--max-source-side",
        type=int,
        default=768,
        help="images are downscaled to this longest side before segmentation",
    )
    seg.add_argument(
        "--feather",
        type=float,
        default=0.015,
        help="soft-edge width as a fraction of a cut-out's longest side (0: hard edges)",
    )
    cur = build.add_argument_group("curation")
    cur.add_argument("--min-width", type=int, default=16, help="narrower cut-outs are dropped")
    cur.add_argument("--min-height", type=int, default=16, help="shorter cut-outs are dropped")
    cur.add_argument(
        "--max-size", type=int, default=None, help="cut-outs with a longer side are dropped"
    )
    cur.add_argument(
        "--max-aspect",
        type=float,
        default=5.0,
        help="cut-outs more elongated than this (long / short side) are dropped; 0: no limit",
    )
    cur.add_argument(
        "--min-coverage",
        type=float,
        default=0.15,
        help="cut-outs whose visible pixels fill less of their bounding box are dropped",
    )
    cur.add_argument(
        "--dedupe",
        type=float,
        default=0.06,
        help="near-duplicate distance (RMS of 6x6 thumbnails, 0-1); 0 keeps duplicates",
    )
    cur.add_argument(
        "--normalise-brightness",
        action="store_true",
        help="scale each cut-out so its brightest colour channel is 255",
    )
    cur.add_argument("--max-patches", type=int, default=None, help="keep at most this many")
    cur.add_argument(
        "--selection",
        default="random",
        choices=("random", "diverse"),
        help="which patches --max-patches keeps: a uniform sample, or the most varied",
    )
    out = build.add_argument_group("output")
    out.add_argument("--side", type=int, default=256, help="square side of stored patches")
    out.add_argument("--seed", type=int, default=0, help="random seed of the selection")
    out.add_argument(
        "--preview",
        default=None,
        help="contact sheet PNG to write (default: OUT with .png instead of .npz)",
    )
    out.add_argument("--no-preview", action="store_true", help="write no contact sheet")
    out.add_argument("--skipped-log", default=None, help="write every skipped image here")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    tfds = build.add_argument_group("TFDS sources")
    tfds.add_argument("--data-dir", default=None, help="where TFDS datasets are prepared")
    tfds.add_argument(
        "--image-key", default=None, help="the TFDS feature holding the image (default: image)"
    )
    return patches


def load_model(spec: str):
    """``MODULE:NAME`` or ``path/to/file.py:NAME`` -> the model object (classes instantiated)."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise PatchesCommandError(f"--model {spec!r} is not MODULE:NAME or FILE.py:NAME.")
    try:
        if module_name.endswith(".py"):
            spec_ = importlib.util.spec_from_file_location("clipclop_user_model", module_name)
            if spec_ is None or spec_.loader is None:
                raise ImportError(f"cannot import {module_name}")
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        raise PatchesCommandError(f"--model {spec!r}: {error}.") from None
    model = getattr(module, attribute, None)
    if model is None:
        raise PatchesCommandError(f"--model {spec!r}: {module_name} has no {attribute!r}.")
    if inspect.isclass(model):
        model = model()
    if not callable(model):
        raise PatchesCommandError(f"--model {spec!r} is not callable.")
    return model


def build_options(args: argparse.Namespace) -> dict:
    """The ``build_library`` keyword arguments that ``args`` set."""
    segmentation = args.segmentation
    hub_model = segmentation.startswith(MODEL_PREFIX)
    if segmentation not in SEGMENTATIONS and not hub_model:
        raise PatchesCommandError(
            f"--segmentation {segmentation!r} is unknown: use one of {', '.join(SEGMENTATIONS)} "
            "or model:NAME_OR_PATH."
        )
    model_only = {
        "--classes": args.classes,
        "--min-score": args.min_score,
        "--batch-size": args.batch_size,
    }
    given = [option for option, value in model_only.items() if value is not None]
    if given and not hub_model:
        raise PatchesCommandError(
            f"{given[0]} needs a segmentation model: add --segmentation model:NAME_OR_PATH."
        )
    if args.model is not None:
        if hub_model:
            raise PatchesCommandError(
                "--model and --segmentation model:... both name a model: give one of them."
            )
        segmentation = load_model(args.model)
        seg_options = {"threshold": args.model_threshold}
    elif hub_model:
        seg_options = {
            "classes": args.classes.split(",") if args.classes is not None else None,
            "min_score": 0.5 if args.min_score is None else args.min_score,
            "threshold": args.model_threshold,
            "batch_size": 8 if args.batch_size is None else args.batch_size,
        }
    else:
        seg_options = {}
        if segmentation in ("auto", "superpixels", "graph"):
            seg_options = dict(
                num_segments=args.segments,
                max_regions=args.max_per_image,
                min_solidity=args.min_solidity,
            )
    preview = None
    if not args.no_preview:
        preview = args.preview or os.path.splitext(args.out)[0] + ".png"
    return dict(
        segmentation=segmentation,
        segmentation_options=seg_options,
        max_source_side=args.max_source_side,
        feather=args.feather,
        min_width=args.min_width,
        min_height=args.min_height,
        max_size=args.max_size,
        max_aspect=args.max_aspect or None,
        min_coverage=args.min_coverage,
        dedupe_threshold=args.dedupe,
        normalise_brightness=args.normalise_brightness,
        max_patches=args.max_patches,
        selection=args.selection,
        side=args.side,
        seed=args.seed,
        preview=preview,
        data_dir=args.data_dir,
        image_key=args.image_key,
    )


def run_patches(args: argparse.Namespace) -> int:
    """Runs ``clipclop patches ...``; returns the exit code."""
    if getattr(args, "patches_command", None) != "build":
        args.patches_help()
        return 2
    from tqdm.auto import tqdm

    from clipclop_jax import io
    from clipclop_jax.library.maker import build_library

    if not args.out.lower().endswith(".npz"):
        raise PatchesCommandError(f"--out {args.out!r} must end in .npz.")
    options = build_options(args)
    with tqdm(unit="image", disable=args.quiet, dynamic_ncols=True) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = build_library(args.sources, args.out, progress_fn=progress, **options)
    lines = [f"{name}: {reason}" for name, reason in report.skipped]
    for line in lines[:MAX_LISTED]:
        print(f"skipped {line}", file=sys.stderr)
    if len(lines) > MAX_LISTED:
        more = "see --skipped-log" if args.skipped_log is None else args.skipped_log
        print(f"... and {len(lines) - MAX_LISTED} more skipped ({more})", file=sys.stderr)
    if args.skipped_log is not None:
        io.atomic_write_bytes(args.skipped_log, "".join(f"{x}\n" for x in lines).encode())
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(report.rejected.items()))
    print(
        f"wrote {report.count} patches to {report.out} from {report.images} images "
        f"({report.cutouts} cut-outs; dropped: {dropped or 'none'}; "
        f"{len(report.skipped)} images skipped)"
        + (f"; preview {report.preview}" if report.preview else "")
    )
    return 0
