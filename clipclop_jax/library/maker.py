"""Patch maker: photos, folders and datasets -> a curated patch library ``.npz``.

``build_library`` streams the source images one at a time: each is segmented into cut-outs
(``segment``; or a Hugging Face model, ``segment_models``, which takes the images a batch at
a time), the cut-outs are filtered by size, aspect and coverage, optionally brightness-
normalised, placed in library squares, de-duplicated and selected (all, random or diverse;
those rules live in ``curation``), and the squares kept go to a scratch file on disk. Only
small per-patch records stay in memory, so 10,000 source images build in bounded memory. The
``.npz`` is then written as a stream into a temporary file beside ``out`` and renamed over it:
a failure at any point leaves nothing new at ``out``. ``load_library_subset`` reads such a
file back one square at a time.

The format is ``file_formats.LIBRARY_FORMAT``, what ``load.load_library`` reads;
docs/libraries.md describes it and every option here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image

from clipclop_jax import io
from clipclop_jax.library.contact_sheet import captions_of, save_contact_sheet, shown_indices
from clipclop_jax.library.curation import SELECTIONS, Curator, SlotStore
from clipclop_jax.library.cutouts import ALPHA_EMPTY
from clipclop_jax.library.file_formats import LIBRARY_FORMAT
from clipclop_jax.library.npz_reader import load_library_subset
from clipclop_jax.library.patch_library import LibraryError, square_patch
from clipclop_jax.library.segment import (
    MODEL_PREFIX,
    MaskModel,
    cutout_from_mask,
    make_segmenter,
)
from clipclop_jax.library.segment_models import load_hub_segmenter
from clipclop_jax.library.segment_outputs import Region
from clipclop_jax.library.sources import open_sources

__all__ = ["BuildError", "BuildReport", "build_library", "load_library_subset"]


class BuildError(LibraryError):
    """A library build cannot run or produced nothing; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What ``build_library`` did.

    Attributes:
      out: the library file written.
      count: patches in it.
      images: source images seen (read or not).
      cutouts: cut-outs the segmenter produced, before curation.
      rejected: reason -> cut-outs curation dropped ("too small", "duplicate", ...).
      skipped: (image name, reason) for each image that gave no patch candidate at all:
        unreadable, odd mode or shape, or nothing segmented.
      preview: the contact sheet PNG, if one was written.
    """

    out: str
    count: int
    images: int
    cutouts: int
    rejected: Mapping[str, int]
    skipped: tuple[tuple[str, str], ...]
    preview: str | None = None


def build_library(
    sources,
    out: str | os.PathLike,
    *,
    segmentation: str | MaskModel = "auto",
    segmentation_options: Mapping | None = None,
    max_source_side: int = 768,
    feather: float = 0.015,
    min_width: int = 16,
    min_height: int = 16,
    max_size: int | None = None,
    max_aspect: float | None = 5.0,
    min_coverage: float = 0.15,
    dedupe_threshold: float = 0.06,
    normalise_brightness: bool = False,
    max_patches: int | None = None,
    selection: str = "random",
    side: int = 256,
    seed: int = 0,
    preview: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    image_key: str | None = None,
    progress_fn: Callable[[int, int | None], None] | None = None,
) -> BuildReport:
    """Builds a patch library ``.npz`` from images.

    Args:
      sources: see ``sources.open_sources``: folders, image files, ``.npy``/``.npz``
        patch files, ``"tfds:NAME[:SPLIT]"``, arrays, or a list or iterator of these.
      out: the library file to write (``.npz``); replaced only once complete.
      segmentation: "auto", "alpha", "background", "superpixels", "graph", "whole" (see
        ``segment.make_segmenter``), "model:NAME_OR_PATH" (a Hugging Face segmentation
        model by hub name or ``save_pretrained`` folder: ``segment_models``), or your own
        model (``segment.MaskModel``).
      segmentation_options: keyword options for the segmenter (e.g. ``num_segments``,
        ``min_solidity``, ``max_regions``; ``threshold`` for a model; ``classes``,
        ``min_score``, ``batch_size``, ``device`` for a hub model: see
        ``segment_models.load_hub_segmenter``).
      max_source_side: images are downscaled to at most this longest side before
        segmentation (bounds time and memory; patches are ``side`` texels anyway).
      feather: soft-edge width as a fraction of each cut-out's longest side (at least one
        pixel; 0 keeps edges as segmented).
      min_width, min_height: smaller cut-outs (source pixels) are dropped: they would be
        blurry (the original's ``patch_width_min``/``patch_height_min``, 16).
      max_size: cut-outs whose longest side exceeds this (source pixels) are dropped.
      max_aspect: cut-outs longer than ``max_aspect`` times their width are dropped.
      min_coverage: cut-outs whose visible pixels fill less of their box are dropped.
      dedupe_threshold: a cut-out whose 6x6 premultiplied RGBA thumbnail is within this RMS
        distance (0-1) of a kept one is a near-duplicate and dropped (0: keep all).
      normalise_brightness: scale each cut-out's colours so its brightest visible channel is
        255 (the original's ``normalize_patch_brightness``).
      max_patches: keep at most this many (None: all).
      selection: with ``max_patches``: "random" (uniform over all candidates, reservoir
        sampling) or "diverse" (greedy farthest-point selection on the thumbnails).
      side: square side of the stored patches (the high-resolution copy's maximum).
      seed: seeds segmentation-independent randomness (selection).
      preview: also write a contact sheet PNG here.
      data_dir, image_key: for TFDS sources (``open_sources``).
      progress_fn: called as ``progress_fn(images_done, total_or_None)`` after each image.

    Returns:
      A ``BuildReport``.

    Raises:
      BuildError, SourceError (both ``ValueError``): bad options (such as ``out`` or
        ``preview`` a folder: checked before any work), unreadable sources, or no patch
        survived; nothing is left at ``out`` (an existing file there is kept).
    """
    _check_options(side, max_patches, selection, max_source_side, feather, dedupe_threshold)
    # Checked now: the rename over a folder would fail only after the whole build.
    _check_destination(out, "out")
    if preview is not None:
        _check_destination(preview, "preview")
    segmenter = _make_segmenter(segmentation, dict(segmentation_options or {}))
    stream = open_sources(sources, data_dir=data_dir, image_key=image_key)
    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    curate = Curator(
        min_width, min_height, max_size, max_aspect, min_coverage, normalise_brightness
    )
    rejected: collections.Counter = collections.Counter()
    skipped: list[tuple[str, str]] = []
    images = cutouts = 0
    with tempfile.TemporaryDirectory(prefix=".clipclop-build-", dir=folder) as scratch:
        store = SlotStore(
            os.path.join(scratch, "squares.bin"),
            side,
            capacity=max_patches,
            selection=selection,
            dedupe_threshold=dedupe_threshold,
            rng=rng,
        )
        with contextlib.closing(store):
            empty = getattr(segmenter, "empty_reason", "nothing segmented")
            for image, rgba, outcome, scale in _segmented(stream, segmenter, max_source_side):
                images += 1
                if isinstance(outcome, str):
                    skipped.append((image.name, outcome))
                else:
                    found, reason = _cut(image, rgba, outcome, feather, empty)
                    cutouts += len(found)
                    if not found:
                        skipped.append((image.name, reason))
                    for name, cutout, label, score in found:
                        cutout, why = curate(cutout, scale)
                        if why:
                            rejected[why] += 1
                            continue
                        square, size = square_patch(cutout, side)
                        why = store.offer(
                            square, size, name, source=image.name, label=label, score=score
                        )
                        if why:
                            rejected[why] += 1
                if progress_fn is not None:
                    progress_fn(images, stream.total)
            rejected.update(store.finish())
            if store.count == 0:
                raise BuildError(_nothing_message(images, cutouts, rejected, skipped))
            _write_library_npz(out, store)
            if preview is not None:
                shown, order = shown_indices(store.count), store.order()
                squares = (store.square(order[i]) for i in shown)
                text = {
                    "library": os.path.basename(out),
                    "patches": f"{len(shown)} of {store.count}",
                }
                records = [store.record(order[i]) for i in shown]
                captions = captions_of(*zip(*records, strict=True))
                save_contact_sheet(preview, squares, len(shown), text=text, captions=captions)
            count = store.count
    return BuildReport(
        out,
        count,
        images,
        cutouts,
        dict(rejected),
        tuple(skipped),
        os.fspath(preview) if preview is not None else None,
    )


def _check_destination(path, what: str) -> None:
    name = os.fspath(path)
    if not name.strip():
        raise BuildError(f"{what} is empty: give the file to write.")
    if os.path.isdir(name):
        raise BuildError(f"{what} {name!r} is a folder: give a file path to write, not a folder.")
    parent = os.path.dirname(os.path.abspath(name))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise BuildError(f"{what} {name!r} cannot be written: {parent!r} is a file, not a folder.")


def _check_options(side, max_patches, selection, max_source_side, feather, dedupe) -> None:
    if not 8 <= side <= 4096:
        raise BuildError(f"side {side} is out of range: use 8 to 4096 texels.")
    if max_patches is not None and max_patches < 1:
        raise BuildError(f"max_patches {max_patches} must be at least 1 (or None for all).")
    if selection not in SELECTIONS:
        raise BuildError(f"selection {selection!r} is unknown: use 'random' or 'diverse'.")
    if max_source_side < 16:
        raise BuildError(f"max_source_side {max_source_side} is too small: use at least 16.")
    if not 0 <= feather <= 0.5:
        raise BuildError(f"feather {feather} is out of range: use 0 to 0.5 of a cut-out's side.")
    if not 0 <= dedupe <= 1:
        raise BuildError(f"dedupe_threshold {dedupe} is out of range: use 0 (off) to 1.")


def _nothing_message(images, cutouts, rejected, skipped) -> str:
    reasons = ", ".join(f"{n} {why}" for why, n in rejected.most_common(3)) or "none rejected"
    first = f"; first skipped: {skipped[0][0]} ({skipped[0][1]})" if skipped else ""
    return (
        f"no patch survived: {images} images read, {len(skipped)} skipped{first}, {cutouts} "
        f"cut-outs found ({reasons}): check the sources, or loosen --min-width/--min-height/"
        "--max-aspect/--min-coverage or change --segmentation."
    )


def _make_segmenter(segmentation, options: dict):
    if hasattr(segmentation, "segment_batch"):  # a loaded hub model (``segment_models``)
        return segmentation
    if isinstance(segmentation, str) and segmentation.startswith(MODEL_PREFIX):
        return load_hub_segmenter(segmentation[len(MODEL_PREFIX) :], **options)
    if isinstance(segmentation, str) and {"classes", "min_score"} & options.keys():
        raise BuildError(
            f"classes and min_score need a segmentation model, not {segmentation!r}: use "
            "segmentation='model:NAME_OR_PATH' (--segmentation model:NAME_OR_PATH)."
        )
    return make_segmenter(segmentation, **options)


def _segmented(stream, segmenter, max_source_side: int):
    """(image, downscaled rgba, its regions or masks or why it has none, source pixels per
    pixel) for each source image.

    Images go to a segmenter with ``segment_batch`` (a hub model) ``batch_size`` at a
    time, in order; memory holds one batch of downscaled images and their masks.
    """
    batch_size = getattr(segmenter, "batch_size", 1)
    waiting: list = []  # (image, downscaled rgba or None, scale), in source order

    def flush():
        ready = [i for i, (_, rgba, _) in enumerate(waiting) if rgba is not None]
        if ready and hasattr(segmenter, "segment_batch"):
            results = segmenter.segment_batch([waiting[i][1] for i in ready])
        else:  # one image at a time (``segment.Segmenter``); none when nothing is ready
            results = []
            for i in ready:
                image, rgba, _ = waiting[i]
                try:
                    results.append(segmenter(rgba, image.has_alpha))
                except ValueError as error:
                    results.append(error)
        outcome = dict(zip(ready, results, strict=True))
        for i, (image, rgba, scale) in enumerate(waiting):
            if rgba is None:
                yield image, None, image.error or "unreadable", scale
            elif isinstance(outcome[i], Exception):
                yield image, rgba, f"segmentation failed ({outcome[i]})", scale
            else:
                yield image, rgba, outcome[i], scale
        waiting.clear()

    for image in stream:
        if image.rgba is None:
            waiting.append((image, None, 1.0))
        else:
            rgba, scale = _downscaled(image.rgba, max_source_side)
            # Only the downscaled copy waits for the batch: a full-size photo is let go now.
            waiting.append((image._replace(rgba=rgba), rgba, scale))
            if sum(rgba is not None for _, rgba, _ in waiting) >= batch_size:
                yield from flush()
    yield from flush()


def _cut(image, rgba, masks, feather: float, empty: str):
    """One image's masks (arrays or ``Region``s) on its downscaled ``rgba`` ->
    ([(name, cut-out, label, score)], why there is none)."""
    found = []
    for index, region in enumerate(masks):
        if isinstance(region, Region):
            mask = np.asarray(region.mask)
            if image.has_alpha:  # a model sees colour only; what the file hides stays hidden
                mask = np.minimum(mask, rgba[..., 3])
        else:  # a plain mask keeps what the source said of the image
            region = Region(region, image.label, image.score)
            mask = np.asarray(region.mask)
        visible = mask > ALPHA_EMPTY
        if not visible.any():
            continue
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        longest = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        radius = max(1.0, feather * longest) if feather > 0 else 0.0
        cutout = cutout_from_mask(rgba, mask, feather_pixels=radius)
        if cutout is not None:
            name = image.name if len(masks) == 1 else f"{image.name}#{index}"
            found.append((name, cutout, region.label, region.score))
    return found, empty if not masks else "all masks empty"


def _downscaled(rgba: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    height, width = rgba.shape[:2]
    if max(height, width) <= max_side:
        return rgba, 1.0
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = Image.fromarray(rgba, "RGBA").convert("RGBa").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGBA")), 1.0 / factor


def _write_library_npz(out: str, store: SlotStore) -> None:
    """Streams the store's squares into ``out`` (same layout as ``np.savez_compressed``)."""
    order = store.order()
    with (
        io.atomic_path(out) as temporary,
        open(temporary, "wb") as raw,
        zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        sources, labels, scores = zip(*(store.record(i) for i in order), strict=True)
        for key, value in (
            ("format", np.asarray(LIBRARY_FORMAT)),
            ("sizes", np.asarray([store.size(i) for i in order], np.int32).reshape(-1, 2)),
            ("names", np.asarray([store.name(i) for i in order])),
            ("sources", np.asarray(sources)),
            ("labels", np.asarray(labels)),
            ("scores", np.asarray(scores, np.float32)),
        ):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, value, allow_pickle=False)
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": (len(order), store.side, store.side, 4),
        }
        with archive.open("rgba.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            for slot in order:
                handle.write(store.square(slot).tobytes())
