"""Patch maker: photos, folders and datasets -> a curated patch library ``.npz``.

``build_library`` streams the source images one at a time: each is segmented into cut-outs
(``segment``), the cut-outs are filtered by size, aspect and coverage, optionally brightness-
normalised, placed in library squares, de-duplicated and selected (all, random or diverse),
and the squares kept go to a scratch file on disk. Only small per-patch records stay in
memory, so 10,000 source images build in bounded memory. The ``.npz`` is then written as a
stream into a temporary file beside ``out`` and renamed over it: a failure at any point leaves
nothing new at ``out``. ``load_library_subset`` reads such a file back one square at a time.

The format is ``library.LIBRARY_FORMAT``, what ``library.load_library`` reads; docs/libraries.md
describes it and every option here.
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
from clipclop_jax.library.contact_sheet import save_contact_sheet, shown_indices
from clipclop_jax.library.cutouts import ALPHA_EMPTY
from clipclop_jax.library.patch_library import LIBRARY_FORMAT, LibraryError, square_patch
from clipclop_jax.library.segment import MaskModel, cutout_from_mask, make_segmenter
from clipclop_jax.library.sources import load_library_subset, open_sources

__all__ = ["BuildError", "BuildReport", "SlotStore", "build_library", "load_library_subset"]

SELECTIONS = ("random", "diverse")
# Thumbnail side for near-duplicate and diversity distances: 6 x 6 x RGBA = 144 numbers.
THUMBNAIL = 6


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
      sources: see ``patch_sources.open_sources``: folders, image files, ``.npy``/``.npz``
        patch files, ``"tfds:NAME[:SPLIT]"``, arrays, or a list or iterator of these.
      out: the library file to write (``.npz``); replaced only once complete.
      segmentation: "auto", "alpha", "background", "superpixels", "graph", "whole", or a
        learned model (``segment.MaskModel``); see ``segment.make_segmenter``.
      segmentation_options: keyword options for the segmenter (e.g. ``num_segments``,
        ``min_solidity``, ``max_regions``; ``threshold`` for a model).
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
    segmenter = make_segmenter(segmentation, **dict(segmentation_options or {}))
    stream = open_sources(sources, data_dir=data_dir, image_key=image_key)
    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    curate = _Curator(
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
            for image in stream:
                images += 1
                if image.rgba is None:
                    skipped.append((image.name, image.error or "unreadable"))
                else:
                    found, reason = _cut(image, segmenter, max_source_side, feather)
                    cutouts += len(found)
                    if not found:
                        skipped.append((image.name, reason))
                    for name, cutout, scale in found:
                        cutout, why = curate(cutout, scale)
                        if why:
                            rejected[why] += 1
                            continue
                        square, size = square_patch(cutout, side)
                        why = store.offer(square, size, name)
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
                save_contact_sheet(preview, squares, len(shown), text=text)
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


def _cut(image, segmenter, max_source_side: int, feather: float):
    """One source image -> ([(name, cut-out, source pixels per cut-out pixel)], reason)."""
    rgba, scale = _downscaled(image.rgba, max_source_side)
    try:
        masks = segmenter(rgba, image.has_alpha)
    except ValueError as error:
        return [], f"segmentation failed ({error})"
    found = []
    for index, mask in enumerate(masks):
        mask = np.asarray(mask)
        visible = mask > ALPHA_EMPTY
        if not visible.any():
            continue
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        longest = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        radius = max(1.0, feather * longest) if feather > 0 else 0.0
        cutout = cutout_from_mask(rgba, mask, feather_pixels=radius)
        if cutout is not None:
            name = image.name if len(masks) == 1 else f"{image.name}#{index}"
            found.append((name, cutout, scale))
    return found, "nothing segmented" if not masks else "all masks empty"


def _downscaled(rgba: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    height, width = rgba.shape[:2]
    if max(height, width) <= max_side:
        return rgba, 1.0
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = Image.fromarray(rgba, "RGBA").convert("RGBa").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGBA")), 1.0 / factor


@dataclasses.dataclass(frozen=True)
class _Curator:
    min_width: int
    min_height: int
    max_size: int | None
    max_aspect: float | None
    min_coverage: float
    normalise_brightness: bool

    def __call__(self, cutout: np.ndarray, scale: float) -> tuple[np.ndarray, str | None]:
        """(cut-out, None) if it is kept (possibly brightness-normalised), else the reason."""
        height, width = cutout.shape[0] * scale, cutout.shape[1] * scale
        if height < self.min_height or width < self.min_width:
            return cutout, "too small"
        if self.max_size is not None and max(height, width) > self.max_size:
            return cutout, "too large"
        if self.max_aspect is not None and max(height, width) > self.max_aspect * min(
            height, width
        ):
            return cutout, "too elongated"
        if cutout[..., 3].mean() / 255.0 < self.min_coverage:
            return cutout, "too sparse"
        if self.normalise_brightness:
            cutout = normalised_brightness(cutout)
        return cutout, None


def normalised_brightness(cutout: np.ndarray) -> np.ndarray:
    """Scales colours so the brightest visible channel value becomes 255."""
    visible = cutout[..., 3] > ALPHA_EMPTY
    top = int(cutout[..., :3][visible].max(initial=0))
    if top in (0, 255):
        return cutout
    out = cutout.copy()
    out[..., :3] = np.round(cutout[..., :3] * (255.0 / top)).clip(0, 255).astype(np.uint8)
    return out


def _write_library_npz(out: str, store: SlotStore) -> None:
    """Streams the store's squares into ``out`` (same layout as ``np.savez_compressed``)."""
    order = store.order()
    with (
        io.atomic_path(out) as temporary,
        open(temporary, "wb") as raw,
        zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        for key, value in (
            ("format", np.asarray(LIBRARY_FORMAT)),
            ("sizes", np.asarray([store.size(i) for i in order], np.int32).reshape(-1, 2)),
            ("names", np.asarray([store.name(i) for i in order])),
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


def thumbnail(square: np.ndarray) -> np.ndarray:
    """[THUMBNAIL**2 * 4] float32 in [0, 1]: the square's premultiplied RGBA, box-averaged."""
    image = Image.fromarray(np.asarray(square, np.uint8), "RGBA").convert("RGBa")
    small = image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(small, np.float32).reshape(-1) / 255.0


def farthest_points(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy farthest-point selection: ``count`` row indices of ``points`` [N, D], spread out.

    Starts from a random row, then repeatedly takes the row farthest from all taken ones.
    """
    count = min(count, len(points))
    chosen = np.empty(count, np.int64)
    chosen[0] = rng.integers(len(points))
    distance = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    distance[chosen[0]] = -1.0
    for k in range(1, count):
        chosen[k] = np.argmax(distance)
        distance = np.minimum(distance, np.sum((points - points[chosen[k]]) ** 2, axis=1))
        distance[chosen[: k + 1]] = -1.0
    return chosen


class SlotStore:
    """The squares kept so far, in a scratch file of fixed-size slots, with their records.

    ``offer`` applies near-duplicate removal and selection as squares stream in:
    * no ``capacity``: every square is kept;
    * "random": reservoir sampling (Vitter's algorithm R) into ``capacity`` slots, so the
      kept set is a uniform sample of all candidates;
    * "diverse": up to ``2 * capacity`` are kept; when full, farthest-point selection on
      the thumbnails keeps the ``capacity`` most spread out and frees the rest.
    Memory holds one thumbnail (576 bytes) and one record per slot; squares stay on disk.
    """

    def __init__(self, path, side, *, capacity, selection, dedupe_threshold, rng):
        self.side = side
        self._file = open(path, "w+b")  # noqa: SIM115 (closed by close())
        self._bytes = side * side * 4
        self._capacity = capacity
        self._limit = capacity if selection == "random" or capacity is None else 2 * capacity
        self._selection = selection
        self._threshold = dedupe_threshold
        self._rng = rng
        self._thumbs = np.zeros((0, THUMBNAIL * THUMBNAIL * 4), np.float32)
        self._records: list[tuple[int, str, tuple[int, int]] | None] = []
        self._free: list[int] = []
        self._accepted = 0
        self._dropped = 0

    @property
    def count(self) -> int:
        return len(self._records) - len(self._free)

    def offer(self, square: np.ndarray, size, name: str) -> str | None:
        """Keeps ``square`` (maybe evicting another), or returns why it is not kept."""
        thumb = thumbnail(square)
        if self._threshold > 0 and self.count:
            used = len(self._records)
            rms = np.sqrt(np.mean((self._thumbs[:used] - thumb) ** 2, axis=1))
            rms[self._free] = np.inf
            if rms.min() < self._threshold:
                return "duplicate"
        self._accepted += 1
        if self._limit is not None and self.count >= self._limit:
            if self._selection == "random":
                slot = int(self._rng.integers(self._accepted))
                if slot >= self._capacity:
                    return "not selected"
                self._dropped += 1
            else:
                self._compact(self._capacity)
                slot = self._free.pop()
        elif self._free:
            slot = self._free.pop()
        else:
            slot = len(self._records)
            self._records.append(None)
            if slot >= len(self._thumbs):
                grown = np.zeros(
                    (max(64, 2 * len(self._thumbs)), self._thumbs.shape[1]), np.float32
                )
                grown[: len(self._thumbs)] = self._thumbs
                self._thumbs = grown
        self._thumbs[slot] = thumb
        self._records[slot] = (self._accepted, name, (int(size[0]), int(size[1])))
        self._file.seek(slot * self._bytes)
        self._file.write(np.ascontiguousarray(square, np.uint8).tobytes())
        return None

    def _compact(self, keep: int) -> None:
        slots = np.asarray([s for s, r in enumerate(self._records) if r is not None])
        chosen = set(slots[farthest_points(self._thumbs[slots], keep, self._rng)].tolist())
        for slot in slots.tolist():
            if slot not in chosen:
                self._records[slot] = None
                self._free.append(slot)
                self._dropped += 1

    def finish(self) -> dict[str, int]:
        """Applies the final selection; returns reason -> squares dropped by selection."""
        if self._capacity is not None and self.count > self._capacity:
            self._compact(self._capacity)
        return {"not selected": self._dropped} if self._dropped else {}

    def order(self) -> list[int]:
        """The kept slots, in the order their squares arrived."""
        kept = [(r[0], s) for s, r in enumerate(self._records) if r is not None]
        return [slot for _, slot in sorted(kept)]

    def square(self, slot: int) -> np.ndarray:
        self._file.seek(slot * self._bytes)
        data = self._file.read(self._bytes)
        return np.frombuffer(data, np.uint8).reshape(self.side, self.side, 4)

    def name(self, slot: int) -> str:
        return self._records[slot][1]

    def size(self, slot: int) -> tuple[int, int]:
        return self._records[slot][2]

    def close(self) -> None:
        self._file.close()
