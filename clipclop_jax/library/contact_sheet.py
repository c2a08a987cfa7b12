"""Contact sheets: a PNG grid of a library's patches over a checkerboard, for a quick look.

The checkerboard shows through transparent pixels, so halos and ragged edges are visible.
Squares are read one at a time, so a sheet of a large library needs little memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
from PIL import Image

from clipclop_jax import io
from clipclop_jax.library.npz_reader import NpyRows

# Most patches one sheet shows; a larger library is sampled evenly across its order.
MAX_SHOWN = 256
CHECKER = (200, 232)  # grey levels of the checkerboard's squares


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


def contact_sheet(
    squares: Iterable[np.ndarray], count: int, *, cell: int = 64, columns: int | None = None
) -> np.ndarray:
    """Tiles ``count`` patch squares into one RGB image.

    Args:
      squares: [S, S, 4] uint8 straight RGBA each (library squares), ``count`` of them.
      count: how many ``squares`` yields.
      cell: side of each tile in pixels.
      columns: tiles per row (default: a near-square grid).

    Returns:
      [rows * cell, columns * cell, 3] uint8.
    """
    height, width, columns = sheet_shape(count, cell, columns)
    yy, xx = np.mgrid[:height, :width]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, *CHECKER).astype(np.float32)
    sheet = np.repeat(checker[..., None], 3, -1)
    for index, square in enumerate(squares):
        if index >= count:
            break
        tile = Image.fromarray(np.asarray(square, np.uint8), "RGBA").convert("RGBa")
        tile = np.asarray(tile.resize((cell, cell), Image.Resampling.BOX), np.float32) / 255.0
        top, left = (index // columns) * cell, (index % columns) * cell
        region = sheet[top : top + cell, left : left + cell]
        # Premultiplied "over": colour + (1 - alpha) * what is underneath.
        region[...] = tile[..., :3] * 255.0 + (1.0 - tile[..., 3:]) * region
    return np.round(sheet).astype(np.uint8)


def save_contact_sheet(
    path: str | os.PathLike,
    squares: Iterable[np.ndarray],
    count: int,
    *,
    cell: int = 64,
    columns: int | None = None,
    text: dict[str, str] | None = None,
) -> None:
    """``contact_sheet`` written atomically as a PNG."""
    io.save_png(path, contact_sheet(squares, count, cell=cell, columns=columns), text=text)


def library_contact_sheet(
    library_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cell: int = 64,
    max_shown: int = MAX_SHOWN,
) -> int:
    """Writes the contact sheet of a library ``.npz``; returns how many patches it shows."""
    with NpyRows(library_path, "rgba") as rows:
        total = rows.shape[0]
        shown = shown_indices(total, max_shown)
        wanted = set(shown.tolist())
        squares = (square for index, square in enumerate(rows) if index in wanted)
        text = {"patches": f"{len(shown)} of {total}"}
        save_contact_sheet(out, squares, len(shown), cell=cell, text=text)
    return len(shown)
