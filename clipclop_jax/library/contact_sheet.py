"""Contact sheets: a PNG grid of a library's patches over a checkerboard, for a quick look.

The checkerboard shows through transparent pixels, so halos and ragged edges are visible.
Squares are read one at a time, so a sheet of a large library needs little memory. Patches
a segmentation model labelled get a caption under their tile (``patch_caption``: class,
score and source file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipclop_jax import io
from clipclop_jax.library.npz_reader import NpyRows, read_library_records

# Most patches one sheet shows; a larger library is sampled evenly across its order.
MAX_SHOWN = 256
CHECKER = (200, 232)  # grey levels of the checkerboard's squares
CAPTION_LINES, LINE_HEIGHT = 2, 11  # a caption band under each tile, when there are captions


def shown_indices(num_patches: int, max_shown: int = MAX_SHOWN) -> np.ndarray:
    """Which patches a sheet shows: all, or ``max_shown`` evenly spaced ones."""
    if num_patches <= max_shown:
        return np.arange(num_patches)
    return np.unique(np.round(np.linspace(0, num_patches - 1, max_shown)).astype(np.int64))


def sheet_shape(count: int, cell: int, columns: int | None = None) -> tuple[int, int, int]:
    """(height, width, columns) of a sheet of ``count`` cells of ``cell`` pixels."""
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    columns = min(columns, max(count, 1))
    rows = max(1, math.ceil(count / columns))
    return rows * cell, columns * cell, columns


def patch_caption(source: str, label: str, score: float) -> str:
    """Two lines under a tile: "label score" and the source file's name."""
    first = label if np.isnan(score) else f"{label} {score:.2f}"
    return f"{first}\n{os.path.basename(source)}"


def captions_of(sources, labels, scores) -> list[str] | None:
    """Captions for a sheet's patches, or None when no patch has a label (no caption band)."""
    if not any(labels):
        return None
    return [patch_caption(*r) for r in zip(sources, labels, scores, strict=True)]


def contact_sheet(
    squares: Iterable[np.ndarray],
    count: int,
    *,
    cell: int = 64,
    columns: int | None = None,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """Tiles ``count`` patch squares into one RGB image.

    Args:
      squares: [S, S, 4] uint8 straight RGBA each (library squares), ``count`` of them.
      count: how many ``squares`` yields.
      cell: side of each tile in pixels.
      columns: tiles per row (default: a near-square grid).
      captions: ``count`` texts (up to ``CAPTION_LINES`` lines each, cut to the tile's
        width) written in a white band under each tile; None: no band.

    Returns:
      [rows * (cell + band), columns * cell, 3] uint8; the band is ``CAPTION_LINES *
      LINE_HEIGHT + 2`` pixels with captions, else 0.
    """
    band = CAPTION_LINES * LINE_HEIGHT + 2 if captions is not None else 0
    rows_height, width, columns = sheet_shape(count, cell, columns)
    height = rows_height // cell * (cell + band)
    yy, xx = np.mgrid[:height, :width]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, *CHECKER).astype(np.float32)
    sheet = np.repeat(checker[..., None], 3, -1)
    for index, square in enumerate(squares):
        if index >= count:
            break
        tile = Image.fromarray(np.asarray(square, np.uint8), "RGBA").convert("RGBa")
        tile = np.asarray(tile.resize((cell, cell), Image.Resampling.BOX), np.float32) / 255.0
        top, left = (index // columns) * (cell + band), (index % columns) * cell
        region = sheet[top : top + cell, left : left + cell]
        # Premultiplied "over": colour + (1 - alpha) * what is underneath.
        region[...] = tile[..., :3] * 255.0 + (1.0 - tile[..., 3:]) * region
        if band:
            sheet[top + cell : top + cell + band, left : left + cell] = _caption(
                captions[index], cell, band
            )
    return np.round(sheet).astype(np.uint8)


def _caption(text: str, width: int, height: int) -> np.ndarray:
    """[height, width, 3] float32: ``text`` in black on white, each line cut to fit."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for number, line in enumerate(text.splitlines()[:CAPTION_LINES]):
        while line and draw.textlength(line, font=font) > width - 2:
            line = line[:-1]
        draw.text((1, 1 + number * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return np.asarray(image, np.float32)


def save_contact_sheet(
    path: str | os.PathLike,
    squares: Iterable[np.ndarray],
    count: int,
    *,
    cell: int = 64,
    columns: int | None = None,
    text: dict[str, str] | None = None,
    captions: Sequence[str] | None = None,
) -> None:
    """``contact_sheet`` written atomically as a PNG."""
    sheet = contact_sheet(squares, count, cell=cell, columns=columns, captions=captions)
    io.save_png(path, sheet, text=text)


def library_contact_sheet(
    library_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cell: int = 64,
    max_shown: int = MAX_SHOWN,
) -> int:
    """Writes the contact sheet of a library ``.npz``; returns how many patches it shows.

    Patches with a label (a segmentation model's) are captioned (``patch_caption``)."""
    records = read_library_records(library_path)
    with NpyRows(library_path, "rgba") as rows:
        total = rows.shape[0]
        shown = shown_indices(total, max_shown)
        wanted = set(shown.tolist())
        squares = (square for index, square in enumerate(rows) if index in wanted)
        text = {"patches": f"{len(shown)} of {total}"}
        captions = captions_of(*(records[k][shown] for k in ("sources", "labels", "scores")))
        save_contact_sheet(out, squares, len(shown), cell=cell, text=text, captions=captions)
    return len(shown)
